"""The package version, in a module of its own so any layer can read it without importing the
package's public API (``adps/__init__.py`` sits above every layer)."""

__version__ = "0.1.0"
