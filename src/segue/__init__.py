"""segue: sequential recommendation from logs to serving."""
__version__ = "0.1.0"
