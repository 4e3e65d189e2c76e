"""The three verdicts qmix gives an image, in the one order every array, table and manifest uses.

The separation's groups (METHOD.md: Correct, Mis-H, Mis-L), the report's ``category`` column and the truth that
``qmix corrupt`` writes are the same three things, so they share these names and indices.
"""

from __future__ import annotations

CATEGORIES: tuple[str, str, str] = ("clean", "mislabeled_hq", "mislabeled_lq")
"""Category names; column ``i`` of every (N, 3) posterior array belongs to ``CATEGORIES[i]``."""

CLEAN, MIS_H, MIS_L = 0, 1, 2
"""Indices into `CATEGORIES`: Correct, mislabeled high-quality (Mis-H), mislabeled low-quality (Mis-L)."""
