"""Token-classification metrics in one `evaluate` module: token accuracy, and seqeval's entity precision, recall
and F1.

An offline stand-in for the Hub's `evaluate-metric/seqeval`: token accuracy over every scored token, and, when
the tags mark chunks (`chunks=True`), the entity-level micro precision / recall / F1 of the `seqeval` package
(Nakayama 2018), the CoNLL measure: an entity (a name, or a word in segmentation) counts only when its type and
both of its ends are right.
"""

import datasets
import evaluate
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.scheme import IOB2, IOBES

_DESCRIPTION = "Token accuracy, and entity-level precision, recall and F1 (seqeval) of tag sequences."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `str`): predicted tags, one list per sentence.
    references (`list` of `list` of `str`): true tags, the same lengths.
    chunks (`bool`, defaults to `True`): the tags mark chunks (B-/I-/E-/S- prefixes and O); `False` reports token
        accuracy alone (e.g. part-of-speech tags).
    scheme (`"IOB2"`, `"IOBES"` or `None`): seqeval's strict mode with that scheme; `None` its default (lenient
        CoNLL) mode.

Returns:
    accuracy, and with chunks precision, recall, f1: floats in [0, 1].
"""

_CITATION = """
@misc{seqeval, title={{seqeval}: A Python framework for sequence labeling evaluation},
url={https://github.com/chakki-works/seqeval}, author={Hiroki Nakayama}, year={2018}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Tagging(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.List(datasets.Value("string")),
                                        "references": datasets.List(datasets.Value("string"))}),
            reference_urls=["https://github.com/chakki-works/seqeval"],
        )

    def _compute(self, predictions, references, chunks=True, scheme=None):
        pairs = [(p, r) for prediction, reference in zip(predictions, references) for p, r in zip(prediction, reference)]
        results = {"accuracy": sum(p == r for p, r in pairs) / max(len(pairs), 1)}
        if chunks:
            strict = {"mode": "strict", "scheme": {"IOB2": IOB2, "IOBES": IOBES}[scheme]} if scheme else {}
            for name, score in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
                results[name] = float(score(references, predictions, zero_division=0, **strict))
        return results
