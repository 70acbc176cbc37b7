"""The real serving path: models, parameter stores and the Ray Serve application."""
