"""qmix: find noisy labels and low-quality images in image datasets with the QMix method.

The Python API mirrors the CLI with the same defaults::

    from qmix_cli import corrupt, train, audit, evaluate, show, apply
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "apply", "audit", "corrupt", "evaluate", "show", "train"]


def __getattr__(name: str) -> Any:
    # Imported lazily so that `import qmix_cli` (and `qmix --help`) does not pay for torch.
    if name in {"corrupt", "train", "audit", "evaluate", "show", "apply"}:
        from qmix_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'qmix_cli' has no attribute {name!r}")
