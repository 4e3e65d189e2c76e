"""Networks: a timm encoder, a linear classifier and a projector head (METHOD.md "Loop")."""

from __future__ import annotations

import contextlib
import logging
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qmix_cli.data.transforms import Normalise
from qmix_cli.errors import ConfigError, first_few


class QmixNet(nn.Module):
    """Encoder → pooled features → (classifier logits, ℓ2-normalised projection).

    The projector (2-layer MLP to ``proj_dim``) serves only the contrastive loss; the classifier alone makes the
    predictions.
    """

    def __init__(self, encoder: nn.Module, *, num_classes: int, proj_dim: int = 128) -> None:
        super().__init__()
        self.encoder = encoder
        # The width of what the encoder returns: timm's ``head_hidden_size`` where a net's head widens its pooled
        # features before the classifier (MobileNetV3, GhostNet, EfficientViT, VGG: 1,024 to 4,096 wide against
        # ``num_features`` of 128 to 1,536), else ``num_features``.
        width = int(getattr(encoder, "head_hidden_size", None) or encoder.num_features)
        self.classifier = nn.Linear(width, num_classes)
        self.projector = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, proj_dim))

    def forward(self, x: torch.Tensor, *, projection: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, K); with ``projection``, the pair (logits, ℓ2-normalised projection (B, proj_dim)).

        One entry point for both, so that ``torch.compile(net)`` also compiles the semi-supervised training
        forward, which calls ``net(x, projection=True)``.
        """
        feats = self.encoder(x)
        if not projection:
            return self.classifier(feats)
        proj = nn.functional.normalize(self.projector(feats).float(), dim=1)
        return self.classifier(feats), proj

    def forward_with_stages(self, x: torch.Tensor, *, stages: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, K) and the features the audit probe reads (B, D'): the pooled features (B, D), followed by
        the global-average-pooled output of each of the ``stages - 1`` encoder stages before the last.

        ``stages`` above 1 needs timm's ``forward_intermediates`` (`max_probe_stages`).
        """
        if stages <= 1:
            feats = self.encoder(x)
            return self.classifier(feats), feats
        final, inner = self.encoder.forward_intermediates(x, indices=stages, intermediates_only=False)
        pooled = self.encoder.forward_head(final, pre_logits=True)
        earlier = [_global_pool(t) for t in inner[: stages - 1]]
        return self.classifier(pooled), torch.cat([pooled, *earlier], dim=1)


