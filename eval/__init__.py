"""cimcoder.eval"""
