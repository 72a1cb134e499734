"""Makes setuptools package `precision.py`, an `evaluate` script loaded by `hf_feedback.metrics`."""
