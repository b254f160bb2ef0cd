"""Checkpoint files written whole: a run killed while saving keeps its previous checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from torch import nn

from pid_sdk.checkpoints import save_safetensors


def write_all_then_rename(writers: dict[Path, Callable[[Path], None]]) -> None:
    """Each writer writes its file under a temporary name beside the target; only when every one has succeeded are
    they renamed into place (renames take microseconds, the writes seconds)."""
    tmps = {path: path.with_name(f".{path.name}.tmp") for path in writers}
    try:
        for path, write in writers.items():
            write(tmps[path])
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)


def safetensors_writer(module: nn.Module) -> Callable[[Path], None]:
    """A writer of the module's state dict as it is now (the tensors are taken at once, written later)."""
    tensors = {k: v.contiguous() for k, v in module.state_dict().items()}
    return lambda path: save_safetensors(tensors, path)
