"""ModelTrack: an LLM cost-tracking proxy. See README.md."""

__version__ = "0.1.0"
