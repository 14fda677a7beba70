"""cimcoder: automated CIM-10 FR / CIM-11 diagnosis coding of French hospital reports."""

__version__ = "0.1.0"
