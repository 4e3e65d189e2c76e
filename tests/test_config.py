"""Tests for qmix_cli.config: loosely typed values from YAML and --set are checked against the field types."""

from __future__ import annotations

import pytest

from qmix_cli.config import TrainConfig, config_from_dict, resolve_config
from qmix_cli.errors import ConfigError


def test_numbers_from_yaml_strings_are_converted(tmp_path):
    # PyYAML reads 1e-3 as the string "1e-3"; it must still be a learning rate, not a crash in the optimiser.
    path = tmp_path / "cfg.yaml"
    path.write_text("lr: 1e-3\nepochs: 5.0\nchannels: '1'\n")
    cfg = resolve_config(config_file=path)
    assert cfg.lr == pytest.approx(0.001) and isinstance(cfg.lr, float)
    assert cfg.epochs == 5 and isinstance(cfg.epochs, int)
    assert cfg.channels == 1


@pytest.mark.parametrize(
    ("values", "fragments"),
    [
        ({"schedule": "linear"}, ["unknown schedule 'linear'", "cosine, step, constant"]),
        ({"uncertainty": "colision"}, ["unknown uncertainty 'colision'", "entropy, collision"]),
        ({"method": "nope"}, ["unknown method 'nope'", "qmix, dividemix, ce"]),
        ({"channels": 2}, ["unknown channels 2"]),
        ({"lr": "fast"}, ["lr must be a number", "'fast'"]),
        ({"epochs": 2.5}, ["epochs must be an integer"]),
        ({"epochs": True}, ["epochs must be an integer"]),
        ({"hflip": "sometimes"}, ["hflip must be true or false"]),
        ({"extra": 3}, ["extra is no longer an option", "remove it"]),  # retired: accepted, saved and never read
        # A number is no path: val=0.2 means a fraction (it would have been read as a dataset named 0.2).
        ({"val": 0.2}, ["val must be a path or a built-in dataset's name, not float 0.2"]),
        ({"cache_dir": 5}, ["cache-dir must be a path, not int 5"]),
        ({"audit_neighbours": -1}, ["audit-neighbours must be 0 (no vote) or more", "-1"]),
        ({"p_threshold": 5}, ["p-threshold must be in [0, 1)", "5"]),
        ({"mixup_alpha": -1}, ["mixup-alpha must be 0 (no mixup) or more"]),
        ({"lr": "nan"}, ["lr must be positive", "nan"]),
        ({"momentum": 1}, ["momentum must be in [0, 1)"]),
        ({"temperature": 0}, ["temperature must be positive"]),
        # Every method's final separation names three groups: dividemix and ce too, not only qmix.
        ({"method": "ce", "gmm_components": 2}, ["gmm-components must be at least 3"]),
        ({"method": "dividemix", "gmm_components": 2}, ["gmm-components must be at least 3"]),
    ],
)
def test_wrong_types_and_choices_are_refused_by_name(values, fragments):
    with pytest.raises(ConfigError) as exc:
        config_from_dict(values)
    for fragment in fragments:
        assert fragment in str(exc.value)


def test_optional_fields_accept_none_and_defaults_validate():
    cfg = config_from_dict({"warmup_epochs": None, "weights": None, "epochs": 9})
    assert cfg.warmup_epochs == 3  # derived: a third of the epochs
    assert TrainConfig().validate().channels == "auto"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (None, ["config file not found", "cfg.yaml"]),
        ("lr: [0.1, 0.2\n", ["config file", "cfg.yaml", "is not valid YAML"]),
        ("- lr\n- epochs\n", ["config file", "cfg.yaml", "must hold a mapping of option: value"]),
        ("0.02\n", ["must hold a mapping of option: value"]),
    ],
    ids=["missing", "invalid-yaml", "list", "scalar"],
)
def test_unusable_config_files_are_config_errors_naming_the_file(tmp_path, text, fragments):
    # Each must be a ConfigError (one line from the CLI), not a YAML or attribute error from deep inside.
    path = tmp_path / "cfg.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        resolve_config(config_file=path)
    for fragment in fragments:
        assert fragment in str(exc.value)


def test_an_empty_config_file_means_the_defaults(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("# nothing set yet\n")
    assert resolve_config(config_file=path) == TrainConfig().validate()


def test_path_options_are_kept_absolute_and_normal_and_builtin_names_stay_names(tmp_path, monkeypatch):
    from qmix_cli.config import absolute_paths

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    got = absolute_paths({"val": "../data", "cache_dir": "~/cache", "weights": "./w.pth", "epochs": 3})
    assert got == {
        "val": str(tmp_path.parent / "data"),  # no ".." left: the same folder spelled absolute compares equal
        "cache_dir": str(tmp_path / "home" / "cache"),
        "weights": str(tmp_path / "w.pth"),
        "epochs": 3,
    }
    assert absolute_paths({"val": "digits"})["val"] == "digits"  # a built-in dataset, not a folder here
    assert absolute_paths({"val": "fashion-mnist:test", "cache_dir": None}) == {
        "val": "fashion-mnist:test",
        "cache_dir": None,
    }


def test_path_options_take_a_path_as_python_callers_hold_them(tmp_path):
    paths = {"cache_dir": tmp_path / "cache", "val": tmp_path / "val", "weights": tmp_path / "w.pth"}
    cfg = config_from_dict(paths)
    assert (cfg.cache_dir, cfg.val, cfg.weights) == tuple(str(p) for p in paths.values())
    with pytest.raises(ConfigError, match=r"cache-dir must be a path, not list \[.not., .a., .path.\]"):
        config_from_dict({"cache_dir": ["not", "a", "path"]})


def test_a_longer_rerun_of_a_recorded_config_says_its_warm_up_stays(tmp_path):
    from qmix_cli.config import dump_config, kept_warmup_note, load_config_file

    recorded = tmp_path / "config.yaml"  # what a 3-epoch run wrote: its derived warm-up, 1 epoch, included
    recorded.write_text(dump_config(config_from_dict({"epochs": 3})))
    values = load_config_file(recorded)
    note = kept_warmup_note(values, {"epochs": 30})
    assert note == (
        "note: --epochs 30 keeps the warm-up of 1 epoch the config sets (by default a third of the epochs); pass "
        "--warmup-epochs N to change it"
    )
    assert resolve_config(config_file=recorded, overrides={"epochs": 30}).warmup_epochs == 1  # as the note says
    assert kept_warmup_note(values, {"epochs": 30, "warmup_epochs": 10}) is None  # asked for
    assert kept_warmup_note(values, {"epochs": 3}) is None and kept_warmup_note({"epochs": 3}, {"epochs": 30}) is None
    assert kept_warmup_note({"warmup-epochs": 2, "epochs": 6}, {"epochs": 12}) is not None  # YAML in CLI spelling
    # A count YAML holds as text (quoted, or written by a template) is a valid config, and so is its note.
    assert "the warm-up of 2 epochs the config sets" in kept_warmup_note({"warmup_epochs": "2"}, {"epochs": 12})
