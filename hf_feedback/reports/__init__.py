"""Reports of a run, for people: the model card (model_card.md links to the top-level template), plots, attention maps.
Imports hf_feedback.tasks (the metrics' problem types) only; the recipes and the command line use these."""
