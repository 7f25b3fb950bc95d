"""The package version (one place; ``ptq161.__version__`` re-exports it)."""

__version__ = "0.1.0"
