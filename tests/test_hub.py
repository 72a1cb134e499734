"""Pushing to the Hub, offline: the upload is intercepted at the huggingface_hub client (HfApi.create_repo and
HfApi.create_commit), so the test sees exactly the files a real push would commit, and reloads them where hf_feedback
cannot be imported.

`HfApi.upload_folder` commits through `create_commit` once hf_xet is reported missing (with it, it streams through
its own pipeline); it first posts README.md to the Hub's YAML validator, replaced here by the offline check of
`huggingface_hub.ModelCard`. transformers' `model.push_to_hub` loads the repository's current card first; a new
repository has none.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard, RepoUrl
from huggingface_hub.errors import EntryNotFoundError
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from helpers import WITHOUT_HF_FEEDBACK, run_recipe

from hf_feedback import FeedbackConfig, FeedbackForSequenceClassification
from hf_feedback.data.corpora import SENTIMENT_LABELS, load_sentiment_reviews
from hf_feedback.data.tokenization import train_tokenizer
from hf_feedback.integrations.hub import push_folder

TINY = ["--config_overrides", "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64",
        "--tokenizer_vocab_size", "2000", "--max_train_samples", "256", "--max_eval_samples", "32", "--max_steps", "4",
        "--per_device_train_batch_size", "16", "--learning_rate", "3e-3", "--logging_steps", "2", "--eval_steps", "2",
        "--save_steps", "2", "--disable_tqdm", "true"]
# What a pushed fine-tuning run holds: the model with its code, the tokenizer, the card, results and pictures.
# Not training_args.bin (a pickle with local paths), trainer_state.json, checkpoints (optimizer, scheduler, RNG).
FINETUNE_REPO = ["1_Pooling/config.json", "README.md", "all_results.json", "config.json", "configuration_feedback.py",
                 "confusion_matrix.png", "eval_metrics.png", "eval_results.json", "learning_rate.png", "loss.png",
                 "model.safetensors", "modeling_feedback.py", "modules.json", "sentence_bert_config.json",
                 "test_results.json", "tokenizer.json", "tokenizer_config.json", "train_results.json"]
TEXTS = load_sentiment_reviews()["test"]["text"][:8]


class FakeHub:
    """New repositories as folders: each commit's additions are written out, deletions removed."""

    def __init__(self, root):
        self.root, self.commits = Path(root), []

    def create_repo(self, repo_id, *args, **kwargs):
        (self.root / repo_id).mkdir(parents=True, exist_ok=True)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def download(self, repo_id, filename, *args, **kwargs):
        raise EntryNotFoundError(f"{filename} is not in the new repository {repo_id}")

    def create_commit(self, repo_id, operations, *, commit_message, **kwargs):
        folder = self.root / repo_id
        for operation in operations:
            target = folder / operation.path_in_repo
            if isinstance(operation, CommitOperationAdd):
                target.parent.mkdir(parents=True, exist_ok=True)
                with operation.as_file() as source:
                    target.write_bytes(source.read())
            elif isinstance(operation, CommitOperationDelete):
                target.unlink()
        self.commits.append((repo_id, commit_message, sorted(op.path_in_repo for op in operations)))
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{len(self.commits):040x}",
                          commit_message=commit_message, commit_description="", oid=f"{len(self.commits):040x}")

    def files(self, repo_id):
        folder = self.root / repo_id
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def intercept(monkeypatch, root):
    """Route every Hub call a push makes to a FakeHub (a bound method set on the class is not rebound to the HfApi
    instance, so it is called without it)."""
    hub = FakeHub(root)
    monkeypatch.setattr(HfApi, "create_repo", hub.create_repo)
    monkeypatch.setattr(HfApi, "create_commit", hub.create_commit)
    monkeypatch.setattr(HfApi, "_validate_yaml", staticmethod(lambda content, **kwargs: ModelCard(content)))
    monkeypatch.setattr(huggingface_hub.hf_api, "is_xet_available", lambda: False)
    monkeypatch.setattr(huggingface_hub.repocard, "hf_hub_download", hub.download)
    return hub




@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """A tiny fine-tuning run pushed with --push_to_hub, and a tiny model + tokenizer pushed with their own
    push_to_hub; returns the fake Hub and the run's output folder."""
    root = tmp_path_factory.mktemp("pushes")
    with pytest.MonkeyPatch.context() as monkeypatch:
        hub = intercept(monkeypatch, root / "hub")
        output_dir = root / "finetune"
        run_recipe("finetune", ["--output_dir", str(output_dir), *TINY, "--push_to_hub", "--hub_model_id", "user/name"])

        tokenizer = train_tokenizer(TEXTS * 10, vocab_size=300)
        torch.manual_seed(0)
        model = FeedbackForSequenceClassification(FeedbackConfig(
            vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=64, id2label=dict(enumerate(SENTIMENT_LABELS)),
            label2id={name: i for i, name in enumerate(SENTIMENT_LABELS)},
        )).eval()
        model.push_to_hub("user/tiny")
        tokenizer.push_to_hub("user/tiny")
        model.save_pretrained(root / "tiny")
        tokenizer.save_pretrained(root / "tiny")
    return hub, output_dir, root


