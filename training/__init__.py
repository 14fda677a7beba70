"""cimcoder.training"""
