"""Model implementations registered in `cimcoder.training.registry`."""
