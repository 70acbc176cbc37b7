"""Bayesian optimisation of serving configs on the simulator (ask/tell tuner, baselines, reports)."""
