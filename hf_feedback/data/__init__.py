"""Data: the bundled corpora, the user's own data, tokenizers (trained, trimmed, applied) and the padding-free collator.
Imports hf_feedback.failures and nothing else of ours: the model, tasks, training, integrations and reports build on it."""
