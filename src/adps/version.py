"""The package version, in a module of its own so any layer can read it without importing the
package's public API (``adps/__init__.py`` sits above every layer)."""

# 0.2: the typed checkpoint (adps-checkpoint-v2) with its training fingerprint
__version__ = "0.2.0"
