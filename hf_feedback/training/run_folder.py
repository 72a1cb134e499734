"""A run's folder: claimed before any work (locked against a second run, never overwritten silently), resumed only
from a complete checkpoint that fits the model, given back at the end. Built on recipe_arguments.py's checks."""

import atexit
import json
import os
import pickle
import socket
import sys
import time
import zipfile
from pathlib import Path

import psutil
import torch
from safetensors import SafetensorError, safe_open
from transformers import TrainingArguments, set_seed
from transformers.utils import logging

from .recipe_arguments import RecipeError, check_cpu_threads, check_precision, check_training_arguments

logger = logging.get_logger(__name__)


def claim_run(set_up, training_args, overwrite_output_dir):
    """The checks every recipe makes before any work, in order: the output_dir (removed again if set-up fails, locked
    against a second run, not overwritten silently, and with --overwrite_output_dir emptied of the older run once
    set-up succeeds), precision, training arguments, CPU threads."""
    set_up.will_create(training_args.output_dir)
    claim_output_dir(training_args)
    check_output_dir(training_args, overwrite_output_dir)
    if overwrite_output_dir and training_args.resume_from_checkpoint is None and training_args.process_index == 0:
        set_up.will_replace(training_args.output_dir, keep=(LOCK_FILE,))  # an older run's checkpoints go too
    check_precision(training_args)
    check_training_arguments(training_args)
    check_cpu_threads(training_args)


def begin_run(training_args):
    """After a recipe's own checks: the checkpoint to resume from (or None), the process said, the seed set."""
    resume = resolve_resume(training_args)
    print(f"process rank {training_args.process_index} of {training_args.world_size} on {training_args.device}",
          flush=True)
    set_seed(training_args.seed)
    return resume


# What a checkpoint folder must hold to resume from: the training state, the optimizer and its schedule, and weights.
_CHECKPOINT_STATE = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


_CHECKPOINT_WEIGHTS = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin")


def _missing_from_checkpoint(folder: Path) -> list[str]:
    missing = [name for name in _CHECKPOINT_STATE if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in _CHECKPOINT_WEIGHTS):
        missing.append("model weights")
    return missing


def _damaged_in_checkpoint(folder: Path) -> list[str]:
    """The files of a checkpoint that cannot be read, each with why; cheap checks that catch a copy or a save cut
    short: JSON parses, a safetensors header covers its file, a torch.save zip archive has its central directory and
    its members' checksums hold (a file that is not such an archive must load as a legacy torch.save pickle)."""
    damaged = []
    for path in sorted(folder.iterdir()):
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".safetensors":
                with safe_open(path, "pt"):
                    pass
            elif path.suffix in (".pt", ".pth", ".bin") and _is_torch_zip(path):
                with zipfile.ZipFile(path) as archive:
                    bad = archive.testzip()
                if bad is not None:
                    raise ValueError(f"{bad} fails its checksum")
            elif path.suffix in (".pt", ".pth", ".bin"):
                torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, ValueError, SafetensorError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError,
                RuntimeError) as error:
            damaged.append(f"{path.name} ({str(error).splitlines()[0] if str(error) else type(error).__name__})")
    return damaged


