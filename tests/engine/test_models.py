"""The timm model factory: any timm name, local weights files, clear errors."""

from __future__ import annotations

import logging

import pytest
import timm
import torch

from qmix_cli.engine.models import (
    QmixNet,
    channels_last_on,
    create_model,
    max_probe_stages,
    model_from_state,
    place_input,
    place_model,
)
from qmix_cli.errors import ConfigError


def test_local_weights_file_is_loaded_into_the_encoder(tmp_path):
    # A backbone saved by timm (as a user would download it once, online) is the offline --pretrained.
    torch.manual_seed(123)
    source = timm.create_model("test_resnet", num_classes=0, in_chans=3)
    path = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(0)
    net = create_model("test_resnet", num_classes=5, in_chans=3, weights=path)
    fresh = create_model("test_resnet", num_classes=5, in_chans=3)
    loaded, expected = net.encoder.state_dict(), source.state_dict()
    assert loaded.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(loaded[key], expected[key])
    assert any(not torch.equal(fresh.encoder.state_dict()[k], expected[k]) for k in expected)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_rgb_weights_are_adapted_to_grayscale_input(tmp_path):
    source = timm.create_model("test_resnet", num_classes=0, in_chans=3)
    path = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), path)
    net = create_model("test_resnet", num_classes=3, in_chans=1, weights=path)
    # timm folds the first convolution's RGB filters into one by summing them, so that a gray image (R = G = B)
    # gives the pretrained response; every other tensor is the file's own.
    first = source.pretrained_cfg["first_conv"] + ".weight"
    loaded, expected = net.encoder.state_dict(), source.state_dict()
    assert loaded.keys() == expected.keys()
    torch.testing.assert_close(loaded[first], expected[first].sum(dim=1, keepdim=True))
    for key in expected.keys() - {first}:
        torch.testing.assert_close(loaded[key], expected[key])
    gray = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.encoder.eval()(gray), source.eval()(gray.expand(-1, 3, -1, -1)))
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 3)


def test_projection_is_unit_length():
    net = create_model("test_resnet", num_classes=4, in_chans=1, proj_dim=16)
    logits, proj = net(torch.randn(3, 1, 32, 32), projection=True)
    assert logits.shape == (3, 4) and proj.shape == (3, 16)
    torch.testing.assert_close(proj.norm(dim=1), torch.ones(3))


# A ViT timm makes for 224 px only (``fixed_input_size``); the smallest such net timm names.
FIXED = "vit_tiny_patch16_224"


