"""Forecasters and the compatibility shims they need."""
