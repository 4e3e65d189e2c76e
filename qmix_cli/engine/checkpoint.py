"""Checkpoints: written atomically, read with ``weights_only=True`` (tensors and plain containers only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import torch

from qmix_cli.errors import TrainingError
from qmix_cli.io import atomic_path


class _WriteErrors:
    """A binary file for `torch.save` that keeps the `OSError` a write raised: torch reports any failed write as
    an opaque ``RuntimeError`` ("enforce fail ... unexpected pos"), and a full disk should be named as one."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.file.flush()


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save ``state`` so that a crash mid-write leaves the previous checkpoint intact; a write that fails raises
    its `OSError` (a full disk: ``ENOSPC``)."""
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        writer = _WriteErrors(f)
        try:
            torch.save(state, writer)
        except RuntimeError:
            if writer.error is not None:
                raise OSError(writer.error.errno, writer.error.strerror, str(path)) from None
            raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which and why, without a traceback
        raise TrainingError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None


def previous_run_dir(run_dir: Path) -> Path:
    """Where ``qmix train --force`` keeps the run it replaces until the new one has finished."""
    return run_dir.with_name(f"{run_dir.name}.previous")
