"""Text-generation metrics in one `evaluate` module: character error rate, sentence accuracy, BLEU and chrF.

An offline stand-in for the Hub's `evaluate-metric/cer`, `sacrebleu` and `chrf`: the character error rate is the
Levenshtein distance between prediction and reference (insertions, deletions and substitutions of characters) summed
over sentences and divided by the reference characters; sentence accuracy the share of exact predictions; BLEU and
chrF those of the `sacrebleu` package (Post 2018), corpus-level, BLEU with its Chinese tokenisation.
"""

import datasets
import evaluate
import sacrebleu

_DESCRIPTION = "Character error rate, sentence accuracy, and sacrebleu's corpus BLEU and chrF of generated texts."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): generated texts.
    references (`list` of `str`): the expected texts, one per prediction.

Returns:
    cer (edit distance per reference character, 0 is perfect), sentence_accuracy in [0, 1], bleu and chrf in
    [0, 100].
"""

_CITATION = """
@inproceedings{post-2018-call, title={A Call for Clarity in Reporting {BLEU} Scores}, author={Post, Matt},
booktitle={Proceedings of the Third Conference on Machine Translation}, year={2018}}
"""


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings, by characters."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Generation(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
            reference_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(self, predictions, references):
        characters = sum(len(r) for r in references)
        return {
            "cer": sum(edit_distance(p, r) for p, r in zip(predictions, references)) / max(characters, 1),
            "sentence_accuracy": sum(p == r for p, r in zip(predictions, references)) / max(len(references), 1),
            "bleu": sacrebleu.corpus_bleu(predictions, [references], tokenize="zh").score,
            "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
        }
