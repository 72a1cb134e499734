"""One failure contract for every entry point: both recipes, every `python -m hf_feedback` verb, the converter.

Bad input (a flag, a file, a column, a value, a checkpoint; found by our checks or by datasets, transformers,
safetensors or torch while setting up) ends as one line, `error: <the problem and the fix>` on stderr, and exit
status 2, with no traceback; `HF_FEEDBACK_DEBUG=1` shows the traceback instead. Anything else (a bug, a fault while
training) keeps Python's traceback and exit status 1. Files a failed set-up created are removed, so the corrected
command runs with the same arguments.
"""

import json
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

DEBUG_VARIABLE = "HF_FEEDBACK_DEBUG"

# What bad input raises while a run is set up: ValueError (ours, datasets', transformers', json's, a failed
# decode), missing, misplaced or unwritable files and folders, and a damaged safetensors file.
BAD_INPUT = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
             SafetensorError)


class BadInput(ValueError):
    """Bad input, found before any work started; the message names the problem and the fix."""


def debugging() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


class _SetUp:
    def __init__(self):
        self.new_folders = []

    def will_create(self, folder):
        """`folder` may be written during set-up; if it does not exist yet, a failed set-up removes it again."""
        folder = Path(folder)
        if not folder.exists():
            self.new_folders.append(folder)


@contextmanager
def bad_input_exits(prefix="error"):
    """Around an entry point's set-up: bad input becomes `<prefix>: <message>` on stderr and exit status 2.

    A folder registered with `will_create` that the failed set-up created (e.g. a freshly trained tokenizer in a
    new output_dir) is removed. Work after the block (training) runs outside it, so a genuine failure there keeps
    its traceback.
    """
    set_up = _SetUp()
    try:
        yield set_up
    except BAD_INPUT as error:
        for folder in set_up.new_folders:
            shutil.rmtree(folder, ignore_errors=True)
        if debugging():
            raise
        print(f"{prefix}: {error}", file=sys.stderr)
        sys.exit(2)


def load_pretrained(load, folder, **kwargs):
    """`load(folder, **kwargs)` (any `from_pretrained`), with a damaged or missing file reported by name."""
    try:
        return load(folder, **kwargs)
    except SafetensorError as error:
        weights = [path.name for path in sorted(Path(folder).glob("*.safetensors"))] if Path(folder).is_dir() else []
        raise BadInput(f"{folder}: the weights ({', '.join(weights) or 'safetensors'}) are damaged or incomplete "
                       f"({error}); copy the checkpoint again or choose another") from error
    except json.JSONDecodeError as error:
        raise BadInput(f"{folder}: a JSON file is damaged ({error}); copy the checkpoint again") from error
    except OSError as error:
        raise BadInput(f"{folder}: {error}") from error


__all__ = ["BAD_INPUT", "BadInput", "DEBUG_VARIABLE", "bad_input_exits", "debugging", "load_pretrained"]
