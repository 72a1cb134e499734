"""Checkpoints in and out: BERT-family and e5 importers, BERT and ONNX exporters, int8, sentence-transformers, the Hub.
Imports hf_feedback.model and failures.py only; the model never imports these, training uses the Hub upload."""
