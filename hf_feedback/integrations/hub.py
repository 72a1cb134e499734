"""Share a saved run on the Hugging Face Hub: upload what a model repository should hold, and nothing else.

A recipe's output folder holds more than the model. Trainer's `training_args.bin` is a pickle of the arguments,
local paths included, that only `torch.load(weights_only=False)` (running arbitrary code) opens; `trainer_state.json`
can name local checkpoint folders; `checkpoint-*/` hold optimizer, scheduler and RNG state; `adapter/` (a merged
LoRA run) has a config naming the local base model. `Trainer.push_to_hub` uploads all of the top level but the
checkpoints, and replaces `README.md` with its own draft card.

`push_folder` uploads only the files matching `SHARED_FILES` (weights, config, the remote code, tokenizer, model
card, results and pictures at the top level; sentence-transformers' pooling config below it), after checking that no text file among them names a local path.
`FeedbackTrainer.push_to_hub` goes through it, so `--push_to_hub` in the recipes gives the same repository.
"""

import fnmatch
import os
from concurrent.futures import Future
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi

from .sentence_embeddings import POOLING_CONFIG

# Files a model repository gets (glob patterns); a pattern matches at its own depth only, so "*.png" takes the
# top level's pictures and not a checkpoint's, and a pattern with a folder names a file below the top level.
SHARED_FILES = [
    "README.md",  # the model card (hf_feedback.reports.model_card)
    "config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "*.py",  # configuration_feedback.py and modeling_feedback.py, named by config.json's auto_map
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "*_results.json",  # all/train/eval/test results: numbers only
    "*.png",  # the pictures the card shows
    "modules.json",  # sentence-transformers' files (hf_feedback.integrations.sentence_embeddings)
    "sentence_bert_config.json",
    POOLING_CONFIG,
]
_TEXT_SUFFIXES = (".md", ".json", ".py", ".txt")


def shared_files(folder: str | os.PathLike) -> list[str]:
    """The files of `folder` that `push_folder` uploads, sorted (paths relative to the folder)."""
    folder = Path(folder)
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return [name for name in names if any(fnmatch.fnmatchcase(name, pattern) for pattern in SHARED_FILES
                                          if pattern.count("/") == name.count("/"))]


def _local_paths():
    # Absolute paths of this machine that must never reach a shared file. "/" alone would match everything.
    candidates = {os.getcwd(), str(Path.cwd().resolve()), str(Path.home())}
    return {path for path in candidates if path.strip("/")}


def check_no_local_paths(folder: str | os.PathLike, files: list[str]) -> None:
    """Raise `ValueError` naming the first text file in `files` that contains an absolute path of this machine:
    the folder itself, the working directory or the home directory."""
    folder = Path(folder)
    forbidden = _local_paths() | {str(folder.absolute()), str(folder.resolve())}
    for name in files:
        if not name.endswith(_TEXT_SUFFIXES):
            continue
        text = (folder / name).read_text(encoding="utf-8", errors="replace")
        for path in sorted(forbidden, key=len, reverse=True):
            if path in text:
                raise ValueError(f"{name} in {folder.name} contains the local path {path}; refusing to upload it")


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload hf_feedback model",
    create_pr: bool = False,
    run_as_future: bool = False,
) -> CommitInfo | Future:
    """Create `repo_id` if needed and upload the shareable files of the saved model in `folder` in one commit.

    Files already in the repository and not uploaded again are left as they are (as `HfApi.upload_folder` does), so
    pushing a folder before its model is saved (Trainer pushes when `save_model` is called) and again at the end
    gives the full repository. Raises `ValueError` when `folder` holds no shareable file or one names a local path.
    """
    folder = Path(folder)
    files = shared_files(folder) if folder.is_dir() else []
    if not files:
        raise ValueError(f"{folder} holds none of the files a model repository gets ({', '.join(SHARED_FILES)})")
    check_no_local_paths(folder, files)
    api = HfApi()
    repo_id = api.create_repo(repo_id, token=token, private=private, exist_ok=True).repo_id
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message=commit_message,
        token=token,
        revision=revision,
        create_pr=create_pr,
        allow_patterns=files,  # exactly the files checked above
        run_as_future=run_as_future,
    )


__all__ = ["SHARED_FILES", "check_no_local_paths", "push_folder", "shared_files"]