def test_a_net_made_for_one_input_size_is_built_for_the_run_s_size():
    # A ViT made for 224 px, built as timm builds it, fails its patch embedding's size check in the first batch.
    with torch.no_grad(), pytest.raises(AssertionError):
        timm.create_model(FIXED, num_classes=0, in_chans=1)(torch.zeros(1, 1, 32, 32))
    net = create_model(FIXED, num_classes=4, in_chans=1, img_size=32)
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    assert net.encoder.pos_embed.shape[1] == net.encoder.num_prefix_tokens + (32 // 16) ** 2


def test_weights_made_at_another_size_load_into_a_net_of_the_run_s_size(tmp_path):
    # A ViT file saved at the size it was trained at (timm's position table for 224 px) is resampled by timm to
    # the run's grid; every other tensor is the file's own.
    torch.manual_seed(5)
    source = timm.create_model(FIXED, num_classes=0, in_chans=3)
    path = tmp_path / "vit.pth"
    torch.save(source.state_dict(), path)
    net = create_model(FIXED, num_classes=3, in_chans=3, weights=path, img_size=48)
    loaded, expected = net.encoder.state_dict(), source.state_dict()
    assert loaded["pos_embed"].shape[1] == net.encoder.num_prefix_tokens + 3 * 3
    for key in expected.keys() - {"pos_embed"}:
        torch.testing.assert_close(loaded[key], expected[key])
    assert net(torch.randn(2, 3, 48, 48)).shape == (2, 3)


def test_weights_timm_cannot_resample_to_the_run_s_size_name_the_size_they_load_at(tmp_path):
    # LeViT's attention biases are tables of the 224-px grid, which timm does not resample.
    path = tmp_path / "levit.pth"
    torch.save(timm.create_model("levit_128s", num_classes=0).state_dict(), path)
    with pytest.raises(ConfigError, match=r"another shape .* \(made for 224 px, which --img-size 224 loads\)"):
        create_model("levit_128s", num_classes=2, in_chans=3, weights=path, img_size=64)


def test_weights_of_another_architecture_are_not_blamed_on_the_size(tmp_path):
    # A ViT-S file does not fit a ViT-Ti at any size: no hint that 224 px would load it.
    path = tmp_path / "vit_small.pth"
    torch.save(timm.create_model("vit_small_patch16_224", num_classes=0).state_dict(), path)
    with pytest.raises(ConfigError, match="another shape") as refused:
        create_model(FIXED, num_classes=2, in_chans=3, weights=path, img_size=32)
    assert "px" not in str(refused.value)


def test_encoders_that_are_no_classification_backbone_are_refused_with_the_size_check():
    # Built on the meta device: shapes only. A token sequence per image, and a size check that says nothing.
    with torch.device("meta"):
        with pytest.raises(ConfigError, match=r"returns features of shape .* not one vector of 1024"):
            create_model("qwen3_vit_88m_enc", num_classes=2, in_chans=3, img_size=32)
        with pytest.raises(ConfigError, match="cannot read 224-px images: a size check in its forward failed"):
            create_model("halonet_h1", num_classes=2, in_chans=3, img_size=224)


def test_an_unknown_pretrained_tag_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"resnet18\.nosuchtag: Invalid pretrained tag"):
        create_model("resnet18.nosuchtag", num_classes=2, in_chans=3, img_size=32)


def test_a_size_the_net_cannot_read_is_refused_when_it_is_built():
    # 40 px is not a whole number of test_vit's 16-px patches; 8 px leaves inception_v3's 3x3 kernels no pixel.
    with pytest.raises(ConfigError, match=r"test_vit cannot read 40-px images: .*choose another --img-size"):
        create_model("test_vit", num_classes=2, in_chans=1, img_size=40)
    with pytest.raises(ConfigError, match=r"inception_v3 cannot read 8-px images: .*timm builds it for 299 px"):
        create_model("inception_v3", num_classes=2, in_chans=3, img_size=8)


def test_the_size_check_leaves_the_net_as_it_was_built():
    # A convolutional net reads any size: built with or without the size, it is the same net, and the check's run
    # moved no running statistic and drew no random number (the runs of earlier releases are reproduced).
    torch.manual_seed(0)
    checked = create_model("test_resnet", num_classes=3, in_chans=1, img_size=32)
    after = torch.randn(1)
    torch.manual_seed(0)
    plain = create_model("test_resnet", num_classes=3, in_chans=1)
    assert torch.equal(torch.randn(1), after)
    assert checked.training
    assert checked.state_dict().keys() == plain.state_dict().keys()
    assert all(torch.equal(t, plain.state_dict()[k]) for k, t in checked.state_dict().items())


def test_a_net_of_a_fixed_size_is_rebuilt_at_the_size_it_was_saved_at():
    net = create_model(FIXED, num_classes=3, in_chans=1, proj_dim=8, img_size=32).eval()
    x = torch.randn(2, 1, 32, 32)
    rebuilt = model_from_state(net.state_dict(), name=FIXED, num_classes=3, in_chans=1, proj_dim=8, img_size=32)
    assert torch.equal(rebuilt.eval()(x), net(x))


