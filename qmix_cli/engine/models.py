"""Networks: a timm encoder, a linear classifier and a projector head (METHOD.md "Loop")."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from qmix_cli.data.transforms import Normalise
from qmix_cli.errors import ConfigError


class QmixNet(nn.Module):
    """Encoder → pooled features → (classifier logits, ℓ2-normalised projection).

    The projector (2-layer MLP to ``proj_dim``) serves only the contrastive loss; the classifier alone makes the
    predictions.
    """

    def __init__(self, encoder: nn.Module, *, num_classes: int, proj_dim: int = 128) -> None:
        super().__init__()
        self.encoder = encoder
        width = int(encoder.num_features)
        self.classifier = nn.Linear(width, num_classes)
        self.projector = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, proj_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(x))

    def forward_with_projection(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.encoder(x)
        proj = nn.functional.normalize(self.projector(feats).float(), dim=1)
        return self.classifier(feats), proj


def create_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int,
    pretrained: bool = False,
    weights: str | Path | None = None,
    proj_dim: int = 128,
) -> QmixNet:
    """Build a `QmixNet` around any timm architecture.

    Parameters
    ----------
    name
        A timm model name (``timm.list_models()``), e.g. ``resnet18``, ``convnext_tiny``.
    num_classes, in_chans
        From the data. With pretrained weights timm adapts the first convolution to ``in_chans``.
    pretrained
        Download timm's pretrained weights (needs network access).
    weights
        A local weights file (timm/torchvision state dict, ``.pth``/``.safetensors``), loaded by timm with
        ``weights_only=True``; wins over ``pretrained``.
    """
    import timm

    if not timm.is_model(name):
        close = [m for m in timm.list_models(f"*{name}*")][:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ConfigError(f"unknown timm model {name!r}{hint}")
    kwargs: dict = {"num_classes": 0, "in_chans": in_chans}
    if weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            raise ConfigError(f"weights file not found: {weights}")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(weights)})
    elif pretrained:
        kwargs["pretrained"] = True
    try:
        encoder = timm.create_model(name, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:
        what = f"weights from {weights}" if weights else "pretrained weights"
        hint = "" if weights else " (offline? pass --weights FILE with a local copy, or drop --pretrained)"
        raise ConfigError(f"could not load {what} for {name}: {str(e).splitlines()[0]}{hint}") from None
    return QmixNet(encoder, num_classes=num_classes, proj_dim=proj_dim)


def input_normalisation(name: str, *, channels: int) -> Normalise:
    """The mean/std timm's pretrained weights for ``name`` expect (averaged over RGB for 1-channel input,
    matching how timm folds the first convolution's RGB filters into one)."""
    import timm

    cfg = timm.get_pretrained_cfg(name)
    mean, std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if cfg is None else (cfg.mean, cfg.std)
    if channels == 1:
        return Normalise((sum(mean) / len(mean),), (sum(std) / len(std),))
    return Normalise(tuple(mean), tuple(std))
