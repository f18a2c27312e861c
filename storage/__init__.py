"""Archive on disk and its SQL index."""
