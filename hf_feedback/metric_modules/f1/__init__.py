"""Makes setuptools package `f1.py`, an `evaluate` script loaded by `hf_feedback.metrics`."""
