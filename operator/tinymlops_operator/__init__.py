"""The TinyMLOps kopf operator.

`main.py` only registers handlers; `handlers/` do the IO of one resource kind
each; `logic/` holds the pure decisions the unit tests call directly.
"""
