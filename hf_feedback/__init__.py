"""hf_feedback: a Transformer text encoder written from first principles that behaves as a Hugging Face model.

Importing the package registers the model with transformers' Auto classes, so that
`AutoModel.from_pretrained(folder)` (and the other Auto classes) open hf_feedback checkpoints.

Its folders, each importing only failures.py and the ones before it: model/ (the model family), data/, integrations/
(importers, exporters, the Hub), tasks/, training/, reports/ (model card, plots); __main__.py is the command line.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .data.collators import DataCollatorForPaddingFree
from .model.configuration_feedback import FeedbackConfig, FeedbackSeq2SeqConfig
from .model.modeling_feedback import (
    FeedbackForCausalLM,
    FeedbackForConditionalGeneration,
    FeedbackForMaskedLM,
    FeedbackForPreTraining,
    FeedbackForSequenceClassification,
    FeedbackForTokenClassification,
    FeedbackModel,
    FeedbackPreTrainedModel,
    FeedbackSeq2SeqModel,
)

AutoConfig.register(FeedbackConfig.model_type, FeedbackConfig, exist_ok=True)
AutoModel.register(FeedbackConfig, FeedbackModel, exist_ok=True)
AutoModelForSequenceClassification.register(FeedbackConfig, FeedbackForSequenceClassification, exist_ok=True)
AutoModelForMaskedLM.register(FeedbackConfig, FeedbackForMaskedLM, exist_ok=True)
AutoModelForTokenClassification.register(FeedbackConfig, FeedbackForTokenClassification, exist_ok=True)
AutoModelForPreTraining.register(FeedbackConfig, FeedbackForPreTraining, exist_ok=True)
AutoModelForCausalLM.register(FeedbackConfig, FeedbackForCausalLM, exist_ok=True)
AutoConfig.register(FeedbackSeq2SeqConfig.model_type, FeedbackSeq2SeqConfig, exist_ok=True)
AutoModel.register(FeedbackSeq2SeqConfig, FeedbackSeq2SeqModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(FeedbackSeq2SeqConfig, FeedbackForConditionalGeneration, exist_ok=True)

__version__ = "0.1.0"

__all__ = [
    "FeedbackConfig",
    "FeedbackModel",
    "FeedbackPreTrainedModel",
    "FeedbackForSequenceClassification",
    "FeedbackForMaskedLM",
    "FeedbackForTokenClassification",
    "FeedbackForPreTraining",
    "FeedbackForCausalLM",
    "FeedbackSeq2SeqConfig",
    "FeedbackSeq2SeqModel",
    "FeedbackForConditionalGeneration",
    "DataCollatorForPaddingFree",
]
