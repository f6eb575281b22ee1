"""Example plug-ins for Kronos: one module per kind of part (see docs/plugins.md)."""

__version__ = "0.1.0"