def _is_torch_zip(path: Path) -> bool:
    # torch.save writes a zip archive (since torch 1.6); a legacy pickle file has no central directory to check.
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _unusable(folder: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None."""
    missing = _missing_from_checkpoint(folder)
    if missing:
        return f"no {', '.join(missing)}"
    damaged = _damaged_in_checkpoint(folder)
    return f"damaged: {', '.join(damaged)}" if damaged else None


def resolve_resume(training_args: TrainingArguments):
    """The checkpoint folder `--resume_from_checkpoint` names, checked before any work.

    A run whose results are saved and whose checkpoint has trained all its steps is refused: nothing to do.
    `last` (or `true`) takes the newest complete `checkpoint-N` in output_dir: a run killed while saving leaves a
    folder without its optimizer, schedule or weights, which is skipped with a warning naming it (resuming from it
    would crash, or silently restart the optimizer and the learning-rate schedule). A named folder must be complete.
    """
    value = training_args.resume_from_checkpoint
    if value is None:
        return None
    folder = _resumable_folder(training_args, value)
    state = json.loads((Path(folder) / "trainer_state.json").read_text())
    steps = training_args.max_steps if training_args.max_steps > 0 else state.get("max_steps", 0)
    if state.get("global_step", 0) >= steps and (Path(training_args.output_dir) / "train_results.json").is_file():
        # Trainer would train one step past the end, save a checkpoint and rewrite the finished run's results.
        raise RecipeError(f"--resume_from_checkpoint {value}: {folder} already trained its {steps} steps and the "
                          "run's results are saved: nothing to do (pass a larger --max_steps to train further)")
    return folder


def _resumable_folder(training_args, value):
    if value.lower() in ("last", "true"):
        output_dir = Path(training_args.output_dir)
        folders = sorted((p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()),
                         key=lambda p: int(p.name[11:]), reverse=True)
        for folder in folders:
            problem = _unusable(folder)
            if problem is None:
                return str(folder)
            logger.warning(f"--resume_from_checkpoint last: skipping {folder} ({problem}; a run killed while "
                           "saving?)")
        raise RecipeError(
            f"--resume_from_checkpoint {value}: {output_dir} has no complete checkpoint-N folder"
            + (f" ({len(folders)} incomplete or damaged)" if folders else "") + "; start a new run without it"
        )
    if not Path(value).is_dir():
        raise RecipeError(f"--resume_from_checkpoint {value}: no such checkpoint folder")
    problem = _unusable(Path(value))
    if problem:
        raise RecipeError(f"--resume_from_checkpoint {value} cannot be resumed from: {problem}")
    return value


LOCK_FILE = ".hf_feedback.lock"


def claim_output_dir(training_args: TrainingArguments):
    """Hold output_dir for this run's life, so that a second run into the same folder is refused at once.

    The main process creates output_dir/.hf_feedback.lock atomically (O_EXCL: of two runs started together exactly
    one wins) with its pid, host and command, and removes it when the process exits. A lock left by a killed run
    (its pid is gone on this host) is taken over with a warning. Call before anything is written to output_dir.
    """
    if training_args.process_index != 0:
        return
    folder = Path(training_args.output_dir)
    if folder.exists() and not folder.is_dir():
        raise RecipeError(f"--output_dir {folder} is a file, not a folder; choose another --output_dir")
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
          "command": " ".join(sys.argv)}
    while True:
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
            except (OSError, ValueError):
                holder = {}  # being written this instant, or damaged: read it as held by an unknown run
            same_host = holder.get("host") == me["host"]
            # Our own pid: an earlier run in this same process (a notebook, a test) that ended without exiting.
            alive = not same_host or (holder.get("pid") != me["pid"] and psutil.pid_exists(holder.get("pid", -1)))
            if holder and alive:
                raise RecipeError(
                    f"output_dir {folder} is in use by another run (pid {holder.get('pid')} on {holder.get('host')}, "
                    f"started {holder.get('started')}: {holder.get('command')}). Wait for it, or choose another "
                    f"--output_dir; if no such run is alive, delete {lock}."
                )
            if not holder:
                raise RecipeError(f"output_dir {folder} is locked by {lock}, which cannot be read; if no run is "
                                  "using the folder, delete it.")
            logger.warning(f"taking over {lock} left by run pid {holder.get('pid')}, which is no longer alive")
            lock.unlink(missing_ok=True)
    with os.fdopen(descriptor, "w") as f:
        json.dump(me, f)
    atexit.register(_release_lock, lock, me["pid"])


def release_output_dir(training_args: TrainingArguments):
    """The end of a run: give output_dir back (the lock is also removed when the process exits)."""
    if training_args.process_index == 0:
        _release_lock(Path(training_args.output_dir) / LOCK_FILE, os.getpid())


def _release_lock(lock: Path, pid: int):
    try:
        if json.loads(lock.read_text()).get("pid") == pid:
            lock.unlink()
    except (OSError, ValueError):
        pass


def check_output_dir(training_args: TrainingArguments, overwrite: bool):
    """Refuse to write into a non-empty output_dir unless resuming or told to overwrite (this run's lock aside)."""
    output_dir = Path(training_args.output_dir)
    if training_args.resume_from_checkpoint is not None or overwrite:
        return
    if output_dir.is_dir() and any(path.name != LOCK_FILE for path in output_dir.iterdir()):
        raise RecipeError(
            f"output_dir {output_dir} exists and is not empty. Pass --overwrite_output_dir to replace its contents, "
            "--resume_from_checkpoint last to continue its run, or choose another --output_dir."
        )


def check_resume_fits(model, resume):
    """The checkpoint to resume from must hold this model's weights, shape for shape: a run resumed with other
    --config_overrides or data (another label count) is refused, naming what differs, before any work."""
    weights = Path(resume) / "model.safetensors"
    if not weights.is_file():
        return  # an adapter or a .bin checkpoint: Trainer's own checks
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    with safe_open(weights, "pt") as saved:
        misfits = [f"{name} {tuple(saved.get_slice(name).get_shape())} there, {shapes[name]} here"
                   for name in saved.keys() if name in shapes and tuple(saved.get_slice(name).get_shape()) != shapes[name]]
    if misfits:
        config = json.loads((Path(resume) / "config.json").read_text()) if (Path(resume) / "config.json").is_file() else {}
        ours = json.loads(model.config.to_json_string(use_diff=False))  # as saved: keys of id2label are strings
        fields = [f"{k}={config[k]!r} there, {ours[k]!r} here" for k in sorted(config) if k in ours
                  and config[k] != ours[k] and k not in ("architectures", "dtype", "transformers_version", "_name_or_path")]
        raise RecipeError(f"--resume_from_checkpoint {resume} does not fit this model ({'; '.join(misfits[:2])}"
                          + (f"; config: {', '.join(fields[:5])}" if fields else "") + "): resume with the "
                          "--config_overrides, checkpoint and data of the run that wrote it")


def print_saved(output_dir):
    """Say what a finished run left in `output_dir` (its lock aside)."""
    saved = sorted(p.name for p in Path(output_dir).iterdir() if p.name != LOCK_FILE)
    print(f"saved to {output_dir}: {json.dumps(saved)}")
