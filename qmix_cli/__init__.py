"""qmix: find noisy labels and low-quality images in image datasets with the QMix method.

The Python API mirrors the CLI with the same defaults::

    from qmix_cli import corrupt, train, audit, evaluate, show, apply

Every error a user can act on is a `QmixError` (subclasses in `qmix_cli.errors`), with a one-line message.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from qmix_cli.errors import QmixError

__all__ = ["QmixError", "TrainConfig", "__version__", "apply", "audit", "corrupt", "evaluate", "show", "train"]
_API = ("corrupt", "train", "audit", "evaluate", "show", "apply")


def __getattr__(name: str) -> Any:
    # Imported lazily so that `import qmix_cli` (and `qmix --help`) does not pay for torch.
    if name in _API:
        from qmix_cli import api

        return getattr(api, name)
    if name == "TrainConfig":  # what `train(config=...)` takes
        from qmix_cli.config import TrainConfig

        return TrainConfig
    raise AttributeError(f"module 'qmix_cli' has no attribute {name!r}")


def __dir__() -> list[str]:  # tab completion and help() see the lazy functions too
    return sorted({*globals(), *_API, "TrainConfig"})
