"""Data sources: each turns outside data into frames in the store's contracts."""
