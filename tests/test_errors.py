"""`qmix_cli.errors`: how offenders are counted and named in one line."""

from __future__ import annotations

import pickle

import pytest

from qmix_cli.errors import (
    QmixError,
    UnwritableError,
    count_of,
    first_few,
    respell_options,
    shell_word,
    summarise_offenders,
)


@pytest.mark.parametrize(
    ("what", "one"),
    [
        ("bad images", "1 bad image: x"),
        ("rows with an empty 'label' in m.csv", "1 row with an empty 'label' in m.csv: x"),
        ("suggested labels that are not classes", "1 suggested label that is not classes: x"),
        ("truth paths the report holds under several ids", "1 truth path the report holds under several ids: x"),
        ("duplicate sample_ids in m.csv", "1 duplicate sample_id in m.csv: x"),
        ("things nobody counts", "1 things nobody counts: x"),  # no known plural: left as written
    ],
)
def test_one_offender_is_counted_in_the_singular(what: str, one: str) -> None:
    assert summarise_offenders(what, ["x"]) == one
    assert summarise_offenders(what, ["x", "y"]) == f"2 {what}: x; y"  # more than one: as written


def test_long_lists_are_cut_and_say_how_many_more() -> None:
    names = [f"f{i}" for i in range(8)]
    assert summarise_offenders("bad images", names) == "8 bad images: f0; f1; f2; f3; f4 (and 3 more)"
    assert summarise_offenders("bad images", names[:5], total=12) == "12 bad images: f0; f1; f2; f3; f4 (and 7 more)"
    assert first_few(names) == "f0, f1, f2, f3, f4, and 3 more"


NAMES = {
    "label-rate": "label_rate",
    "--label-rate": "label_rate",
    "--class-map": "class_map",
    "--out": "out",
    "--sort": "sort_by",
    "--force": "force=True",
    "--on-missing": "on_missing",
    "--top": "top",
    "--label-noise": "label_noise",
    "--group-column": "group_column",
}
CHOICES = {"skip", "asymmetric"}


@pytest.mark.parametrize(
    ("cli", "python"),
    [
        ("--label-rate must be between 0 and 1", "label_rate must be between 0 and 1"),
        ("label-rate must be between 0 and 1", "label_rate must be between 0 and 1"),  # a config check's spelling
        ("--class-map applies to --lq-labels only", "class_map applies to --lq-labels only"),  # not a keyword here
        ("--sort must be sample_id or rank", "sort_by must be sample_id or rank"),
        ("--out x exists; pass --force to replace it.", "out x exists; pass force=True to replace it."),
        ("set --sort.", "set sort_by."),
        ("--out - and --verbose", "out - and --verbose"),
        # Prose and values stay as they are: plain words, hyphenated words no option has, paths, longer options.
        ("the out folder; a force of habit", "the out folder; a force of habit"),
        ("t-shirt labelled shirt in /data/label-rate/x.png", "t-shirt labelled shirt in /data/label-rate/x.png"),
        ("--label-rates and label-rate.png and --outer", "--label-rates and label-rate.png and --outer"),
    ],
)
def test_options_are_respelled_as_keywords_and_nothing_else(cli: str, python: str) -> None:
    assert respell_options(cli, NAMES) == python


@pytest.mark.parametrize(
    ("cli", "python"),
    [
        ("(pass --on-missing skip)", '(pass on_missing="skip")'),
        ("to --label-noise asymmetric only", 'to label_noise="asymmetric" only'),
        ("pass --label-noise matrix:FILE.", 'pass label_noise="matrix:FILE".'),
        ("(e.g. --out report.html)", '(e.g. out="report.html")'),
        ("--top N or --top 0; --out: x", "top=N or top=0; out: x"),
        ("name one with --group-column COL", "name one with group_column=COL"),
        # Prose after an option, a value that is not one of the choices, a path (it may hold spaces): left.
        ("--on-missing needs --top and", "on_missing needs top and"),
        ("--group-column ward: cannot", "group_column ward: cannot"),
        # A name quoted as a shell reads it (`shell_word`) is a value, whatever it holds.
        (f"pass --group-column {shell_word('patient id')} so", 'pass group_column="patient id" so'),
        (f"--group-column {shell_word('ward')}; --top 3", 'group_column="ward"; top=3'),
        # An apostrophe or a double quote in the name reads back as a Python literal holds it.
        ("pass --group-column " + shell_word("patient's id") + " so", 'pass group_column="patient\'s id" so'),
        ("--group-column " + shell_word('say "ok"') + ".", 'group_column="say \\"ok\\"".'),
        ("--group-column 'ward", "group_column 'ward"),  # an unclosed quote is prose
        ("--out /tmp/my data/r.csv exists", "out /tmp/my data/r.csv exists"),
        ("pass --force skip", "pass force=True skip"),  # a flag takes no value
        ("label-rate 2 is not a rate", "label_rate 2 is not a rate"),  # a config key: the value is no keyword's
        # A command line the message quotes holds another command's options, whatever this function calls its own.
        (
            "(start it again with qmix train --force); or pass --force",
            "(start it again with qmix train --force); or pass force=True",
        ),
        ("the report (what qmix audit --out wrote), not --out", "the report (what qmix audit --out wrote), not out"),
    ],
)
def test_a_value_after_an_option_becomes_the_keywords(cli: str, python: str) -> None:
    assert respell_options(cli, NAMES, values=CHOICES) == python


def test_an_error_keeps_the_cli_message_and_is_respelled_once() -> None:
    error = UnwritableError("--out x: permission denied", reason="read-only")
    assert error.cli_message == "--out x: permission denied"  # never respelled: the message itself
    error.respell(NAMES)
    error.respell({"--out": "somewhere_else"})  # an outer API function: the inner one's spelling stands
    assert str(error) == "out x: permission denied"
    assert error.cli_message == "--out x: permission denied"
    assert error.reason == "read-only" and isinstance(error, QmixError)


def _all_subclasses(cls: type) -> list[type]:
    return [cls, *(sub for child in cls.__subclasses__() for sub in _all_subclasses(child))]


@pytest.mark.parametrize("cls", _all_subclasses(QmixError), ids=lambda c: c.__name__)
def test_every_error_survives_pickling_with_its_respelling(cls: type[QmixError]) -> None:
    # What a worker process raises reaches its parent pickled; UnwritableError's required reason refused that.
    error = cls("--out x: no", reason="read-only") if cls is UnwritableError else cls("--out x: no")
    error.respell(NAMES)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert (str(copy), copy.cli_message) == ("out x: no", "--out x: no")
    assert vars(copy) == vars(error)


def test_counts_name_their_noun_in_the_number_it_takes():
    assert [count_of(n, "image") for n in (0, 1, 2, 1797)] == ["0 images", "1 image", "2 images", "1,797 images"]
    assert (count_of(1, "class", "classes"), count_of(3, "class", "classes")) == ("1 class", "3 classes")
