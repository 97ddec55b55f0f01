"""See component.py and README.md."""
