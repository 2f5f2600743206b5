"""Input regions: boxes, VNN-LIB specs."""
