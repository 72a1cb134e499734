"""Makes setuptools package `recall.py`, an `evaluate` script loaded by `hf_feedback.metrics`."""
