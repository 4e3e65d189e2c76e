"""Group columns of a manifest (`qmix_cli.data.groups`)."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

from qmix_cli.data.groups import check_group_column, group_keys, group_text, likely_group_column
from qmix_cli.errors import ConfigError


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("p1", "p1"),
        (" p1 ", "p1"),
        (17, "17"),
        (17.0, "17"),  # a Parquet id column with a missing value is float: the same patient as the integer 17
        (np.int64(17), "17"),
        (2.5, "2.5"),
        (None, None),
        (float("nan"), None),
        (pd.NA, None),
        ("", None),
        ("  ", None),
        ("NA", None),  # what tables export for "no value": no group, not one group of all of them
        ("null", None),
        ("17.0", "17"),  # a float id column's CSV export names the same group as the integer column
        ("-3.00", "-3"),
        ("17.5", "17.5"),
        ("p17.0", "p17.0"),
    ],
)
def test_group_text(value, text):
    assert group_text(value) == text


def test_group_keys_name_each_group_once_and_follow_the_seed():
    keys, has = group_keys(pd.Series(["a", "b", "a", None, 7, 7.0]))
    assert has.tolist() == [True, True, True, False, True, True]
    assert keys[0] == keys[2] and keys[0] != keys[1] and keys[4] == keys[5] and keys[4] not in (keys[0], keys[1])
    other, _ = group_keys(pd.Series(["a", "b"]), seed=1)
    assert other[0] != keys[0] and other[1] != keys[1]  # another seed, other folds


def test_group_keys_read_each_value_as_group_text_does_even_where_a_hash_table_would_not():
    values = pd.Series([1, True, 1.0, "1", None, "True", "NA", 0, False], dtype=object)
    keys, has = group_keys(values)
    assert has.tolist() == [True, True, True, True, False, True, False, True, True]
    # True == 1 to a hash table (pandas' factorize), whichever comes first; to group_text True is "True" and 1, 1.0
    # and "1" are "1".
    assert keys[1] == keys[5] != keys[0] == keys[2] == keys[3] and keys[7] != keys[8]
    assert keys.tolist() == [group_keys(pd.Series([v]))[0][0] for v in values]  # as if read one by one
    decimals = group_keys(pd.Series([Decimal("17.50"), Decimal("17.5")]))[0]
    assert decimals[0] != decimals[1]  # equal numbers, two texts: two groups, as ever
    empty_keys, empty_has = group_keys(pd.Series([], dtype=object))
    assert empty_keys.shape == empty_has.shape == (0,)


def test_a_column_named_like_groups_is_pointed_out_when_it_groups_images_into_enough_groups():
    base = {"sample_id": list("123456"), "path": list("abcdef"), "label": list("xyxyxy")}

    def hint(**columns):
        return likely_group_column(pd.DataFrame({**base, **columns}), min_groups=2)

    assert hint(site=list("sstsst"), Patient_ID=["p1", "p1", "p2", "p2", "p3", "p3"]) == "Patient_ID"
    assert hint(SubjectID=list("aabbcc")) == "SubjectID"  # a word starting with one of the group words
    assert hint(patient_id=list("123456")) is None  # one image each: nothing to group
    assert hint(study=list("ssssss")) is None  # one group: fewer than the folds need
    assert hint(site=list("sstsst")) is None  # not named like a group
    assert hint(lowercase_name=list("aabbcc")) is None  # "case" inside a word is not the word "case"


def test_check_group_column_refuses_what_names_no_group():
    frame = pd.DataFrame({"sample_id": ["1"], "path": ["a"], "label": ["x"], "site": ["s"], "empty": [None]})
    keys, has = check_group_column(frame, "site")
    assert has.tolist() == [True] and keys.tolist() == group_keys(frame["site"])[0].tolist()
    with pytest.raises(ConfigError, match=r"no such column \(its columns besides the image's: site, empty;"):
        check_group_column(frame, "patient")
    with pytest.raises(ConfigError, match=r"no such column \(it has no other column; image folders have no columns\)"):
        check_group_column(frame[["sample_id", "path", "label"]], "patient")
    with pytest.raises(ConfigError, match="the label is not a group"):
        check_group_column(frame, "label")
    with pytest.raises(ConfigError, match="has no value"):
        check_group_column(frame, "empty")
