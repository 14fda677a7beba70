"""Coded stays: one schema, loaders, shipped data sets, splits."""
