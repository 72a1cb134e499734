"""The classical baseline: TF-IDF over character 1-3-grams + logistic regression, on the bundled reviews.

    python benchmarks/tfidf_baseline.py --output_dir DIR [--C 4.0] [--max_train_samples N] [--max_eval_samples N]
        [--train_file F --test_file F [--text_column C --label_column L] [--text_pair_column P]]

Trains on the train split (the bundled reviews, or your files read as finetune.py reads them), scores the test split with the metrics finetune.py uses, and writes
DIR/test_results.json with finetune.py's keys (test_accuracy, test_f1, ...), so the benchmark reads both alike.
Characters suit Chinese, which has no spaces between words; the 1-3-grams cover most words. Sentence pairs
(--text_pair_column) get the classic pair features: each text's TF-IDF vector and their elementwise product.
"""

import argparse
import json
from pathlib import Path

import scipy.sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from hf_feedback.data.user_data import all_texts, load_text_classification_data
from hf_feedback.tasks.metrics import METRIC_NAMES, load_classification_metrics
from hf_feedback.training.recipe_utils import sample


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--C", type=float, default=4.0, help="inverse L2 regularisation of the logistic regression")
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--max_eval_samples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--train_file")
    parser.add_argument("--validation_file", help="read for finetune.py's checks; not used")
    parser.add_argument("--test_file")
    parser.add_argument("--text_column", default="text")
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--text_pair_column")
    args = parser.parse_args(argv)

    data = load_text_classification_data(train_file=args.train_file, validation_file=args.validation_file,
                                         test_file=args.test_file, text_column=args.text_column,
                                         label_column=args.label_column, text_pair_column=args.text_pair_column)
    train = sample(data["train"], args.max_train_samples, args.seed)
    test = sample(data["test"], args.max_eval_samples, args.seed)
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3))
    vectorizer.fit(all_texts(train))

    def features(split):
        first = vectorizer.transform(split["text"])
        if not args.text_pair_column:
            return first
        second = vectorizer.transform(split["text_pair"])
        return scipy.sparse.hstack([first, second, first.multiply(second)]).tocsr()

    regression = LogisticRegression(C=args.C, max_iter=2000).fit(features(train), list(train["label"]))
    results = load_classification_metrics().compute(
        predictions=regression.predict(features(test)), references=list(test["label"])
    )
    metrics = {f"test_{name}": float(results[name]) for name in METRIC_NAMES}
    metrics |= {"test_samples": len(test), "trainable_parameters": regression.coef_.size + regression.intercept_.size}

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "test_results.json").write_text(json.dumps(metrics, indent=4))
    print(f"test accuracy: {metrics['test_accuracy']:.4f}  macro F1: {metrics['test_f1']:.4f}  ({len(test)} texts)")


if __name__ == "__main__":
    main()
