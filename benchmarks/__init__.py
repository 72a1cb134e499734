"""Benchmarks of hf_feedback: speed against transformers' BERT, efficiency (MFU), memory, accuracy.

    python benchmarks/run.py [--quick] [--only speed,mfu,memory,accuracy]

`run.py` runs the sections, prints one Markdown report and writes it to `benchmarks/RESULTS.md` (and the raw
numbers to `benchmarks/results.json`). Every number in the report comes from the run.
"""
