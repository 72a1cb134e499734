"""What the model test modules share: the heads they run over, a model built the same way every time, and a counter of
the calls that make the host wait for the device. (helpers.py stays free of hf_feedback imports: a test's fresh
interpreter without hf_feedback imports it.)"""

import copy

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hf_feedback import (
    FeedbackForMaskedLM,
    FeedbackForSequenceClassification,
    FeedbackForTokenClassification,
    FeedbackModel,
)

# The encoder's heads that the model tests run over.
HEADS = [FeedbackModel, FeedbackForSequenceClassification, FeedbackForMaskedLM, FeedbackForTokenClassification]


def build(model_class, config, attn="sdpa"):
    """A model of `config` with the same initial weights every time, in eval mode."""
    torch.manual_seed(0)
    return model_class._from_config(copy.deepcopy(config), attn_implementation=attn).eval()



class Synchronisations(TorchDispatchMode):
    """Counts the calls that make the host wait for the device: reading a value (`item`, `bool`, `int`: aten's
    _local_scalar_dense), `nonzero` and indexing with a boolean mask (their output's size is data), and `tolist`
    (which on a CPU tensor dispatches nothing, so it is counted where it is called)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("_local_scalar_dense", "nonzero") or (
                name == "index" and any(t is not None and t.dtype == torch.bool for t in args[1])):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        tolist, calls = torch.Tensor.tolist, self.calls

        def counted(tensor):
            calls.append("tolist")
            return tolist(tensor)

        self._tolist, torch.Tensor.tolist = tolist, counted
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)
