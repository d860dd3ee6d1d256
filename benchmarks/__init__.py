"""Performance measurements (not tests). Run with `make bench`."""
