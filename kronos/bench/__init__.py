"""Benchmarks behind `kronos bench ...`: each returns a JSON-ready dict."""
