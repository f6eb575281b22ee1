"""Features computed from the store, point in time."""
