"""Monitoring: Prometheus config and rules, the Grafana dashboard, jizhi's own exporter."""
