"""Where the nets run and in what precision: the training device a run asks for, and its autocast dtype."""

from __future__ import annotations

import torch

from qmix_cli.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """The device ``name`` asks for (``auto``: CUDA when there is one, else the CPU); one this machine lacks is a
    `ConfigError` saying what to pass instead."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name} requested but CUDA is not available; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 where the GPU computes it natively (no loss scaling needed), else fp16; full precision on the CPU.

    Without ``including_emulation=False`` torch also says yes for GPUs older than Ampere, which only emulate bf16.
    """
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
