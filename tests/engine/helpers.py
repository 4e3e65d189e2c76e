"""Helpers the engine's tests share."""

from __future__ import annotations

import pytest


def _comparable(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in {"seconds", "images_per_s"}} for m in metrics]


def assert_same_metrics(got: list[dict], expected: list[dict]) -> None:
    """Equal up to float tolerance, ignoring timings."""
    got, expected = _comparable(got), _comparable(expected)
    assert len(got) == len(expected)
    for ra, rb in zip(got, expected, strict=True):
        assert ra.keys() == rb.keys()
        for key in ra:
            if isinstance(ra[key], float):
                assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-5), (ra["epoch"], key)
            else:
                assert ra[key] == rb[key], (ra["epoch"], key)
