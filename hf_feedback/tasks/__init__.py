"""Tasks: each task kind's metrics (metrics.py and their offline evaluate modules), tagging, sequence to sequence.
Imports hf_feedback.data only, never the model, training or integrations; reports and the command line build on it."""
