"""Checkpoints are read with ``weights_only=True``: a file that would run code when unpickled is refused unrun."""

from __future__ import annotations

import errno
import pickletools
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from qmix_cli.api import audit, train
from qmix_cli.engine.checkpoint import load_checkpoint, save_checkpoint
from qmix_cli.errors import TrainingError


def test_load_checkpoint_refuses_pickled_code_without_running_it(tmp_path, write_evil_checkpoint):
    marker = tmp_path / "pwned"
    path = write_evil_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(TrainingError, match=r"cannot read checkpoint .*evil\.pt"):
        load_checkpoint(path)
    assert not marker.exists()
    # The same kind of content without the payload is read as it was saved.
    save_checkpoint(tmp_path / "plain.pt", {"epoch": 1, "nets": [{"w": torch.ones(2)}]})
    loaded = load_checkpoint(tmp_path / "plain.pt")
    assert loaded["epoch"] == 1 and torch.equal(loaded["nets"][0]["w"], torch.ones(2))
    # And the refused file is a real threat: its pickle would call Path.touch on the marker when unpickled (read from
    # the archive's opcodes: the project never unpickles a checkpoint without weights_only, not even here).
    with zipfile.ZipFile(path) as archive:
        pickled = next(archive.read(name) for name in archive.namelist() if name.endswith("data.pkl"))
    args = [arg for _, arg, _ in pickletools.genops(pickled) if isinstance(arg, str)]
    assert "pathlib Path" in args and "touch" in args and marker.name in args


@pytest.fixture
def run_copy(qmix_run, tmp_path) -> Path:
    """A copy of the shared trained run that a test may damage."""
    return Path(shutil.copytree(qmix_run.run_dir, tmp_path / "run"))


def test_resume_refuses_an_evil_checkpoint_and_leaves_the_run_alone(
    run_copy, noisy_digits, tmp_path, qmix_cache_dir, hash_tree, write_evil_checkpoint
):
    marker = tmp_path / "pwned"
    write_evil_checkpoint(run_copy / "checkpoints" / "last.pt", marker)
    before = hash_tree(run_copy)
    with pytest.raises(TrainingError, match=r"cannot read checkpoint .*last\.pt"):
        train(noisy_digits, run_copy, resume=True, epochs=11, cache_dir=str(qmix_cache_dir))
    assert not marker.exists()
    assert hash_tree(run_copy) == before  # refused before the finished run lost its model.pt


def test_audit_refuses_an_evil_model_file(run_copy, noisy_digits, tmp_path, write_evil_checkpoint):
    marker = tmp_path / "pwned"
    write_evil_checkpoint(run_copy / "model.pt", marker)
    with pytest.raises(TrainingError, match=r"cannot read checkpoint .*model\.pt"):
        audit(noisy_digits, run=run_copy)
    assert not marker.exists()


def test_a_full_disk_while_saving_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, disk_full_at_checkpoint):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.zeros(1000)})
    disk_full_at_checkpoint(1)
    with pytest.raises(OSError) as err:  # not torch's "enforce fail ... unexpected pos" RuntimeError
        save_checkpoint(path, {"epoch": 2, "w": torch.ones(1000)})
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # the partial file is gone
