"""Makes setuptools package `accuracy.py`, an `evaluate` script loaded by `hf_feedback.metrics`."""
