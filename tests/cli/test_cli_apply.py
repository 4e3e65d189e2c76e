"""``qmix apply`` through the Typer app: a cleaner manifest out of a real audit, inputs untouched, refusals."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from qmix_cli.api import audit
from qmix_cli.cli.app import app
from qmix_cli.data.manifest import create_dataset
from tests.cli.helpers import assert_one_line_error as _assert_one_line_error
from tests.cli.helpers import stderr_of as _stderr


def test_the_new_manifest_holds_far_fewer_wrong_labels(runner, report, noisy_digits, tmp_path, hash_tree):
    before = hash_tree(noisy_digits), hash_tree(report.parent)
    out = tmp_path / "elsewhere" / "fixed.csv"
    result = runner.invoke(app, ["apply", str(noisy_digits), "--report", str(report), "--out", str(out)])
    assert result.exit_code == 0, (result.output, _stderr(result))
    assert (hash_tree(noisy_digits), hash_tree(report.parent)) == before  # inputs never change

    source = pd.read_parquet(noisy_digits / "manifest.parquet")
    fixed = pd.read_csv(out, dtype=str, keep_default_na=False)
    wrong_before = (source["label"] != source["true_label"]).mean()
    wrong_after = (fixed["label"] != fixed["true_label"]).mean()
    # The planted errors (a third of the labels, counting the degraded images' random ones) mostly gone.
    assert wrong_before > 0.3 and wrong_after < wrong_before / 5
    assert (fixed["is_low_quality"] == "True").mean() < source["is_low_quality"].mean() / 2
    # The truth columns describe the new labels, so evaluating or training on it stays honest.
    noisy = fixed["label"] != fixed["true_label"]
    assert (fixed["is_label_noisy"] == noisy.map(str)).all()
    assert set(fixed.loc[~noisy & (fixed["is_low_quality"] == "False"), "category"]) == {"clean"}

    # The summary line agrees with the file, and the manifest reads from any working directory.
    text = " ".join(_stderr(result).split())
    relabelled = int((fixed["label"] != fixed["qmix_given_label"]).sum())
    assert f"{len(fixed):,} of {len(source):,} images; relabelled {relabelled:,}" in text
    assert f"next: qmix train {out} --out RUN --method ce" in text  # few wrong labels left: plain CE (APPLY.md)
    assert all(os.path.isabs(p) for p in fixed["path"])  # the images are not under out's folder
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert len(create_dataset(out, check_images=True)) == len(fixed)
    finally:
        os.chdir(cwd)


def test_paths_stay_relative_under_the_new_manifest(runner, report, noisy_digits):
    out = noisy_digits.parent / "fixed-here.parquet"
    try:
        args = ["apply", str(noisy_digits), "--report", str(report), "-o", str(out), "--hq", "drop", "--lq", "keep"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, _stderr(result)
        fixed = pd.read_parquet(out)
        assert all(p.startswith(f"{noisy_digits.name}/images/") for p in fixed["path"])
        assert set(fixed["qmix_verdict"]) == {"clean", "mislabeled_lq"}  # hq dropped, lq kept
        assert (fixed["label"] == fixed["qmix_given_label"]).all()
        assert len(create_dataset(out, check_images=False)) == len(fixed)
    finally:
        out.unlink(missing_ok=True)


def test_outputs_that_would_overwrite_an_input_are_refused(runner, report, noisy_digits, tmp_path, hash_tree):
    before = hash_tree(noisy_digits), hash_tree(report.parent)
    base = ["apply", str(noisy_digits), "--report", str(report), "--out"]
    _assert_one_line_error(runner.invoke(app, [*base, str(noisy_digits / "manifest.parquet")]), "own manifest")
    _assert_one_line_error(runner.invoke(app, [*base, str(report)]), "is the report")
    _assert_one_line_error(runner.invoke(app, [*base, str(tmp_path / "fixed.txt")]), ".csv or .parquet")
    _assert_one_line_error(runner.invoke(app, [*base, str(tmp_path / "f.csv"), "--hq", "fix"]), "hq must be one of")
    assert (hash_tree(noisy_digits), hash_tree(report.parent)) == before
    assert not (tmp_path / "f.csv").exists()


def test_symlinks_around_the_output_and_the_report(runner, report, noisy_digits, tmp_path, hash_tree):
    # A report named through a link is still the report; an --out link is written at its target, and the paths
    # in it resolve from there (not from the link's folder, which here holds the images).
    copy = tmp_path / "report-copy.parquet"
    copy.write_bytes(report.read_bytes())
    (tmp_path / "report-link.parquet").symlink_to(copy)
    result = runner.invoke(
        app, ["apply", str(noisy_digits), "--report", str(tmp_path / "report-link.parquet"), "-o", str(copy)]
    )
    _assert_one_line_error(result, "is the report")
    assert copy.read_bytes() == report.read_bytes()

    link, target = noisy_digits.parent / "fixed-link.csv", tmp_path / "elsewhere" / "real.csv"
    target.parent.mkdir()
    link.symlink_to(target)
    try:
        result = runner.invoke(app, ["apply", str(noisy_digits), "--report", str(report), "-o", str(link)])
        assert result.exit_code == 0, _stderr(result)
        assert link.is_symlink() and target.is_file()
        fixed = pd.read_csv(target, dtype=str, keep_default_na=False)
        assert all(os.path.isabs(p) for p in fixed["path"])  # read through the link or not, they resolve
        for manifest in (link, target):
            assert len(create_dataset(manifest, check_images=True)) == len(fixed)
        # A link to a file of another type would be written in the type its target's name does not say.
        (tmp_path / "to-parquet.csv").symlink_to(tmp_path / "real.parquet")
        result = runner.invoke(
            app, ["apply", str(noisy_digits), "--report", str(report), "-o", str(tmp_path / "to-parquet.csv")]
        )
        _assert_one_line_error(result, "a file of another type")
    finally:
        link.unlink()


def test_a_class_emptied_is_named(runner, report, noisy_digits, tmp_path):
    frame = pd.read_parquet(report)
    zero = (frame["given_label"] == "0") | (frame["suggested_label"] == "0")  # every image that would say 0
    frame.loc[zero, ["category", "suggested_label"]] = ["mislabeled_lq", None]
    frame.to_parquet(tmp_path / "edited.parquet")
    args = ["apply", str(noisy_digits), "--report", str(tmp_path / "edited.parquet"), "-o", str(tmp_path / "f.csv")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, _stderr(result)
    assert "warning: 1 class of the dataset carries no image any more: 0; a run on it will not know it" in " ".join(
        _stderr(result).split()
    )


def test_a_review_sheet_overrules_the_reports_verdicts_on_its_images(runner, report, noisy_digits, tmp_path):
    # What a curator downloads from the page: two wrong labels found right, one relabelled otherwise, one dropped.
    frame = pd.read_parquet(report)
    hq = frame[frame["category"] == "mislabeled_hq"].head(3)
    lq = frame[frame["category"] == "mislabeled_lq"].head(1)
    other = next(c for c in map(str, range(10)) if c not in (hq["given_label"].iloc[2], hq["suggested_label"].iloc[2]))
    review = pd.DataFrame(
        {
            "sample_id": [*hq["sample_id"], *lq["sample_id"]],
            "given_label": [*hq["given_label"], *lq["given_label"]],
            "category": ["clean", "clean", "mislabeled_hq", "mislabeled_lq"],
            "suggested_label": ["", "", other, ""],
        }
    )
    review.to_csv(tmp_path / "review.csv", index=False)
    out = tmp_path / "fixed.csv"
    args = ["apply", str(noisy_digits), "--report", str(report), "--review", str(tmp_path / "review.csv")]
    result = runner.invoke(app, [*args, "-o", str(out)])
    assert result.exit_code == 0, _stderr(result)
    fixed = pd.read_csv(out, dtype=str, keep_default_na=False).set_index("sample_id")
    assert fixed.loc[hq["sample_id"], "label"].tolist() == [*hq["given_label"].iloc[:2], other]
    assert fixed.loc[hq["sample_id"], "qmix_verdict"].tolist() == ["clean", "clean", "mislabeled_hq"]
    assert lq["sample_id"].iloc[0] not in fixed.index
    # What is left on trust: every flagged image's change but the two the review made (a relabel, a drop).
    changed = int((frame["category"] != "clean").sum()) - 2
    unreviewed = changed - 2
    said = f"4 as reviewed (3 overruled), {unreviewed:,} of the {changed:,} changes unreviewed"
    assert said in " ".join(_stderr(result).split())
    # The review is an input: never the output.
    again = runner.invoke(app, [*args, "-o", str(tmp_path / "review.csv"), "--force"])
    assert again.exit_code == 1 and "is the review; write the new manifest to another file" in _stderr(again)
    # In Python the sheet may be a DataFrame, as the report may.
    from qmix_cli.api import apply

    counts = apply(noisy_digits, report=report, review=review, out=tmp_path / "api.csv")
    assert counts["reviewed"] == 4 and counts["overruled"] == 3 and counts["unreviewed"] == unreviewed
    assert pd.read_csv(tmp_path / "api.csv", dtype=str).equals(pd.read_csv(out, dtype=str))


def test_the_summary_writes_a_path_s_control_characters_as_escapes(runner, report, noisy_digits, tmp_path):
    # A line break or a terminal's escape sequence in the output's name: printed as text, the summary one line.
    out = tmp_path / "fixed\n\x1b[2J.csv"
    result = runner.invoke(app, ["apply", str(noisy_digits), "--report", str(report), "-o", str(out)])
    assert result.exit_code == 0, _stderr(result)
    assert out.is_file() and "\x1b" not in _stderr(result)
    wrote = next(line for line in _stderr(result).splitlines() if line.startswith("wrote "))
    assert "fixed\\n\\x1b[2J.csv: " in wrote


def test_a_class_left_with_less_than_half_its_images_is_warned_of(runner, report, noisy_digits, tmp_path):
    # The small class of an imbalanced set is where the verdicts fall hardest: losing most of it is said, with how.
    frame = pd.read_parquet(report)
    ones = frame.index[frame["given_label"] == "1"]
    frame.loc[ones[: 3 * len(ones) // 4], ["category", "suggested_label"]] = ["mislabeled_lq", None]
    frame.to_parquet(tmp_path / "edited.parquet")
    args = ["apply", str(noisy_digits), "--report", str(tmp_path / "edited.parquet"), "-o", str(tmp_path / "f.csv")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, _stderr(result)
    fixed = pd.read_csv(tmp_path / "f.csv", dtype=str, keep_default_na=False)
    given_one, now_one = fixed["qmix_given_label"] == "1", fixed["label"] == "1"
    own, away, gained = (given_one & now_one).sum(), (given_one & ~now_one).sum(), (~given_one & now_one).sum()
    dropped = len(ones) - given_one.sum()
    assert own < len(ones) / 2 and dropped >= 3 * len(ones) // 4
    gain = f"; {gained} relabelled to it" if gained else ""
    assert (
        f"warning: 1 class keeps less than half of its images: 1 kept {own} of {len(ones)} ({away} relabelled away, "
        f"{dropped} dropped{gain}); on an imbalanced set the verdicts fall hardest on the small class, so check its "
        "flagged images" in " ".join(_stderr(result).split())
    )


def test_flagged_images_of_rare_classes_keep_their_labels_unless_asked(runner, report, noisy_digits, tmp_path):
    # Two images given a class of their own: the audit judges each by the other images of its class, so it flags
    # them whatever their label; applying that would take the class out of the dataset. A third image of the class
    # is one training could not read (--on-bad-image skip): not in the report, and not counted.
    frame = pd.read_parquet(report)
    rare = [frame.loc[frame["category"] == c, "sample_id"].iloc[0] for c in ("mislabeled_hq", "mislabeled_lq")]
    unread = frame.loc[frame["category"] == "clean", "sample_id"].iloc[0]
    frame.loc[frame["sample_id"].isin(rare), "given_label"] = "rare_finding"
    frame = frame[frame["sample_id"] != unread]
    frame.to_csv(tmp_path / "report.csv", index=False)  # no metadata: whose audit, it cannot say
    manifest = pd.read_parquet(noisy_digits / "manifest.parquet")
    manifest = manifest.assign(path=[str(noisy_digits / p) for p in manifest["path"]])
    manifest.loc[manifest["sample_id"].isin([*rare, unread]), "label"] = "rare_finding"
    manifest.to_parquet(tmp_path / "data.parquet")
    args = ["apply", str(tmp_path / "data.parquet"), "--report", str(tmp_path / "report.csv"), "--on-missing", "keep"]

    result = runner.invoke(app, [*args, "-o", str(tmp_path / "asked.csv")])
    _assert_one_line_error(
        result,
        "2 flagged images are of classes of fewer than 5 images (rare_finding (2))",
        "pass --rare-classes keep if it does",
        "nothing written",
    )
    assert not (tmp_path / "asked.csv").exists()

    result = runner.invoke(app, [*args, "-o", str(tmp_path / "kept.csv"), "--rare-classes", "keep"])
    assert result.exit_code == 0, _stderr(result)
    said = " ".join(_stderr(result).split())
    assert "kept 2 flagged of rare classes unchanged" in said
    assert "so 2 flagged of them stay as they are (rare_finding (2)): check them by hand" in said
    assert "carries no image any more" not in said
    kept = pd.read_csv(tmp_path / "kept.csv", dtype=str).set_index("sample_id")
    assert kept.loc[rare, "label"].tolist() == ["rare_finding"] * 2
    assert kept.loc[rare, "qmix_verdict"].tolist() == ["mislabeled_hq", "mislabeled_lq"]  # recorded all the same
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "same.csv"), "--rare-classes", "keep", "--hq", "keep"])
    # --hq keep changes nothing of the mislabeled_hq one anyway: only the image that would be dropped counts.
    assert "kept 1 flagged of rare classes unchanged" in " ".join(_stderr(result).split())

    result = runner.invoke(app, [*args, "-o", str(tmp_path / "applied.csv"), "--rare-classes", "apply"])
    assert result.exit_code == 0, _stderr(result)
    applied = pd.read_csv(tmp_path / "applied.csv", dtype=str).set_index("sample_id")
    assert rare[0] in applied.index and applied.at[rare[0], "label"] != "rare_finding"  # relabelled
    assert rare[1] not in applied.index  # dropped as unusable

    # A report that says whose audit it is decides by itself: the training set's keeps them, another set's does not.
    from qmix_cli import apply
    from qmix_cli.reporting.report import read_report

    for training_set, kept_rare in (("true", 2), ("false", 0)):
        recorded = read_report(tmp_path / "report.csv")
        recorded.attrs["qmix"] = {"training_set": training_set}
        out = tmp_path / f"recorded-{training_set}.csv"
        counts = apply(tmp_path / "data.parquet", report=recorded, out=out, on_missing="keep")
        assert counts["kept_rare"] == kept_rare
    # A frame that lost its metadata (pandas' merge drops attrs) is told in Python's words, not the CLI's.
    import pytest

    from qmix_cli.errors import ConfigError

    merged = recorded.merge(pd.DataFrame({"sample_id": recorded["sample_id"], "checked": True}), on="sample_id")
    assert merged.attrs == {}
    with pytest.raises(ConfigError, match=r"attrs\['qmix'\], which pandas' merge .* pass rare_classes='keep'"):
        apply(tmp_path / "data.parquet", report=merged, out=tmp_path / "merged.csv", on_missing="keep")


def test_a_report_frame_without_its_label_column_is_refused_by_name(report, noisy_digits, tmp_path):
    import pytest

    from qmix_cli import apply
    from qmix_cli.errors import QmixError
    from qmix_cli.reporting.report import read_report

    frame = read_report(report).drop(columns="given_label")
    with pytest.raises(QmixError, match="given_label"):
        apply(noisy_digits, report=frame, out=tmp_path / "fixed.csv")
    assert not (tmp_path / "fixed.csv").exists()


def test_the_python_api_takes_the_report_as_a_file_or_as_audit_returns_it(report, noisy_digits, qmix_run, tmp_path):
    from qmix_cli import apply, audit

    frame = audit(noisy_digits, run=qmix_run.run_dir, quiet=True)  # no file: the DataFrame alone
    assert json.loads(frame.attrs["qmix"]["class_names"]) == [str(i) for i in range(10)]  # as a Parquet file has
    from_frame = apply(noisy_digits, report=frame, out=tmp_path / "a.parquet")
    from_file = apply(noisy_digits, report=report, out=tmp_path / "b.parquet")
    assert {k: v for k, v in from_frame.items() if k != "out"} == {k: v for k, v in from_file.items() if k != "out"}
    # The changes by class add up to the counts, and are plain numbers (a notebook may json.dump the result).
    changes = from_file["by_class"]
    assert set(changes) == {str(i) for i in range(10)} and json.loads(json.dumps(changes)) == changes
    assert sum(c["before"] for c in changes.values()) == from_file["images"]
    assert sum(c["after"] for c in changes.values()) == from_file["kept"]
    assert sum(c["relabelled_to"] for c in changes.values()) == from_file["relabelled"]
    assert sum(c["dropped"] for c in changes.values()) == from_file["images"] - from_file["kept"]
    assert all(c["kept"] + c["relabelled_away"] + c["dropped"] == c["before"] for c in changes.values())
    assert all(c["kept"] + c["relabelled_to"] == c["after"] for c in changes.values())
    assert all(2 * changes[name]["kept"] < changes[name]["before"] for name in from_file["shrunk"])
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet"))


def test_a_report_of_other_images_under_the_same_names_is_refused(runner, qmix_run, noisy_digits, tmp_path):
    # A test split beside its training split: the same file names, ids and labels, which no row check tells apart,
    # and other pixels.
    twin = tmp_path / "twin"
    shutil.copytree(noisy_digits, twin)
    for image in (twin / "images").iterdir():
        with Image.open(image) as img:
            inverted = ImageOps.invert(img.convert("L"))
        inverted.save(image)
    twin_report = tmp_path / "twin.parquet"
    audit(twin, run=qmix_run.run_dir, out=twin_report, quiet=True)
    fixed, page = tmp_path / "fixed.csv", tmp_path / "page.html"
    commands = {
        "apply": ["apply", str(noisy_digits), "--report", str(twin_report), "-o", str(fixed), "--on-missing", "keep"],
        "show": ["show", str(twin_report), "--data", str(noisy_digits), "--out", str(page)],
    }
    first = pd.read_parquet(twin_report)["path"].iloc[0]
    for args in commands.values():
        _assert_one_line_error(
            runner.invoke(app, args),
            f"the report is of other images than {noisy_digits} (row ",
            f" is {twin / first} there, {noisy_digits / first} here)",
        )
    assert not fixed.exists() and not page.exists()
    # Moved since its audit (the folder it records is gone): the report is taken for the dataset's.
    shutil.rmtree(twin)
    result = runner.invoke(app, commands["apply"])
    assert result.exit_code == 0, _stderr(result)
    _assert_applies(pd.read_csv(fixed, dtype=str), pd.read_parquet(twin_report))


def _assert_applies(written: pd.DataFrame, report: pd.DataFrame) -> None:
    """``written`` is ``report``'s verdicts applied by default: its mislabeled-LQ images dropped, its mislabeled-HQ
    ones given the suggested label, the rest as they were."""
    verdicts = report.set_index("sample_id")
    assert set(written["sample_id"]) == set(verdicts.index[verdicts["category"] != "mislabeled_lq"])
    hq = written["qmix_verdict"] == "mislabeled_hq"
    assert hq.any() and (written["qmix_verdict"] == "clean").any()
    suggested = verdicts.loc[written["sample_id"], "suggested_label"].astype(str).to_numpy()
    given = verdicts.loc[written["sample_id"], "given_label"].astype(str).to_numpy()
    assert (written["label"].to_numpy() == np.where(hq, suggested, given)).all()


def test_a_report_of_a_copy_of_the_dataset_or_of_it_through_a_link_is_the_datasets(
    runner, report, noisy_digits, tmp_path
):
    # The same bytes under another folder (a copy, a built-in dataset materialised in another cache) are the same
    # images, and so is the same folder reached through a symlink.
    copy, link = tmp_path / "copy", tmp_path / "link"
    shutil.copytree(noisy_digits, copy)
    link.symlink_to(noisy_digits, target_is_directory=True)
    for i, data in enumerate((copy, link)):
        result = runner.invoke(app, ["apply", str(data), "--report", str(report), "-o", str(tmp_path / f"f{i}.csv")])
        assert result.exit_code == 0, _stderr(result)
        _assert_applies(pd.read_csv(tmp_path / f"f{i}.csv", dtype=str), pd.read_parquet(report))
        page = runner.invoke(app, ["show", str(report), "--data", str(data), "-o", str(tmp_path / f"p{i}.html")])
        assert page.exit_code == 0, _stderr(page)
        assert "not found" not in _stderr(page)  # the thumbnails were read from the images, not placeholders
        assert "data:image/" in (tmp_path / f"p{i}.html").read_text()


def test_the_same_images_listed_by_a_manifest_elsewhere_are_the_reports(runner, report, noisy_digits, tmp_path):
    # Another manifest, in another folder, naming the audited images by absolute path: the same files.
    listed = pd.read_parquet(noisy_digits / "manifest.parquet")
    listed = listed.assign(path=[str(noisy_digits / p) for p in listed["path"]])
    (tmp_path / "lists").mkdir()
    listed.to_csv(tmp_path / "lists" / "all.csv", index=False)
    args = ["apply", str(tmp_path / "lists" / "all.csv"), "--report", str(report), "--out", str(tmp_path / "f.csv")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, _stderr(result)
    _assert_applies(pd.read_csv(tmp_path / "f.csv", dtype=str), pd.read_parquet(report))


def test_an_existing_manifest_is_replaced_only_with_force(runner, report, noisy_digits, tmp_path):
    out = tmp_path / "fixed.parquet"
    out.write_bytes(b"a manifest a run was trained on")
    args = ["apply", str(noisy_digits), "--report", str(report), "--out", str(out)]
    _assert_one_line_error(runner.invoke(app, args), "already exists; choose another --out or pass --force")
    assert out.read_bytes() == b"a manifest a run was trained on"
    result = runner.invoke(app, [*args, "--force"])
    assert result.exit_code == 0, _stderr(result)
    assert len(pd.read_parquet(out)) > 1000


def test_a_parquet_manifest_of_integer_labels_gets_integer_labels_back(report, noisy_digits, tmp_path):
    from qmix_cli.api import apply

    source = pd.read_parquet(noisy_digits / "manifest.parquet")
    as_ints = source.assign(label=source["label"].astype(int), path=[str(noisy_digits / p) for p in source["path"]])
    as_ints.to_parquet(tmp_path / "ints.parquet", index=False)
    apply(tmp_path / "ints.parquet", report=report, out=tmp_path / "fixed.parquet")
    fixed = pd.read_parquet(tmp_path / "fixed.parquet")
    assert fixed["label"].dtype == fixed["qmix_given_label"].dtype == "int64"  # `fixed.label == 3` still works
    assert (fixed["label"] != fixed["qmix_given_label"]).sum() > 50  # relabelled, as numbers
    assert fixed["sample_id"].dtype == source["sample_id"].dtype  # text stays text
