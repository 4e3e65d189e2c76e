"""The mixed-precision paths on the CPU: a run trained and audited under bf16 autocast, as a CUDA run with ``--amp``
computes on Ampere and later, so that CI (which has no GPU: `tests/engine/test_cuda.py` is skipped there) still catches
a read-out, probe, neighbour vote or separation that breaks on half-precision features or losses; and a run under fp16
with loss scaling, as on the GPUs before Ampere (a T4, a V100) that many users train on, killed and resumed.

Only the choice of dtype is forced (`amp_dtype` says full precision on the CPU); every step then runs under
``torch.autocast`` exactly as it does on a GPU, and fp16 with the training device's `torch.amp.GradScaler`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import qmix_cli.engine.trainer as trainer
import qmix_cli.reporting.score as score
from qmix_cli.api import audit, evaluate, train
from qmix_cli.engine.checkpoint import load_checkpoint
from tests.conftest import TINY_TRAIN
from tests.engine.helpers import assert_same_metrics

pytestmark = pytest.mark.slow


def _bf16(device: torch.device, enabled: bool) -> torch.dtype | None:
    return torch.bfloat16 if enabled else None


def test_a_run_trained_and_audited_under_bf16_autocast_finds_the_planted_noise(
    noisy_digits: Path, qmix_cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dtypes: list[torch.dtype | None] = []
    real = torch.autocast

    class Watched(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            dtypes.append(kwargs.get("dtype"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(trainer, "amp_dtype", _bf16)
    monkeypatch.setattr(score, "amp_dtype", _bf16)
    monkeypatch.setattr(torch, "autocast", Watched)
    run = tmp_path / "run"
    train(noisy_digits, run, method="qmix", epochs=4, warmup_epochs=2, cache_dir=str(qmix_cache_dir), **TINY_TRAIN)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    state = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    floats = [t for t in state["nets"][0].values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float32 for t in floats)  # autocast computes in bf16, keeps fp32 weights

    # The training set: read-outs taken under autocast at the end of training, separated as usual.
    result = evaluate(audit(noisy_digits, run=run, quiet=True, cache_dir=qmix_cache_dir), truth=noisy_digits)
    assert result["detection"]["f1"] > 0.7 and result["macro_f1"] > 0.6  # chance: about 0.35 and 0.33
    # Images the run never saw: every forward pass of the audit under autocast.
    dtypes.clear()
    clean = audit("digits", run=run, quiet=True, cache_dir=qmix_cache_dir)
    assert set(dtypes) == {torch.bfloat16}
    assert (clean["category"] == "clean").mean() > 0.9


def _fp16(device: torch.device, enabled: bool) -> torch.dtype | None:
    return torch.float16 if enabled else None


def test_a_killed_fp16_run_resumes_with_its_loss_scale_to_the_same_result(
    noisy_digits: Path, qmix_cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trainer, "amp_dtype", _fp16)
    # fp16 is emulated on the CPU (about 5 times slower than fp32): 16 px keeps the test short.
    opts = dict(method="qmix", epochs=2, warmup_epochs=1, cache_dir=str(qmix_cache_dir), quiet=True)
    opts |= {**TINY_TRAIN, "img_size": 16}
    full = train(noisy_digits, tmp_path / "full", **opts)

    def kill_after_first(row: dict) -> None:
        if row["epoch"] == 1:
            raise KeyboardInterrupt  # killed once the warm-up epoch was checkpointed

    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train(noisy_digits, killed, on_epoch_end=kill_after_first, **opts)
    # The loss scale is kept with the nets (a scaler that had switched itself off would save nothing).
    scale = load_checkpoint(killed / "checkpoints" / "last.pt")["scaler"]["scale"]
    assert 0 < scale < float("inf")
    # The semi-supervised epoch (mixup, its losses) runs under fp16 after the resume, as in the unbroken run.
    resumed = train(noisy_digits, killed, resume=True, cache_dir=str(qmix_cache_dir), quiet=True)
    assert_same_metrics(resumed.metrics, full.metrics)
    assert resumed.metrics[-1]["phase"] == "train" and resumed.metrics[-1]["auc_clean"] > 0.65  # chance: 0.5