def assert_nothing_local(folder, *local_paths):
    for path in folder.rglob("*"):
        if path.suffix in (".json", ".md", ".py", ".txt"):
            text = path.read_text(encoding="utf-8")
            for local in (*map(str, local_paths), "/root", "/work", "/tmp", "/home"):
                assert local not in text, (path.name, local)


def test_recipe_push_uploads_exactly_the_model_repository(pushed):
    hub, output_dir, root = pushed
    assert hub.files("user/name") == FINETUNE_REPO
    # Nothing during training (hub_strategy "end"); Trainer's push when the model is saved, then the full run.
    commits = [(repo, message) for repo, message, _ in hub.commits if repo == "user/name"]
    assert commits == [("user/name", "Model save"), ("user/name", "End of training")]
    uploaded = {path for repo, _, paths in hub.commits if repo == "user/name" for path in paths}
    assert not any(name.startswith(("checkpoint-", "training_args", "trainer_state", "optimizer", "scheduler", "rng"))
                   for name in uploaded), uploaded
    assert (output_dir / "checkpoint-4" / "optimizer.pt").is_file()  # they exist locally, they were kept back
    repo = root / "hub" / "user" / "name"
    assert (repo / "README.md").read_text() == (output_dir / "README.md").read_text()  # our card, not Trainer's draft
    card = ModelCard.load(repo / "README.md")
    assert card.data.model_name == "name" and 'model="user/name"' in card.text
    assert set(json.loads((repo / "config.json").read_text())["auto_map"]) >= {"AutoConfig",
                                                                                "AutoModelForSequenceClassification"}
    assert_nothing_local(repo, output_dir, root)


def test_model_and_tokenizer_push_to_hub_upload_a_self_contained_model(pushed):
    hub, _, root = pushed
    assert hub.files("user/tiny") == ["README.md", "config.json", "configuration_feedback.py", "model.safetensors",
                                      "modeling_feedback.py", "tokenizer.json", "tokenizer_config.json"]
    assert len([repo for repo, _, _ in hub.commits if repo == "user/tiny"]) == 2  # the model's commit, the tokenizer's
    assert_nothing_local(root / "hub" / "user" / "tiny", root)


LOADER = WITHOUT_HF_FEEDBACK + textwrap.dedent(
    """
    import json, torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    texts, output, logits = json.loads(sys.argv[1]), sys.argv[2], {}
    for folder in sys.argv[3:]:
        # AutoTokenizer opens config.json first, so it needs trust_remote_code as well (else it asks on stdin).
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            inputs = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
            logits[folder] = model(**inputs).logits.tolist()
    with open(output, "w") as file:
        json.dump(logits, file)
    """
)


def test_pushed_repositories_load_without_hf_feedback_and_give_the_same_logits(pushed):
    _, output_dir, root = pushed
    repos = {root / "hub" / "user" / "name": output_dir, root / "hub" / "user" / "tiny": root / "tiny"}
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(root / "modules"), "TOKENIZERS_PARALLELISM": "false",
           "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    output = root / "reloaded.json"
    result = subprocess.run([sys.executable, "-c", LOADER, json.dumps(TEXTS), str(output), *map(str, repos)],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Do you wish to run the custom code" not in result.stdout
    reloaded = json.loads(output.read_text())
    for repo, saved in repos.items():
        model = AutoModelForSequenceClassification.from_pretrained(saved).eval()
        tokenizer = AutoTokenizer.from_pretrained(saved)
        inputs = tokenizer(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
        with torch.no_grad():
            expected = model(**inputs).logits
        torch.testing.assert_close(torch.tensor(reloaded[str(repo)]), expected, atol=1e-5, rtol=1e-5)


def test_push_folder_refuses_local_paths_and_empty_folders(monkeypatch, tmp_path):
    hub = intercept(monkeypatch, tmp_path / "hub")
    folder = tmp_path / "run"
    folder.mkdir()
    with pytest.raises(ValueError, match="holds none of the files"):
        push_folder(folder, "user/empty")
    (folder / "config.json").write_text(json.dumps({"model_type": "feedback", "data": str(folder / "train.csv")}))
    (folder / "training_args.bin").write_bytes(b"not uploaded anyway")
    with pytest.raises(ValueError, match="config.json .* contains the local path"):
        push_folder(folder, "user/leaky")
    assert hub.commits == []

    (folder / "config.json").write_text(json.dumps({"model_type": "feedback"}))
    push_folder(folder, "user/clean", commit_message="first")
    assert hub.commits == [("user/clean", "first", ["config.json"])]


def test_lora_adapters_are_pushed_merged(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_recipe("finetune", ["--output_dir", str(tmp_path / "lora"), "--use_lora", "--push_to_hub"])
    assert exit_info.value.code == 2 and "--merge_lora" in capsys.readouterr().err
