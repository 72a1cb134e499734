"""Training: the recipes' arguments, run folder and shared steps, the Trainer subclasses and their schedule, LoRA.
Imports the model, data, failures.py and integrations.hub (push_to_hub); never tasks or reports."""