def _global_pool(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) or (B, L, C) → (B, C); (B, C) is returned as it is."""
    if t.ndim == 4:
        return t.mean(dim=(2, 3))
    return t.mean(dim=1) if t.ndim == 3 else t


def max_probe_stages(net: QmixNet, x: torch.Tensor, *, wanted: int) -> int:
    """``wanted``, capped at the encoder's stage count, if `QmixNet.forward_with_stages` works on the sample
    batch ``x`` (timm's ``forward_intermediates``: most timm CNNs and ViTs); else 1, the pooled features alone."""
    if wanted <= 1 or not hasattr(net.encoder, "forward_intermediates"):
        return 1
    training = net.training
    net.eval()  # a trial forward in train mode would move the batch-norm statistics
    try:
        stages = min(wanted, len(net.encoder.feature_info))
        with torch.no_grad():
            net.forward_with_stages(x, stages=stages)
    except (AttributeError, AssertionError, NotImplementedError, RuntimeError, TypeError, ValueError):
        return 1
    finally:
        net.train(training)
    return stages


def create_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int,
    pretrained: bool = False,
    weights: str | Path | None = None,
    proj_dim: int = 128,
    img_size: int | None = None,
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
    proj_dim
        Width of the projector's output.
    img_size
        The side, in pixels, of the square images the net will read. An architecture built for one input size
        (ViTs, Swin, MaxViT: timm's ``fixed_input_size``) is built for this one instead, its pretrained position
        tables resampled by timm; every net is then tried on one blank image of this size, so that a size it
        cannot read is a `ConfigError` here rather than a shape error in the first batch. None: built as timm
        builds it, untried.

    Raises
    ------
    ConfigError
        An unknown name, weights that cannot be loaded or do not fit, or an ``img_size`` the net cannot read.
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
    default, fixed = _input_size(name)
    if img_size is not None and fixed and img_size != default:
        kwargs["img_size"] = img_size
    rng = torch.random.get_rng_state()  # to build the net as initialised again, should a load leave no record
    try:
        with _recorded_loads() as loads:
            encoder = timm.create_model(name, **kwargs)
    except (OSError, RuntimeError, ValueError, EOFError, AttributeError, TypeError, pickle.UnpicklingError) as e:
        # timm reads a file that is no state dict as one: an empty file ends in an EOFError with no message, a saved
        # list in "'list' object has no attribute 'items'". What the file holds says why.
        problem = _weights_file_problem(weights) if weights is not None else None
        if problem is None and not isinstance(e, OSError | RuntimeError | ValueError):
            raise  # not the file's doing
        what = f"weights from {weights}" if weights else "pretrained weights"
        hint = "" if weights else " (offline? pass --weights FILE with a local copy, or drop --pretrained)"
        if problem is None and "img_size" in kwargs and "size mismatch" in str(e) and _loads_at_default(name, kwargs):
            hint = f" (made for {default} px, which --img-size {default} loads)"  # tables timm does not resample
        raise ConfigError(f"could not load {what} for {name}: {problem or _load_error(e)}{hint}") from None
    if weights is not None:
        # timm loads a local file leniently (keys it does not know are ignored): a file made for another
        # architecture, or for part of this one, would leave the net as initialised, wholly or in part.
        if loads:
            nothing = {k for k, _ in encoder.named_parameters()} <= set(loads[-1].missing_keys)
        else:  # a model's own loader (timm's, e.g. for .npz files) records nothing: did any tensor change?
            with torch.random.fork_rng(devices=[]):
                torch.random.set_rng_state(rng)
                initialised = timm.create_model(name, **{**kwargs, "pretrained": False}).state_dict()
            nothing = all(torch.equal(t, initialised[k]) for k, t in encoder.state_dict().items())
        if nothing:
            problem = _weights_file_problem(weights) or "is it a backbone of that architecture?"
            raise ConfigError(f"no tensor in {weights} fits a {name}: {problem}")
        if loads and (misfit := _misfit(encoder, loads[-1])):
            raise ConfigError(f"{weights} does not fit a {name}: {misfit}; is it a backbone of that architecture?")
    net = QmixNet(encoder, num_classes=num_classes, proj_dim=proj_dim)
    if img_size is not None:
        _check_reads(net, name=name, in_chans=in_chans, img_size=img_size, default=default)
    return net


def _input_size(name: str) -> tuple[int | None, bool]:
    """The side timm builds ``name`` for (its pretrained configuration's input size; None if it has none), and
    whether the net reads that size only (``fixed_input_size``: ViTs, Swin, MaxViT) rather than any size its
    strides leave a pixel of (convolutional nets)."""
    import timm

    try:
        cfg = timm.get_pretrained_cfg(name)
    except (RuntimeError, ValueError):  # an unknown pretrained tag: timm.create_model says so in its own words
        return None, False
    if cfg is None or not cfg.input_size:
        return None, False
    return int(cfg.input_size[-1]), bool(cfg.fixed_input_size)


def _loads_at_default(name: str, kwargs: dict[str, Any]) -> bool:
    """Whether the weights ``kwargs`` name load into ``name`` built at timm's own size: then it is the run's size,
    not the file, that they do not fit."""
    import timm

    try:
        timm.create_model(name, **{k: v for k, v in kwargs.items() if k != "img_size"})
    except (OSError, RuntimeError, ValueError):
        return False
    return True


def _check_reads(net: QmixNet, *, name: str, in_chans: int, img_size: int, default: int | None) -> None:
    """Run ``net``'s encoder once on a blank ``img_size`` image, in eval mode (no running statistics move, no random
    number is drawn), and turn whatever it raises into one line naming the size. Too small an image for a net's
    strides, a side its patches do not divide, attention tables made for one size: each architecture says it in
    its own words, deep in its forward. An encoder that returns anything but one feature vector of the heads' width
    per image (a token sequence) is refused too. On the meta device (a net rebuilt to load saved weights) the run
    only propagates shapes and costs nothing."""
    encoder = net.encoder
    device = next(encoder.parameters()).device
    was_training = encoder.training
    try:
        with torch.no_grad():
            out = encoder.eval()(torch.zeros(1, in_chans, img_size, img_size, device=device))
    except (RuntimeError, AssertionError, ValueError, ZeroDivisionError, IndexError, TypeError) as e:
        why = str(e).splitlines()[0].rstrip(". ") if str(e) else "a size check in its forward failed"
        made = f" (timm builds it for {default} px)" if default else ""
        raise ConfigError(f"{name} cannot read {img_size}-px images: {why}; choose another --img-size{made}") from None
    finally:
        encoder.train(was_training)
    if tuple(out.shape) != (1, net.classifier.in_features):
        raise ConfigError(
            f"{name} returns features of shape {tuple(out.shape[1:])} per image, not one vector of "
            f"{net.classifier.in_features}: qmix needs an image classification backbone"
        )


class _UnexpectedKeys(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Unexpected keys")


@contextlib.contextmanager
def _recorded_loads() -> Iterator[list[Any]]:
    """What every ``load_state_dict`` made within returns (missing and unexpected keys): how timm's loading of a
    weights file went, after its own renaming and dropping of keys for the architecture.

    ``nn.Module.load_state_dict`` is wrapped for the duration, as timm gives no other view of it; the call is made
    once, from the thread that builds the nets. timm's warning listing the unexpected keys (one line of thousands of
    characters) is held back meanwhile: `_misfit` says what matters of it.
    """
    results: list[Any] = []
    original = nn.Module.load_state_dict

    def recorded(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        result = original(module, *args, **kwargs)
        results.append(result)
        return result

    logger, held_back = logging.getLogger("timm.models._builder"), _UnexpectedKeys()
    nn.Module.load_state_dict = recorded  # type: ignore[method-assign]
    logger.addFilter(held_back)
    try:
        yield results
    finally:
        nn.Module.load_state_dict = original  # type: ignore[method-assign]
        logger.removeFilter(held_back)


# Suffixes timm reads with readers of their own (safetensors; numpy archives of some ViTs): their errors stand.
_NOT_PICKLED = (".safetensors", ".npz")


def _weights_file_problem(path: Path) -> str | None:
    """What makes the file ``path`` no backbone's weights, found by reading it as the safe loader does: empty or cut
    short, a qmix run's own file, Python objects besides tensors, or no mapping of tensor names to tensors. None where
    it reads as one (the refusal then has another cause). Read only once a load has failed."""
    if path.stat().st_size == 0:
        return "the file is empty (an interrupted download?)"
    if path.suffix.lower() in _NOT_PICKLED:
        return None
    try:
        held = torch.load(path, map_location="cpu", weights_only=True)
    except EOFError:
        return "the file is cut short"
    except pickle.UnpicklingError:
        return (
            "it holds Python objects besides tensors, which qmix does not unpickle (a file can run code so), or is "
            "no torch file; save the state dict alone, torch.save(net.state_dict(), FILE)"
        )
    except (OSError, RuntimeError, ValueError):
        return "the file is cut short or damaged, or no torch file"
    if isinstance(held, dict) and "nets" in held and ({"meta", "config"} & held.keys()):
        return (
            "it is a qmix run's own file (model.pt or a checkpoint, two nets and more), not a backbone's weights; "
            "--weights takes a state dict of tensor names to tensors"
        )
    inner = next((held[k] for k in ("state_dict", "model") if isinstance(held, dict) and k in held), held)
    if not isinstance(inner, dict):
        kind = type(inner).__name__
        article = "an" if kind[0] in "aeiouAEIOU" else "a"
        return f"it holds {article} {kind}, not a state dict of tensor names to tensors"
    if not any(isinstance(v, torch.Tensor) for v in inner.values()):
        return "it holds no tensors"
    return None


def _load_error(error: BaseException) -> str:
    """PyTorch's state-dict error (a line per kind, each with every key) as one line: how many tensors of another
    shape, missing or unexpected, naming the first; any other error's first line."""
    text = str(error)
    shapes = re.findall(r"size mismatch for ([^:]+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from "
                        r"checkpoint, the shape in current model is torch\.Size\((\[[^\]]*\])\)", text)  # fmt: skip
    parts = []
    if shapes:
        key, theirs, ours = shapes[0]
        parts.append(f"{len(shapes)} tensor(s) of another shape (first: {key}, {theirs} in the file, {ours} here)")
    for kind in ("Missing", "Unexpected"):
        found = re.search(rf"{kind} key\(s\) in state_dict: (.*)", text)
        if found:
            keys = [k.strip().strip('"') for k in found[1].rstrip(". ").split(",")]
            parts.append(f"{len(keys)} {kind.lower()} (first: {keys[0]})")
    return "; ".join(parts) if parts else text.splitlines()[0]


def _misfit(encoder: nn.Module, loaded: Any) -> str | None:
    """What of a weights file does not fit ``encoder``, from what its loading returned (``loaded``: missing and
    unexpected keys, after timm's renaming and dropping for the architecture), or None: weight tensors of the net the
    file lacks, which would stay as initialised, and tensors of the file for a part the net has (another depth of the
    same family: a resnet34 file fits every tensor of a resnet18 and leaves its deeper blocks over). Tensors for a
    part the net has not (an auxiliary head, a pre-logits layer the net was built without) are no misfit."""
    parameters = {k for k, _ in encoder.named_parameters()}
    parts = {k for k, _ in encoder.named_children()}
    missing = [k for k in loaded.missing_keys if k in parameters]
    unexpected = [k for k in loaded.unexpected_keys if k.split(".", 1)[0] in parts]
    found = []
    if unexpected:
        found.append(f"{len(unexpected)} of its tensors have no place in it ({first_few(unexpected, show=3)})")
    if missing:
        found.append(f"{len(missing)} of the net's weight tensors are not in it ({first_few(missing, show=3)})")
    return "; ".join(found) or None


def model_from_state(
    state: dict[str, torch.Tensor],
    *,
    name: str,
    num_classes: int,
    in_chans: int,
    proj_dim: int = 128,
    img_size: int | None = None,
) -> QmixNet:
    """A trained `QmixNet` rebuilt from its saved ``state`` (a ``state_dict``), on the CPU.

    The net is first built on the meta device, so no random initialisation is computed only to be overwritten
    (a fifth of a GPU audit's wall time at 224 px for resnet18, more for larger nets); the saved tensors then
    become its parameters. An architecture with tensors outside its state dict (non-persistent buffers, which
    only its constructor can make) is built the ordinary way instead. ``img_size`` is the side the net trained at,
    which an architecture made for one input size is rebuilt for (`create_model`).
    """
    build = dict(num_classes=num_classes, in_chans=in_chans, proj_dim=proj_dim, img_size=img_size)
    with torch.device("meta"):
        net = create_model(name, **build)
    saved_keys = net.state_dict().keys()
    if all(key in saved_keys for key, _ in net.named_buffers()):
        # Standard layout, as loading into a freshly built net gives (a CUDA run saves channels-last weights).
        # (clone, not .contiguous(): that keeps the ambiguous strides of a one-channel filter bank.)
        standard = {key: value.clone(memory_format=torch.contiguous_format) for key, value in state.items()}
        net.load_state_dict(standard, assign=True)
        return net
    net = create_model(name, **build)
    net.load_state_dict(state)
    return net


def channels_last_on(device: torch.device, *, compiled: bool = False) -> bool:
    """Whether nets and their inputs use channels-last memory on ``device``.

    On CUDA, where cuDNN's convolutions (tensor cores under mixed precision) run fastest that way, and on the CPU,
    where oneDNN's convolutions, pooling and batch norm do too: 1.3x for the benchmark's ``test_resnet``, 1.7x for
    an efficientnet_b0, level for a resnet18 at 32-64 px (torch 2.14; `benchmarks/bench_memory_format.py`,
    docs/decisions.md, "Seventeenth round"). Not for ``compiled`` nets, whose layouts Inductor chooses itself and
    whose backward failed Inductor's stride checks with channels-last weights (torch 2.11, H200;
    docs/decisions.md, "Thirteenth round").
    """
    return device.type in ("cuda", "cpu") and not compiled


def place_model(net: QmixNet, device: torch.device, *, compiled: bool = False) -> QmixNet:
    """``net`` moved to ``device`` in the memory format its inputs will have there (`channels_last_on`)."""
    net = net.to(device)
    return net.to(memory_format=torch.channels_last) if channels_last_on(device, compiled=compiled) else net


def place_input(x: torch.Tensor, *, compiled: bool = False) -> torch.Tensor:
    """A batch (B, C, H, W) in the memory format the nets on its device take (`channels_last_on`)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last_on(x.device, compiled=compiled) else x


def input_normalisation(name: str, *, channels: int) -> Normalise:
    """The mean/std timm's pretrained weights for ``name`` expect (averaged over RGB for 1-channel input,
    matching how timm folds the first convolution's RGB filters into one)."""
    import timm

    cfg = timm.get_pretrained_cfg(name)
    mean, std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if cfg is None else (cfg.mean, cfg.std)
    if channels == 1:
        return Normalise((sum(mean) / len(mean),), (sum(std) / len(std),))
    return Normalise(tuple(mean), tuple(std))


def trained_models(states: list[dict[str, torch.Tensor]], *, device: torch.device, **build: Any) -> list[QmixNet]:
    """Saved nets (``state_dict`` s) rebuilt with `model_from_state` (``build``: its keyword arguments), placed on
    ``device`` and in eval mode: what the audit and the trainer's warm-up snapshot score with."""
    return [place_model(model_from_state(sd, **build), device).eval() for sd in states]
