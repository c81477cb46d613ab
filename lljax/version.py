"""The package version (its own module, so that lljax modules can read it without importing lljax)."""

__version__ = "0.1.0"
