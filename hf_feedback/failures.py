"""One failure contract for every entry point: both recipes, every `python -m hf_feedback` verb, the converter.

Bad input (a flag, a file, a column, a value, a checkpoint; found by our checks or by datasets, transformers,
safetensors or torch while setting up) ends as one line, `error: <the problem and the fix>` on stderr, and exit
status 2, with no traceback; `HF_FEEDBACK_DEBUG=1` shows the traceback instead. Anything else (a bug, a fault while
training) keeps Python's traceback and exit status 1. Files a failed set-up created are removed, and what it was to
replace is put back, so the corrected command runs with the same arguments.
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
        self.set_aside = []  # (folder, where its earlier contents wait until set-up ends)

    def will_create(self, folder):
        """`folder` may be written during set-up; if it does not exist yet, a failed set-up removes it again."""
        folder = Path(folder)
        if not folder.exists():
            self.new_folders.append(folder)

    def will_replace(self, folder, keep=()):
        """What `folder` holds (but the names in `keep`) makes way for this run now: it is deleted when set-up
        succeeds and put back when set-up fails, so that a run never leaves its files beside an older run's (a
        `checkpoint-N` of that run would be taken for this run's) and a refused command changes nothing."""
        folder = Path(folder)
        aside = folder / f".replaced-{os.getpid()}"
        aside.mkdir()
        for path in list(folder.iterdir()):
            if path != aside and path.name not in keep:
                path.rename(aside / path.name)
        self.set_aside.append((folder, aside))

    def _end(self, succeeded):
        for folder, aside in self.set_aside:
            if not succeeded:
                for path in aside.iterdir():
                    target = folder / path.name
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target)
                    elif target.exists() or target.is_symlink():
                        target.unlink()
                    path.rename(target)
            shutil.rmtree(aside, ignore_errors=True)


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
    except BaseException as error:
        set_up._end(succeeded=False)
        if not isinstance(error, BAD_INPUT):
            raise
        for folder in set_up.new_folders:
            shutil.rmtree(folder, ignore_errors=True)
        if debugging():
            raise
        print(f"{prefix}: {error}", file=sys.stderr)
        sys.exit(2)
    set_up._end(succeeded=True)


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
