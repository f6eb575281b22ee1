"""Kronos research workbench."""
