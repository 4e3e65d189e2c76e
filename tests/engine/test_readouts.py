"""Training read-outs kept by pixel key (`qmix_cli.engine.readouts`)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from qmix_cli.engine import readouts
from qmix_cli.engine.probe import image_keys
from qmix_cli.engine.readouts import TrainingReadouts, pixel_digests


def _outputs(n: int, *, nets: int = 2, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(classes), size=(nets, n)).astype(np.float32)
    scored = rng.dirichlet(np.ones(classes), size=(nets, n)).astype(np.float32)
    return probs, scored


def test_each_key_is_looked_up_to_its_own_read_outs():
    keys = np.array([50, -7, 3, 2**62, 11], dtype=np.int64)
    probs, scored = _outputs(len(keys))
    kept = TrainingReadouts.from_training(keys, probs, scored, sampled=keys)
    found = kept.lookup(np.array([3, 99, 2**62, -7, -8, 50, 11], dtype=np.int64))
    assert found[[1, 4]].tolist() == [-1, -1]  # keys the run never saw
    for asked, row in zip([3, 2**62, -7, 50, 11], found[[0, 2, 3, 5, 6]], strict=True):
        i = int(np.flatnonzero(keys == asked)[0])
        np.testing.assert_array_equal(kept.probs[:, row], probs[:, i])
        np.testing.assert_array_equal(kept.scored[:, row], scored[:, i])


def test_copies_of_an_image_are_kept_once():
    keys = np.array([5, 9, 5, 1, 9], dtype=np.int64)
    probs, scored = _outputs(len(keys))
    kept = TrainingReadouts.from_training(keys, probs, scored, sampled=keys)
    assert kept.keys.tolist() == [1, 5, 9] and kept.probs.shape == (2, 3, 4)
    np.testing.assert_array_equal(kept.scored[:, kept.lookup(np.array([5]))[0]], scored[:, 0])


def test_an_empty_record_knows_no_image():
    probs, scored = _outputs(0)
    none = np.zeros(0, dtype=np.int64)
    kept = TrainingReadouts.from_training(none, probs, scored, sampled=none)
    assert kept.lookup(np.array([1, 2], dtype=np.int64)).tolist() == [-1, -1]


def test_read_outs_beyond_the_size_limit_are_not_kept(monkeypatch):
    keys = np.arange(100, dtype=np.int64)
    probs, scored = _outputs(100, nets=2, classes=4)  # 2 arrays x 2 nets x 100 x 4 float32 = 6,400 bytes
    monkeypatch.setattr(readouts, "READOUT_BYTES", 6_400)
    assert TrainingReadouts.from_training(keys, probs, scored, sampled=keys) is not None
    monkeypatch.setattr(readouts, "READOUT_BYTES", 6_399)
    assert TrainingReadouts.from_training(keys, probs, scored, sampled=keys) is None


def test_shapes_that_do_not_fit_the_keys_are_refused():
    probs, scored = _outputs(5)
    with pytest.raises(ValueError, match="do not fit"):
        TrainingReadouts.from_training(np.arange(4, dtype=np.int64), probs, scored, sampled=np.arange(4))
    with pytest.raises(ValueError, match="do not fit"):
        TrainingReadouts.from_training(np.arange(5, dtype=np.int64), probs, scored[:1], sampled=np.arange(5))


def test_round_trip_through_a_weights_only_checkpoint():
    keys = np.array([4, 8, 15, 16, 23, 42], dtype=np.int64)
    kept = TrainingReadouts.from_training(keys, *_outputs(len(keys)), sampled=keys % 3)
    buffer = io.BytesIO()
    torch.save({"readouts": kept.state_dict()}, buffer)
    buffer.seek(0)
    back = TrainingReadouts.from_state_dict(torch.load(buffer, weights_only=True)["readouts"])
    for name in ("keys", "probs", "scored", "sampled"):
        np.testing.assert_array_equal(getattr(back, name), getattr(kept, name))
    assert back.lookup(np.array([15], dtype=np.int64)).tolist() == [2]


def test_digests_see_every_pixel_where_the_probes_key_reads_a_grid():
    """The probes' key samples a 16 x 16 grid (a fold per image, cheap); a read-out must not be reused for an
    image changed anywhere, so its digest reads every pixel."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 1, 64, 64), dtype=np.uint8)
    images[1] = images[0]
    images[2] = images[0]
    images[2, 0, 1, 1] ^= 1  # off the grid of every fourth row and column
    keys, digests = image_keys(images), pixel_digests(images)
    assert keys[0] == keys[1] == keys[2]
    assert digests[0] == digests[1] != digests[2]


def test_damaged_state_is_refused():
    three = np.array([1, 2, 3], dtype=np.int64)
    kept = TrainingReadouts.from_training(three, *_outputs(3), sampled=three)
    state = kept.state_dict()
    with pytest.raises(ValueError, match="sorted and unique"):
        TrainingReadouts.from_state_dict({**state, "keys": state["keys"].flip(0)})
    with pytest.raises(ValueError, match="do not fit"):
        TrainingReadouts.from_state_dict({**state, "scored": state["scored"][:, :2]})


def test_only_images_with_a_training_images_probe_key_are_digested(monkeypatch):
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (6, 1, 32, 32), dtype=np.uint8)
    kept = TrainingReadouts.from_training(pixel_digests(train), *_outputs(6), sampled=image_keys(train))
    edited = train[2].copy()
    edited[0, 1, 1] ^= 1  # off the probe key's grid: same probe key, other pixels
    audited = np.stack([train[4], rng.integers(0, 256, (1, 32, 32), dtype=np.uint8), edited, train[0]])
    digested = []

    def counting(images):
        digested.append(len(images))
        return pixel_digests(images)

    monkeypatch.setattr(readouts, "pixel_digests", counting)
    found = kept.find(audited, image_keys(audited))
    rows = kept.lookup(pixel_digests(train[[4, 0]]))
    assert found.tolist() == [rows[0], -1, -1, rows[1]] and (rows >= 0).all()
    assert digested == [3]  # the new image's probe key is no training image's: never digested