def test_a_net_whose_head_widens_its_pooled_features_gets_heads_of_that_width():
    # MobileNetV3's head runs a 1x1 convolution after pooling (576 -> 1024 features here): a classifier sized by
    # ``num_features`` failed every forward.
    net = create_model("mobilenetv3_small_050", num_classes=3, in_chans=1, proj_dim=8, img_size=32).eval()
    x = torch.randn(2, 1, 32, 32)
    logits, proj = net(x, projection=True)
    assert logits.shape == (2, 3) and proj.shape == (2, 8)
    stages = max_probe_stages(net, x, wanted=2)
    stage_logits, features = net.forward_with_stages(x, stages=stages)
    torch.testing.assert_close(stage_logits, logits)
    assert features.shape[1] >= net.classifier.in_features


def test_unknown_model_and_missing_weights_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown timm model 'resnet_nope'"):
        create_model("resnet_nope", num_classes=2, in_chans=3)
    with pytest.raises(ConfigError, match="weights file not found"):
        create_model("test_resnet", num_classes=2, in_chans=3, weights=tmp_path / "missing.pth")
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="could not load weights"):
        create_model("test_resnet", num_classes=2, in_chans=3, weights=bad)
    # A file timm reads but whose tensors fit no layer (another architecture's) would train from scratch unseen.
    other = tmp_path / "other.pth"
    torch.save({"foo": torch.zeros(3)}, other)
    with pytest.raises(ConfigError, match=r"no tensor in .*other\.pth fits a test_resnet"):
        create_model("test_resnet", num_classes=2, in_chans=3, weights=other)


def test_a_weights_file_that_is_no_state_dict_says_what_it_holds(tmp_path):
    # timm reads any torch file as a state dict: an empty one ended in a bare EOFError, a list in "'list' object
    # has no attribute 'items'", and a qmix run's own model.pt was "no tensor fits" (the same architecture).
    empty = tmp_path / "empty.pth"
    empty.touch()
    listed, qmix_run = tmp_path / "list.pth", tmp_path / "model.pt"
    torch.save([torch.zeros(2)], listed)
    torch.save({"nets": [create_model("test_resnet", num_classes=2, in_chans=3).state_dict()], "meta": {}}, qmix_run)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(qmix_run.read_bytes()[:2000])
    for path, said in [
        (empty, "could not load weights from .*empty.pth .*: the file is empty"),
        (listed, "could not load weights from .*list.pth .*: it holds a list, not a state dict"),
        (qmix_run, "no tensor in .*model.pt fits a test_resnet: it is a qmix run's own file"),
        (cut, "could not load weights from .*cut.pth .*: the file is cut short or damaged"),
    ]:
        with pytest.raises(ConfigError, match=said):
            create_model("test_resnet", num_classes=2, in_chans=3, weights=path)


