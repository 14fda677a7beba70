"""cimcoder.terminologies"""
