"""Where the nets run and in what precision: the training device a run asks for, and its autocast dtype."""

from __future__ import annotations

import torch

from qmix_cli.errors import ConfigError, count_of


def resolve_device(name: str) -> torch.device:
    """The device ``name`` asks for (``auto``: CUDA when there is one, else the CPU); one this machine lacks is a
    `ConfigError` saying what to pass instead."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        # torch names more devices (mps, xpu, meta, ...) than the engine has run on: untried, each ended deep in
        # torch (an `aten::` operator missing for the backend, a float64 tensor MPS refuses) after the images
        # were decoded. Said before anything is read or written.
        raise ConfigError(
            f"device {name}: qmix trains and audits on the CPU or on CUDA GPUs, not on {device.type}; "
            "use auto, cpu, cuda or cuda:N"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name} requested but CUDA is not available; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device {name} requested but this machine has {count_of(torch.cuda.device_count(), 'CUDA device')}"
        )
    return device


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 where the GPU computes it natively (no loss scaling needed), else fp16; full precision on the CPU.

    Without ``including_emulation=False`` torch also says yes for GPUs older than Ampere, which only emulate bf16.
    """
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