def test_a_load_that_leaves_no_record_is_judged_by_the_tensors_it_changed(tmp_path, monkeypatch):
    # A model's own loader (timm's for .npz files) calls no load_state_dict: the net is compared with itself as
    # initialised from the same random state instead.
    import contextlib

    from qmix_cli.engine import models

    monkeypatch.setattr(models, "_recorded_loads", lambda: contextlib.nullcontext([]))
    torch.save({"foo": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match=r"no tensor in .*other\.pth fits a test_resnet"):
        create_model("test_resnet", num_classes=2, in_chans=3, weights=tmp_path / "other.pth")
    fits = timm.create_model("test_resnet", num_classes=0, in_chans=3).state_dict()
    torch.save(fits, tmp_path / "fits.pth")
    _assert_encoder_holds(create_model("test_resnet", num_classes=2, in_chans=3, weights=tmp_path / "fits.pth"), fits)


def _assert_encoder_holds(net: torch.nn.Module, source: dict[str, torch.Tensor]) -> None:
    """Every tensor of ``source`` but the classifier's (``fc.``) is the net's encoder's of that name."""
    encoder = net.encoder.state_dict()
    kept = [k for k in source if not k.startswith("fc.")]
    assert kept and all(k in encoder for k in kept)
    for key in kept:
        torch.testing.assert_close(encoder[key], source[key], rtol=0, atol=0, msg=key)


def test_a_weights_file_that_fits_the_net_only_in_part_is_refused_saying_how(tmp_path, caplog):
    load_state_dict = torch.nn.Module.load_state_dict
    source = timm.create_model("test_resnet", num_classes=10, in_chans=3).state_dict()  # with its classifier
    torch.save(source, tmp_path / "with_head.pth")
    net = create_model("test_resnet", num_classes=2, in_chans=3, weights=tmp_path / "with_head.pth")
    _assert_encoder_holds(net, source)  # the head is dropped: the net's own has two classes
    assert net.classifier.weight.shape[0] == 2
    # Tensors for a part this net is built without (torchvision's inception keeps an auxiliary head): no misfit.
    torch.save({**source, "AuxLogits.fc.weight": torch.zeros(10, 8)}, tmp_path / "aux.pth")
    _assert_encoder_holds(create_model("test_resnet", num_classes=2, in_chans=3, weights=tmp_path / "aux.pth"), source)
    # A deeper net of the same family: every tensor of this one fits, and its extra blocks are left over.
    deeper = {**source, "layer1.9.conv1.weight": torch.zeros(8, 8, 3, 3), "layer1.9.bn1.weight": torch.ones(8)}
    torch.save(deeper, tmp_path / "deeper.pth")
    with pytest.raises(ConfigError, match=r"deeper\.pth does not fit a test_resnet: 2 of its tensors have no place"):
        create_model("test_resnet", num_classes=2, in_chans=3, weights=tmp_path / "deeper.pth")
    assert not [r for r in caplog.records if "Unexpected keys" in r.getMessage()]  # said once, by us
    shallower = {k: v for k, v in source.items() if not k.startswith("layer2.")}
    torch.save(shallower, tmp_path / "shallower.pth")
    with pytest.raises(ConfigError, match=r"of the net's weight tensors are not in it \(layer2\."):
        create_model("test_resnet", num_classes=2, in_chans=3, weights=tmp_path / "shallower.pth")
    wrong_shape = {**source, "conv1.0.weight": torch.zeros(5, 3, 3, 3)}
    torch.save(wrong_shape, tmp_path / "wrong_shape.pth")
    expected = tuple(source["conv1.0.weight"].shape)
    with pytest.raises(ConfigError) as error:
        create_model("test_resnet", num_classes=2, in_chans=3, weights=tmp_path / "wrong_shape.pth")
    assert str(error.value) == (
        f"could not load weights from {tmp_path / 'wrong_shape.pth'} for test_resnet: 1 tensor(s) of another shape "
        f"(first: conv1.0.weight, [5, 3, 3, 3] in the file, {list(expected)} here)"
    )
    # What loading a file wraps and holds back is given back, a failed load included.
    assert torch.nn.Module.load_state_dict is load_state_dict
    assert not logging.getLogger("timm.models._builder").filters


def test_stage_features_start_with_the_pooled_features_and_add_the_stage_before():
    torch.manual_seed(0)
    net = create_model("test_resnet", num_classes=4, in_chans=1).eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        pooled = net.encoder(x)
        logits1, feats1 = net.forward_with_stages(x, stages=1)
        logits2, feats2 = net.forward_with_stages(x, stages=2)
        inner = net.encoder.forward_intermediates(x, intermediates_only=True)
    torch.testing.assert_close(feats1, pooled)
    torch.testing.assert_close(logits1, net.classifier(pooled))
    torch.testing.assert_close(logits2, logits1)
    width = net.encoder.feature_info[-2]["num_chs"]
    assert feats2.shape == (3, pooled.shape[1] + width)
    torch.testing.assert_close(feats2[:, : pooled.shape[1]], pooled)
    torch.testing.assert_close(feats2[:, pooled.shape[1] :], inner[-2].mean(dim=(2, 3)))


class _PlainEncoder(torch.nn.Module):
    """An encoder without timm's intermediate-stage API, as a user's own module would be."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_probe_stages_fall_back_to_the_pooled_features_and_leave_the_net_as_it_was():
    net = create_model("test_resnet", num_classes=4, in_chans=1).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert max_probe_stages(net, torch.randn(2, 1, 32, 32), wanted=2) == 2
    assert max_probe_stages(net, torch.randn(2, 1, 32, 32), wanted=99) == len(net.encoder.feature_info)
    assert max_probe_stages(net, torch.randn(2, 1, 32, 32), wanted=1) == 1
    assert net.training  # restored ...
    for key, value in net.state_dict().items():  # ... and the trial forwards moved no batch-norm statistic
        torch.testing.assert_close(value, before[key], msg=key)
    plain = QmixNet(_PlainEncoder(), num_classes=3)
    assert max_probe_stages(plain, torch.randn(2, 1, 4, 4), wanted=2) == 1
    # One that has the method but fails with it (here: a wrong input) falls back too.
    assert max_probe_stages(net, torch.randn(2, 3, 32, 32), wanted=2) == 1


def test_place_model_lays_nets_and_inputs_out_channels_last_unless_compiled():
    # Channels-last on both devices (measured faster on the CPU with torch 2.14 too); compiled nets keep the default
    # layout: Inductor chooses its own (and failed with channels-last weights).
    assert channels_last_on(torch.device("cuda")) and channels_last_on(torch.device("cpu"))
    assert not channels_last_on(torch.device("cuda"), compiled=True)
    assert not channels_last_on(torch.device("cpu"), compiled=True)
    torch.manual_seed(0)
    net = create_model("test_resnet", num_classes=3, in_chans=1).eval()
    x = torch.randn(2, 1, 32, 32)
    before = net(x)
    placed = place_model(net, torch.device("cpu"))
    # (a conv with several input channels: with one, both layouts are the same strides)
    conv = next(m for m in placed.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    xl = place_input(x)
    assert torch.equal(xl, x)
    rgb = place_input(torch.randn(2, 3, 8, 8))
    assert rgb.is_contiguous(memory_format=torch.channels_last) and not rgb.is_contiguous()
    # Another layout, other kernels: the same function up to float rounding.
    torch.testing.assert_close(placed(xl), before, rtol=1e-4, atol=1e-5)
    assert place_input(x, compiled=True) is x


def test_model_from_state_rebuilds_the_saved_net_without_initialising_it(monkeypatch):
    torch.manual_seed(0)
    net = create_model("test_resnet", num_classes=3, in_chans=1, proj_dim=8).eval()
    x = torch.randn(2, 1, 32, 32)
    # A CUDA run saves channels-last weights; the rebuilt net gets standard-layout ones, as before.
    saved = {k: v.to(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in net.state_dict().items()}
    calls = []
    monkeypatch.setattr(torch.nn.init, "kaiming_normal_", lambda *a, **k: calls.append(a) or a[0])
    rebuilt = model_from_state(saved, name="test_resnet", num_classes=3, in_chans=1, proj_dim=8).eval()
    assert not any(t.is_meta for t in [*rebuilt.parameters(), *rebuilt.buffers()])
    assert all(p.is_contiguous() for p in rebuilt.parameters())
    assert torch.equal(rebuilt(x), net(x))
    assert all(t.is_meta for t, *_ in calls)  # whatever init ran, ran on meta tensors: nothing was computed


def test_model_from_state_builds_nets_with_unsaved_buffers_the_ordinary_way(monkeypatch):
    from qmix_cli.engine import models

    plain = models.create_model

    def with_unsaved_buffer(*args, **kwargs):
        net = plain(*args, **kwargs)
        net.register_buffer("table", torch.arange(4.0), persistent=False)  # only the constructor makes it
        return net

    monkeypatch.setattr(models, "create_model", with_unsaved_buffer)
    state = with_unsaved_buffer("test_resnet", num_classes=3, in_chans=1).state_dict()
    rebuilt = model_from_state(state, name="test_resnet", num_classes=3, in_chans=1)
    assert torch.equal(rebuilt.table, torch.arange(4.0))
    assert not any(t.is_meta for t in rebuilt.parameters())
