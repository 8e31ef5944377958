"""Metric functions for ``test.py``: grounding, phrase matching and quality, uncertainty."""
