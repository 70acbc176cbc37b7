"""jizhi: inference-aware auto-tuning and serving optimizer. The console script is `jizhi`."""

__version__ = "0.1.0"
__all__ = ["__version__"]
