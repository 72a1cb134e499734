"""`evaluate` metric scripts shipped with hf_feedback, so metrics load without the Hugging Face Hub.

Each subfolder holds one script named like the folder, which is what `evaluate.load(<folder>)`
expects. The `__init__.py` files only make setuptools package the scripts; the scripts are
loaded by `evaluate` (see `hf_feedback.tasks.metrics`), not imported.
"""
