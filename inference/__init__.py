"""cimcoder.inference"""
