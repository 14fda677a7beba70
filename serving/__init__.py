"""cimcoder.serving"""
