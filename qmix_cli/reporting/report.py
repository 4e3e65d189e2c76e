"""The per-image audit report: its schema, how rows are derived from scores, streaming writers and a reader.

The schema is the contract of ``DESIGN.md`` ("The report"): one row per training image, sorted by
``sample_id`` (or, asked, by ``rank``: most likely issues first), written as Parquet (with run metadata in the
file), CSV or JSON Lines, to a file (atomically) or to stdout.

Reports are built in two passes so that memory stays bounded on large datasets: first every image's scores
(``p_clean`` and ``loss``) give the global :func:`compute_ranks`; then rows are built batch by batch with
:func:`build_report` (passing the precomputed ``rank``) and appended with a :class:`ReportWriter`.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import filecmp
import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from qmix_cli import __version__
from qmix_cli.categories import CATEGORIES, CLEAN, MIS_H
from qmix_cli.errors import DataError, QmixError, summarise_offenders
from qmix_cli.io import (
    PARQUET_MAGIC,
    atomic_path,
    csv_header,
    is_pipe_or_device,
    is_stream,
    leading_bytes,
    send_to_null,
)
from qmix_cli.reporting.groups import GROUP_SCHEMA

#: Output formats a report can be written in.
FORMATS: tuple[str, str, str] = ("parquet", "csv", "jsonl")

REPORT_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("given_label", pa.string(), nullable=False),
        pa.field("predicted_label", pa.string(), nullable=False),
        pa.field("suggested_label", pa.string(), nullable=True),
        pa.field("confidence", pa.float32(), nullable=False),
        pa.field("label_score", pa.float32(), nullable=False),
        pa.field("loss", pa.float32(), nullable=False),
        pa.field("uncertainty", pa.float32(), nullable=False),
        pa.field("p_clean", pa.float32(), nullable=False),
        pa.field("p_mislabeled_hq", pa.float32(), nullable=False),
        pa.field("p_mislabeled_lq", pa.float32(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("is_label_issue", pa.bool_(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
    ]
)

_SUFFIX_FORMATS: dict[str, str] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json-lines": "jsonl",
}

# Prefix of every key this module puts in Parquet metadata, so that it never collides with pandas' or Arrow's.
_META_PREFIX = "qmix."


# --------------------------------------------------------------------------------------------------- building


def normalise_posteriors(posteriors: np.ndarray) -> np.ndarray:
    """Rescale group posteriors so that each row sums to 1, as stored in the report.

    Parameters
    ----------
    posteriors
        ``(N, 3)`` non-negative, finite; columns in :data:`CATEGORIES` order.

    Returns
    -------
    numpy.ndarray
        ``(N, 3)`` float32, rows summing to 1 within float32 rounding (< 1e-6).
    """
    post = np.asarray(posteriors, dtype=np.float64)
    if post.ndim != 2 or post.shape[1] != len(CATEGORIES):
        raise ValueError(f"posteriors must have shape (N, 3), got {post.shape}")
    if not np.isfinite(post).all() or (post < 0).any():
        raise ValueError("posteriors must be finite and non-negative")
    total = post.sum(axis=1, keepdims=True)
    if (total <= 0).any():
        raise ValueError("every row of posteriors needs a positive sum")
    # Divide in float64 and round once, so the float32 row sums stay within one ulp or two of 1.
    return (post / total).astype(np.float32)


def compute_ranks(*, p_clean: np.ndarray, loss: np.ndarray, sample_ids: Sequence[str] | pa.Array) -> np.ndarray:
    """Rank images from most to least likely label issue.

    Order: ascending ``p_clean``, ties broken by descending ``loss``, then ascending ``sample_id``, so the
    ranking is total and reproducible. Both scores are compared as float32, the precision stored in the
    report; pass ``p_clean`` from :func:`normalise_posteriors` so that ranks agree with the stored column.

    Parameters
    ----------
    p_clean, loss
        ``(N,)`` finite scores of every image in the report (the rank is global, not per batch).
    sample_ids
        ``(N,)`` unique ids.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` int32, a permutation of ``1..N``; 1 = most likely issue.
    """
    ids = _string_array(sample_ids, name="sample_ids")
    n = len(ids)
    p_clean32 = _float_vector(p_clean, name="p_clean", n=n)
    loss32 = _float_vector(loss, name="loss", n=n)
    keys = pa.table({"p_clean": p_clean32, "loss": loss32, "sample_id": ids})
    order = pc.sort_indices(
        keys, sort_keys=[("p_clean", "ascending"), ("loss", "descending"), ("sample_id", "ascending")]
    ).to_numpy()
    ranks = np.empty(n, dtype=np.int32)
    ranks[order] = np.arange(1, n + 1, dtype=np.int32)
    return ranks


def suggest_labels(*, probs: np.ndarray, given_labels: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """The label to keep or use for each image, following its verdict.

    ``clean``: the given label. ``mislabeled_hq``: the most probable class *other than* the given one; that is
    the argmax wherever the argmax differs from the given label, and where it is the given label the verdict has
    overruled it, so suggesting that label back would contradict the verdict.
    ``mislabeled_lq``: none (the image itself is the problem, so no label should be trusted).

    Parameters
    ----------
    probs
        ``(N, K)`` class probabilities (any scores ordered like them).
    given_labels
        ``(N,)`` int given labels in ``[0, K)``.
    categories
        ``(N,)`` int verdicts in {0, 1, 2} (:data:`CATEGORIES` order).

    Returns
    -------
    np.ndarray
        ``(N,)`` int64 class indices; ``-1`` where there is no suggestion (``mislabeled_lq``).
    """
    probs = np.asarray(probs, dtype=np.float64)
    given = np.asarray(given_labels, dtype=np.int64)
    cats = np.asarray(categories)
    others = np.where(np.arange(probs.shape[1]) == given[:, None], -np.inf, probs)
    return np.where(cats == CLEAN, given, np.where(cats == MIS_H, others.argmax(axis=1), -1))


# Row orders a report can be written in: by id (stable, for joins and diffs) or by rank (issues first, for `| head`).
REPORT_ORDERS = ("sample_id", "rank")


def build_report(
    *,
    sample_ids: Sequence[str] | pa.Array,
    paths: Sequence[str] | pa.Array,
    given_labels: np.ndarray,
    probs: np.ndarray,
    loss: np.ndarray,
    uncertainty: np.ndarray,
    posteriors: np.ndarray,
    categories: np.ndarray,
    class_names: Sequence[str],
    rank: np.ndarray | None = None,
    suggestion_probs: np.ndarray | None = None,
    sort_by: str = "sample_id",
) -> pa.Table:
    """Build report rows from the audit scores.

    Parameters
    ----------
    sample_ids, paths
        ``(N,)`` strings from the manifest; ids must be unique.
    given_labels
        ``(N,)`` int class indices into ``class_names`` (the possibly noisy labels).
    probs
        ``(N, K)`` ensemble softmax, ``K == len(class_names)``; used as is (not renormalised).
    loss, uncertainty
        ``(N,)`` scores normalised to [0, 1] over the whole training set.
    posteriors
        ``(N, 3)`` group posteriors in :data:`CATEGORIES` order; renormalised to sum to 1.
    categories
        ``(N,)`` int hard groups in {0, 1, 2} (:data:`CATEGORIES` order).
    class_names
        ``K`` class names, index ``i`` naming class ``i``.
    rank
        ``(N,)`` precomputed global ranks (see :func:`compute_ranks`) when these rows are one batch of a
        larger report; computed over these rows when omitted.
    suggestion_probs
        ``(N, K)`` the probabilities relabels are suggested from (`suggest_labels`); ``probs`` when omitted.
    sort_by
        One of :data:`REPORT_ORDERS`: the column the rows are sorted by (``rank``: ascending, issues first).

    Returns
    -------
    pyarrow.Table
        ``N`` rows with schema :data:`REPORT_SCHEMA`, sorted by ``sort_by``. Rows are sorted only within
        this call: a caller writing several batches must feed them in that order.
    """
    if sort_by not in REPORT_ORDERS:
        raise ValueError(f"sort_by must be one of {REPORT_ORDERS}, got {sort_by!r}")
    ids = _string_array(sample_ids, name="sample_ids")
    n = len(ids)
    path_arr = _string_array(paths, name="paths", n=n)
    names = [str(name) for name in class_names]
    k = len(names)
    if k == 0:
        raise ValueError("class_names is empty")

    prob = np.asarray(probs, dtype=np.float64)
    if prob.shape != (n, k):
        raise ValueError(f"probs must have shape (N, K) = ({n}, {k}), got {prob.shape}")
    if not np.isfinite(prob).all():
        raise ValueError("probs must be finite")
    given = _int_vector(given_labels, name="given_labels", n=n, high=k)
    cats = _int_vector(categories, name="categories", n=n, high=len(CATEGORIES))
    loss32 = _float_vector(loss, name="loss", n=n)
    unc32 = _float_vector(uncertainty, name="uncertainty", n=n)
    post = normalise_posteriors(posteriors)
    if post.shape[0] != n:
        raise ValueError(f"posteriors must have {n} rows, got {post.shape[0]}")
    _check_unique(ids)

    if rank is None:
        ranks = compute_ranks(p_clean=post[:, 0], loss=loss32, sample_ids=ids)
    else:
        ranks = _int_vector(rank, name="rank", n=n, low=1, high=None).astype(np.int32)

    predicted = prob.argmax(axis=1)
    rows = np.arange(n)
    if suggestion_probs is None:
        suggestion = prob
    else:
        suggestion = np.asarray(suggestion_probs, dtype=np.float64)
        if suggestion.shape != (n, k):
            raise ValueError(f"suggestion_probs must have shape (N, K) = ({n}, {k}), got {suggestion.shape}")
    suggested = suggest_labels(probs=suggestion, given_labels=given, categories=cats)
    class_arr = pa.array(names, type=pa.string())
    columns = {
        "sample_id": ids,
        "path": path_arr,
        "given_label": class_arr.take(pa.array(given)),
        "predicted_label": class_arr.take(pa.array(predicted)),
        "suggested_label": class_arr.take(pa.array(suggested, mask=suggested < 0)),
        "confidence": pa.array(prob[rows, predicted].astype(np.float32)),
        "label_score": pa.array(prob[rows, given].astype(np.float32)),
        "loss": pa.array(loss32),
        "uncertainty": pa.array(unc32),
        "p_clean": pa.array(post[:, 0]),
        "p_mislabeled_hq": pa.array(post[:, 1]),
        "p_mislabeled_lq": pa.array(post[:, 2]),
        "category": pa.array(list(CATEGORIES), type=pa.string()).take(pa.array(cats)),
        "is_label_issue": pa.array(cats != CLEAN),
        "rank": pa.array(ranks, type=pa.int32()),
    }
    table = pa.Table.from_pydict(columns, schema=REPORT_SCHEMA)
    return table.take(pc.sort_indices(table[sort_by]))


def report_metadata(
    *,
    method: str,
    model: str,
    class_names: Sequence[str],
    run_dir: str | Path | None,
    extra: Mapping[str, Any] | None = None,
) -> dict[bytes, bytes]:
    """Key/value metadata to store in a Parquet report.

    Keys are prefixed ``qmix.``: ``version``, ``method``, ``model``, ``class_names`` (a JSON list),
    ``run_dir`` (omitted when None), ``created_at`` (ISO-8601 UTC, seconds). ``extra`` adds ``qmix.<key>``
    entries: strings as is, anything else as JSON.
    """
    entries: dict[str, str] = {
        "version": __version__,
        "method": method,
        "model": model,
        "class_names": json.dumps([str(name) for name in class_names]),
        "created_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
    }
    if run_dir is not None:
        entries["run_dir"] = str(run_dir)
    for key, value in (extra or {}).items():
        entries[str(key)] = value if isinstance(value, str) else json.dumps(value)
    return {f"{_META_PREFIX}{key}".encode(): value.encode() for key, value in entries.items()}


def run_digest(run_dir: str | Path) -> str | None:
    """A short digest of a finished run's ``run.json`` (written once, as training ends; its settings, dataset
    fingerprint and final mixture summary), or None where the run is not finished (no ``model.pt``: a run being
    resumed or restarted, whose ``run.json`` is still the old one) or has none: what tells the run a report was made
    with from a run trained again in the same folder since."""
    run_dir = Path(run_dir)
    if not (run_dir / "model.pt").is_file():
        return None
    try:
        return hashlib.sha256((run_dir / "run.json").read_bytes()).hexdigest()[:16]
    except OSError:
        return None


# Columns that make a table one `qmix audit` wrote: a report, or its table by group (`GROUP_SCHEMA`).
def written_by_audit(path: str | Path) -> bool:
    """Whether the file at ``path`` is a table ``qmix audit`` wrote, whatever its name: its columns are exactly a
    report's (`REPORT_SCHEMA`) or a table by group's (`qmix_cli.reporting.groups.GROUP_SCHEMA`), read from a Parquet
    file's schema (which must also carry qmix metadata) or a CSV / JSON Lines file's first line. Lets a rerun replace
    its own output while a manifest, or a report the user edited or cut down (other columns), given as ``--out`` by
    mistake is kept (`qmix_cli.io.check_replaceable`). False for anything it cannot parse."""
    path = Path(path)
    try:
        if leading_bytes(path, 4) == PARQUET_MAGIC:
            schema = pq.read_schema(path)
            if not decode_metadata(schema.metadata or {}):  # no qmix.* entry: not a file qmix wrote
                return False
            columns = set(schema.names)
        else:
            with path.open("rb") as f:
                line = f.readline(1 << 20).decode("utf-8-sig", errors="replace").strip()
            columns = set(json.loads(line)) if line.startswith("{") else set(next(csv.reader([line]), []))
    except (OSError, pa.ArrowException, ValueError, TypeError, csv.Error, RecursionError):
        return False  # a binary file, a CR-only or NUL-holding line, a JSON too deep: not ours
    return columns in (set(REPORT_SCHEMA.names), set(GROUP_SCHEMA.names))


# How every reader here parses a CSV report: ids and labels may hold quoted line breaks, and told so, pyarrow does not
# cut a file over 1 MiB into blocks at them (an id came back cut in two).
_CSV_PARSE = pacsv.ParseOptions(newlines_in_values=True)


def holds_images(path: str | Path, sample_ids: Sequence[str] | pd.Series) -> bool:
    """Whether the report at ``path`` has one row for each of ``sample_ids`` and for nothing else: an earlier audit
    of the same images, which a rerun may replace. A report cut down (``--sort rank | head``, the flagged rows kept
    for a review) or of other images is not, nor is anything unreadable. Only the ``sample_id`` column is read."""
    path = Path(path)
    try:
        fmt = report_format(path)
        if fmt == "parquet":
            column = pq.read_table(path, columns=["sample_id"]).column(0)
        elif fmt == "csv":
            convert = pacsv.ConvertOptions(include_columns=["sample_id"], column_types={"sample_id": pa.string()})
            column = pacsv.read_csv(path, parse_options=_CSV_PARSE, convert_options=convert).column(0)
        else:  # ids read as text, as they were written: "0042" is not 42
            ids_only = pa.schema([("sample_id", pa.string())])
            parse = pajson.ParseOptions(explicit_schema=ids_only, unexpected_field_behavior="ignore")
            column = pajson.read_json(path, parse_options=parse).column(0)
    except (OSError, pa.ArrowException, KeyError, ValueError):
        return False
    held = column.to_pylist()
    return len(held) == len(sample_ids) and set(held) == {str(sid) for sid in sample_ids}


def report_format(path: str | Path) -> str:
    """The format of the report file at ``path``: Parquet where its first bytes are Parquet's ``PAR1`` magic
    (whatever its name: a Parquet report renamed ``.csv`` was read as text and refused as "not UTF-8"), else its
    suffix's when it is one of ours, else what its first bytes say (a JSON object, else CSV). `qmix audit --out
    report.txt --format csv` writes a report a name cannot tell the format of; the readers still take it back. A
    file that cannot be opened is taken for CSV, for the reader to say it is missing or unreadable.

    Returns
    -------
    str
        One of :data:`FORMATS`.
    """
    head = leading_bytes(path, 64)  # empty where unreadable: CSV, for its reader to say why
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    named = _SUFFIX_FORMATS.get(Path(path).suffix.lower())
    if named is not None:
        return named
    return "jsonl" if head.lstrip()[:1] == b"{" else "csv"


def read_report_metadata(path: str | Path) -> dict[str, str]:
    """The ``qmix.*`` metadata of a Parquet report, keys without the prefix; empty for CSV and JSON Lines.

    ``class_names`` is a JSON list: decode it with ``json.loads``.
    """
    path = Path(path)
    if report_format(path) != "parquet":
        return {}
    try:
        raw = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError) as exc:
        raise QmixError(f"cannot read report {path}: {exc}") from exc
    return decode_metadata(raw)


def decode_metadata(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    """The ``qmix.*`` entries of Parquet metadata (`report_metadata`'s), keys without the prefix, as text."""
    prefix = _META_PREFIX.encode()
    return {key[len(prefix) :].decode(): value.decode() for key, value in raw.items() if key.startswith(prefix)}


# --------------------------------------------------------------------------------------------------- formats


def infer_format(out: str | Path, fmt: str | None = None) -> str:
    """Resolve the output format: ``fmt`` when given (which a known suffix must agree with), else from the suffix
    of ``out``.

    ``out == "-"`` (stdout) defaults to CSV; Parquet cannot go to stdout because its footer is written last
    and readers need to seek.

    Returns
    -------
    str
        One of :data:`FORMATS`.

    Raises
    ------
    QmixError
        Unknown ``fmt``, unknown suffix, a ``fmt`` other than the known suffix says, or Parquet to stdout.
    """
    to_stdout = is_stream(out)
    if fmt is not None:
        resolved = fmt.strip().lower()
        if resolved not in FORMATS:
            raise QmixError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")
        named = None if to_stdout else _SUFFIX_FORMATS.get(Path(out).suffix.lower())
        if named is not None and named != resolved:  # every reader goes by the suffix: it could not be read back
            raise QmixError(
                f"--format {resolved} contradicts the suffix of {str(out)!r}, a {named} file's; name the file "
                "for its format, or leave --format out"
            )
    elif to_stdout:
        resolved = "csv"
    else:
        suffix = Path(out).suffix.lower()
        if suffix not in _SUFFIX_FORMATS:
            known = ", ".join(_SUFFIX_FORMATS)
            raise QmixError(
                f"cannot tell the report format of {str(out)!r} from its suffix (known: {known}); "
                "use --format parquet, csv or jsonl"
            )
        resolved = _SUFFIX_FORMATS[suffix]
    if to_stdout and resolved == "parquet":
        raise QmixError("parquet cannot stream to stdout; use --format csv or jsonl")
    return resolved


# --------------------------------------------------------------------------------------------------- writing


class ReportWriter:
    """Append report batches to one output, as Parquet, CSV or JSON Lines; use as a context manager.

    Each :meth:`write` appends its rows immediately (one Parquet row group per write), so memory holds one
    batch at a time. The writer does not sort across batches: the caller feeds batches in the report's order.

    A file output appears only when the ``with`` block succeeds (written to a temporary file, then renamed);
    metadata is stored in Parquet only. With ``out == "-"`` rows stream to ``stream`` (default
    ``sys.stdout``), flushed after each batch. If the reader of a pipe goes away (``| head``), the writer
    stops writing, points stdout at the null device so the interpreter exits quietly, and sets
    :attr:`pipe_closed`; later writes are no-ops, and the caller should stop and exit 0.

    Attributes
    ----------
    fmt
        The resolved format.
    rows_written
        Rows handed to the output so far.
    pipe_closed
        True once the stdout reader has closed the pipe.
    """

    def __init__(
        self,
        out: str | Path,
        *,
        fmt: str | None = None,
        metadata: Mapping[bytes, bytes] | None = None,
        stream: IO[str] | None = None,
        schema: pa.Schema = REPORT_SCHEMA,
    ) -> None:
        self.fmt = infer_format(out, fmt)
        self.schema = schema
        self.to_stdout = is_stream(out)
        self.path: Path | None = None if self.to_stdout else Path(out)
        self.metadata = dict(metadata or {})
        self.rows_written = 0
        self.pipe_closed = False
        self._stream = stream
        self._stack = contextlib.ExitStack()
        self._sink: IO[Any] | None = None
        self._encode = False  # True when the sink takes UTF-8 bytes rather than text
        self._parquet: pq.ParquetWriter | None = None
        self._header_written = False
        self._state: Literal["new", "open", "done"] = "new"

    # -- lifecycle

    def open(self) -> ReportWriter:
        """Open the output (the context manager does this); calling it again does nothing."""
        if self._state == "done":
            raise RuntimeError("the report writer is already closed")
        if self._state == "open":
            return self
        if self.to_stdout:
            if self._stream is not None:
                self._sink = self._stream
            else:
                # Reports are UTF-8 whatever the locale, so write bytes beneath sys.stdout's text layer,
                # flushing that layer first so that anything printed before keeps its place.
                self._sink = getattr(sys.stdout, "buffer", sys.stdout)
                self._encode = self._sink is not sys.stdout
                try:
                    sys.stdout.flush()
                except BrokenPipeError:
                    self._on_closed_pipe()
        else:
            assert self.path is not None
            tmp = self._stack.enter_context(atomic_path(self.path))
            if self.fmt == "parquet":
                self._parquet = pq.ParquetWriter(tmp, self.schema.with_metadata(self.metadata))
            else:
                # Binary, so that rows end in "\n" on every platform, as on stdout.
                self._sink = self._stack.enter_context(open(tmp, "wb"))  # noqa: SIM115
                self._encode = True
        self._state = "open"
        return self

    def close(self) -> None:
        """Finish the output: a file is complete and in place once this returns."""
        if self._state != "open":
            self._state = "done"
            return
        try:
            if self._parquet is not None:
                self._parquet.close()
            elif self.fmt == "csv" and not self._header_written:
                # An empty report is still a valid CSV with its columns.
                self._emit(_csv_text(self.schema.empty_table(), header=True))
            if self.to_stdout:
                self._flush_stdout()
        except BaseException as exc:
            self._state = "done"
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._state = "done"
        self._stack.close()

    def abort(self) -> None:
        """Give up: a file output is not created and its temporary file is removed."""
        if self._state != "open":
            self._state = "done"
            return
        self._state = "done"
        if self._parquet is not None:
            with contextlib.suppress(Exception):
                self._parquet.close()
        # atomic_path keeps the old file and deletes the temporary one when an exception crosses it.
        reason = _Aborted()
        self._stack.__exit__(_Aborted, reason, None)

    def __enter__(self) -> ReportWriter:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    # -- writing

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        """Append rows.

        Parameters
        ----------
        table
            Rows with (at least) the writer's schema's columns (:data:`REPORT_SCHEMA` unless another was given),
            e.g. from :func:`build_report`; columns
            are reordered and cast to the schema, extra columns are dropped.
        """
        if self._state == "new":
            self.open()
        if self._state != "open":
            raise RuntimeError("the report writer is closed")
        batch = conform_to_schema(table, self.schema)
        if batch.num_rows == 0 or self.pipe_closed:
            return
        if self._parquet is not None:
            self._parquet.write_table(batch, row_group_size=batch.num_rows)
        elif self.fmt == "csv":
            self._emit(_csv_text(batch, header=not self._header_written))
            self._header_written = True
        else:
            self._emit(_jsonl_text(batch))
        self.rows_written += batch.num_rows

    def _emit(self, text: str) -> None:
        if self.pipe_closed:
            return
        assert self._sink is not None
        try:
            if self._encode:
                _write_all(self._sink, text.encode("utf-8"))
            else:
                self._sink.write(text)
            if self.to_stdout:
                # Flush per batch: a pipeline sees rows as they come and a closed pipe is noticed early.
                self._sink.flush()
        except BrokenPipeError:
            if not self.to_stdout:
                raise
            self._on_closed_pipe()

    def _flush_stdout(self) -> None:
        if self.pipe_closed or self._sink is None:
            return
        try:
            self._sink.flush()
        except BrokenPipeError:
            self._on_closed_pipe()

    def _on_closed_pipe(self) -> None:
        self.pipe_closed = True
        send_to_null(self._sink)


class _Aborted(Exception):
    """Thrown into the atomic output to discard it."""


def open_report_writer(
    out: str | Path,
    *,
    fmt: str | None = None,
    metadata: Mapping[bytes, bytes] | None = None,
    stream: IO[str] | None = None,
    schema: pa.Schema = REPORT_SCHEMA,
) -> ReportWriter:
    """Create a :class:`ReportWriter` for ``out`` (a path, or ``"-"`` for stdout); use it in a ``with`` block.

    ``fmt`` defaults to :func:`infer_format`; ``metadata`` (e.g. from :func:`report_metadata`) goes into the
    Parquet footer; ``stream`` replaces ``sys.stdout`` when ``out == "-"``; ``schema`` is that of the rows (the
    per-image report's unless given: the per-group table of `qmix_cli.reporting.groups` has its own).
    """
    return ReportWriter(out, fmt=fmt, metadata=metadata, stream=stream, schema=schema)


def write_report(
    table: pa.Table,
    out: str | Path,
    *,
    fmt: str | None = None,
    metadata: Mapping[bytes, bytes] | None = None,
    stream: IO[str] | None = None,
    schema: pa.Schema = REPORT_SCHEMA,
) -> bool:
    """Write a whole report in one go; returns False when stdout's reader closed the pipe early."""
    with open_report_writer(out, fmt=fmt, metadata=metadata, stream=stream, schema=schema) as writer:
        writer.write(table)
    return not writer.pipe_closed


def conform_to_schema(table: pa.Table | pa.RecordBatch, schema: pa.Schema = REPORT_SCHEMA) -> pa.Table:
    """Select the ``schema`` columns of ``table`` in order and cast them to the schema's types."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise ValueError(f"rows lack column(s) {', '.join(missing)} of the table being written")
    return table.select(schema.names).cast(schema)


def _csv_text(table: pa.Table, *, header: bool) -> str:
    buffer = pa.BufferOutputStream()
    # quoting_style="needed" quotes every string, so a null (an empty unquoted field) differs from "".
    options = pacsv.WriteOptions(include_header=header, quoting_style="needed")
    pacsv.write_csv(table, buffer, write_options=options)
    return buffer.getvalue().to_pybytes().decode("utf-8")


def _jsonl_text(table: pa.Table) -> str:
    """One JSON object per row, newline-terminated; nulls and non-finite floats become ``null``."""
    parts: list[Any] = []
    for i, field in enumerate(table.schema):
        prefix = "{" if i == 0 else ","
        parts.append(f"{prefix}{encode_basestring(field.name)}:")
        parts.append(_json_values(table.column(field.name).combine_chunks()))
    parts.append("}\n")
    lines = pc.binary_join_element_wise(*parts, "")
    return "".join(lines.to_pylist())


def _json_values(column: pa.Array) -> pa.Array:
    """JSON text of each value of ``column``: a string array without nulls, built column-wise for speed."""
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        # Escape each distinct string once: labels and categories repeat a lot.
        encoded = pc.dictionary_encode(column)
        escaped = pa.array([encode_basestring(value) for value in encoded.dictionary.to_pylist()], pa.string())
        values = escaped.take(encoded.indices)
    elif pa.types.is_floating(kind):
        # Arrow prints the shortest decimal that reads back to the same float32, e.g. "0.1", "1e-20".
        text = pc.cast(column, pa.string())
        values = pc.if_else(pc.is_finite(column), text, pa.scalar(None, pa.string()))
    elif pa.types.is_boolean(kind):
        values = pc.if_else(column, "true", "false")
    else:
        values = pc.cast(column, pa.string())
    return pc.fill_null(values, "null")


# --------------------------------------------------------------------------------------------------- reading


def check_verdict_rows(frame: pd.DataFrame, *, what: str) -> pd.DataFrame:
    """``frame`` with ``sample_id`` as text, once its ids are unique and its ``category`` values are verdicts
    (`CATEGORIES`): what every join of a report (or a truth manifest) on ``sample_id`` needs. ``what`` names the
    frame in the errors ("report", "truth")."""
    if (empty := int(frame["sample_id"].isna().sum())) > 0:  # astype(str) keeps a missing id missing
        raise QmixError(f"the {what} has {empty} row{'s' * (empty != 1)} without a sample_id")
    frame = frame.assign(sample_id=frame["sample_id"].astype(str))
    dupes = frame["sample_id"][frame["sample_id"].duplicated()].unique().tolist()
    if dupes:
        raise QmixError(summarise_offenders(f"duplicate sample ids in the {what}", dupes))
    # The distinct values first (by hash): a set of a million rows' values took most of a second.
    bad = sorted(set(frame["category"].astype(str).unique()) - set(CATEGORIES))
    if bad:
        raise QmixError(f"the {what} has unknown categories {bad}; expected {list(CATEGORIES)}")
    return frame


def verdict_columns(report: pd.DataFrame) -> pd.DataFrame:
    """The report's verdict columns (``category``, ``given_label``, ``suggested_label``) indexed by ``sample_id`` (as
    text), in its order, its ids and categories checked (`check_verdict_rows`); as objects, so that rows it lacks can
    be filled in whatever dtype a caller's DataFrame held them. What `apply` and a review join on."""
    needed = ("sample_id", "category", "given_label", "suggested_label")
    if missing := [c for c in needed if c not in report.columns]:  # a DataFrame handed over, not read from a file
        raise QmixError(f"the report lacks column(s) {', '.join(missing)}; give the frame qmix audit returned")
    rep = check_verdict_rows(report, what="report")
    return rep.set_index("sample_id")[list(needed[1:])].astype(object)


def given_label_mismatches(given: pd.Series, labels: pd.Series) -> list[str]:
    """The ids whose label in a report is not the manifest's: a report of another labelling of the same images
    (another corruption, a relabelled copy), which must not be joined with it.

    ``given`` is the report's ``given_label`` and ``labels`` the manifest's ``label``, both indexed by ``sample_id``
    (as text); ids of ``given`` that ``labels`` lacks count as mismatches. Returned in ``given``'s order.
    """
    other = labels.astype(str).reindex(given.index)
    return given.index[given.astype(str).to_numpy() != other.to_numpy()].tolist()


# Rows whose files are compared byte for byte when a report and a dataset name them differently: a report of other
# images differs on (nearly) every row, so a few tell, and a copy of the dataset costs a few file reads to accept.
COMPARED_FILES = 16


def check_same_images(
    meta: Mapping[str, str], *, report: pd.DataFrame, root: str | Path, dataset: pd.DataFrame, data: str | Path
) -> None:
    """Refuse a report whose rows are of other images than the dataset's rows with the same ids: a test split
    beside its training split has the very file names, ids and labels, which no check of rows tells apart.

    The report's ``path`` values are resolved against the dataset folder its metadata records (`metadata_for`),
    the ``path`` values of ``dataset`` (its manifest rows, with ``sample_id``) against ``root``, both folders
    with their symlinks resolved. Where the two name different files, the first `COMPARED_FILES` such pairs are
    compared: the same bytes (a copy of the dataset, a built-in dataset materialised in another cache) are the same
    images, and so is a pair one of whose files is missing, which cannot be compared; any other pair is refused.
    A report that records no folder (CSV, JSON Lines) or one that is gone (the dataset was moved since its audit)
    passes. ``data`` names the dataset in the error."""
    recorded = meta.get("dataset_root")
    if not recorded or not os.path.isdir(recorded):
        return
    theirs, ours = (_paths_by_id(frame) for frame in (report, dataset))
    shared = theirs.index.intersection(ours.index)
    their_paths, our_paths = theirs.reindex(shared).to_numpy(), ours.reindex(shared).to_numpy()
    report_base, base = os.path.realpath(recorded), os.path.realpath(root)
    # In one folder, rows that name a file alike are the same file: only the others need resolving (a million
    # rows of one dataset cost no loop).
    rows = np.flatnonzero(their_paths != our_paths) if report_base == base else range(len(shared))
    compared = 0
    for i in rows:  # os.path.join keeps an absolute path as it is
        there = os.path.normpath(os.path.join(report_base, their_paths[i]))
        here = os.path.normpath(os.path.join(base, our_paths[i]))
        if there == here:
            continue
        if not _same_bytes(there, here):
            raise QmixError(
                f"the report is of other images than {data} (row {shared[i]} is {there} there, {here} here); "
                f"audit {data} with the run to get its report"
            )
        compared += 1
        if compared == COMPARED_FILES:
            return


def _paths_by_id(frame: pd.DataFrame) -> pd.Series:
    """``frame``'s ``path`` as text indexed by its ``sample_id`` as text, the first row of a duplicated id only
    (duplicates are refused where the rows are joined)."""
    paths = pd.Series(frame["path"].astype(str).to_numpy(), index=frame["sample_id"].astype(str).to_numpy())
    return paths[~paths.index.duplicated()]


def _same_bytes(a: str, b: str) -> bool:
    """Whether files ``a`` and ``b`` hold the same bytes; True when either cannot be read (nothing to compare)."""
    try:
        return filecmp.cmp(a, b, shallow=False)
    except OSError:
        return True


def as_bool(series: pd.Series, *, name: str) -> np.ndarray:
    """(N,) bool of a column of booleans, or of text that spells them (``true``/``false``, ``yes``/``no``,
    ``1``/``0``), as CSV files written by other tools and people do; missing values or other text are a
    `QmixError` naming ``name``."""
    if series.isna().any():
        raise QmixError(f"{name} has missing values")
    if series.dtype == bool:
        return series.to_numpy(dtype=bool)
    # CSV files written by other tools may spell booleans as text or 0/1.
    mapping = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False, "1.0": True, "0.0": False}
    text = series.astype(str).str.strip().str.lower()
    unknown = sorted(set(text) - set(mapping))
    if unknown:
        raise QmixError(f"{name} must be true/false (or yes/no, 1/0), got {unknown[:5]}")
    return text.map(mapping).to_numpy(dtype=bool)


def read_report(path: str | Path) -> pd.DataFrame:
    """Read a report written in any format (by its suffix, or its first bytes: `report_format`) and check its columns.

    Known columns are cast to the :data:`REPORT_SCHEMA` types (float32, int32, bool, string with nulls kept in
    ``suggested_label``); extra columns are kept. The ``qmix.*`` Parquet metadata is in ``df.attrs["qmix"]``.

    Raises
    ------
    QmixError
        The file is missing, unreadable, or lacks report columns (all named).
    """
    if is_stream(path):
        raise QmixError("reading a report from stdin is not supported; save it to a file first")
    path = Path(path)
    if is_pipe_or_device(path):
        raise QmixError(f"cannot read report {path}: it is a pipe or a device, not a file; save it to a file first")
    if not path.is_file():
        raise QmixError(f"report not found: {path}")
    fmt = report_format(path)
    try:
        table = _read_table(path, fmt)
    except (pa.ArrowException, OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        sniffed = "" if path.suffix.lower() in _SUFFIX_FORMATS else f" (read as {fmt}: its suffix does not say)"
        raise QmixError(f"cannot read report {path}{sniffed}: {exc}") from exc
    missing = [name for name in REPORT_SCHEMA.names if name not in table.column_names]
    if missing and {"group", "issue_score", "images"} <= set(table.column_names):
        raise QmixError(
            f"{path} is the audit by group (qmix audit --groups-out); give the per-image report (what qmix audit "
            "--out wrote)"
        )
    if missing:
        raise QmixError(f"{path} is not a qmix report: missing column(s) {', '.join(missing)}")
    empty = [f.name for f in REPORT_SCHEMA if not f.nullable and table.column(f.name).null_count]
    if empty:  # e.g. a CSV report edited in a spreadsheet
        raise QmixError(f"{path} has empty values in column(s) {', '.join(empty)}, which a report fills in every row")
    target = pa.schema([REPORT_SCHEMA.field(f.name) if f.name in REPORT_SCHEMA.names else f for f in table.schema])
    try:
        table = table.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        raise QmixError(f"{path} has report columns of the wrong type: {exc}") from exc
    frame = table.to_pandas()
    frame.attrs["qmix"] = read_report_metadata(path) if fmt == "parquet" else {}
    return frame


def _read_table(path: Path, fmt: str) -> pa.Table:
    if fmt == "parquet":
        return pq.read_table(path)
    column_types = {field.name: field.type for field in REPORT_SCHEMA}
    if fmt == "csv":
        # A copy edited in a spreadsheet may come back with another separator (`;` where the comma is the decimal
        # mark), and then decimal commas: both are read as the manifest's separators are.
        sep, _ = csv_header(path)
        parse = pacsv.ParseOptions(delimiter=sep, newlines_in_values=True)
        decimals = (".", ",") if sep == ";" else (".",)
        for decimal in decimals:
            convert = pacsv.ConvertOptions(
                column_types=column_types,
                # Only an empty, unquoted field is null: the writer quotes every string, so "NA" stays a label.
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
                decimal_point=decimal,
            )
            try:
                return pacsv.read_csv(path, parse_options=parse, convert_options=convert)
            except pa.ArrowInvalid:
                if decimal == decimals[-1]:
                    raise
    # JSON Lines: an explicit schema fills absent fields with nulls, so check the first row for missing ones.
    first = _first_json_row(path)
    if first is None:
        return REPORT_SCHEMA.empty_table()
    absent = [name for name in REPORT_SCHEMA.names if name not in first]
    if absent:
        raise QmixError(f"{path} is not a qmix report: missing column(s) {', '.join(absent)}")
    parse = pajson.ParseOptions(explicit_schema=REPORT_SCHEMA, unexpected_field_behavior="infer")
    return pajson.read_json(path, parse_options=parse)


def _first_json_row(path: Path) -> dict[str, Any] | None:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise QmixError(f"{path} is not JSON Lines of objects")
                return row
    return None


# ------------------------------------------------------------------------------------------------- validation


def _string_array(values: Sequence[str] | pa.Array, *, name: str, n: int | None = None) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        arr = values.cast(pa.string())
    else:
        arr = pa.array(values if isinstance(values, (list, np.ndarray)) else list(values), type=pa.string())
    if n is not None and len(arr) != n:
        raise ValueError(f"{name} must have {n} entries, got {len(arr)}")
    if arr.null_count:
        raise ValueError(f"{name} contains missing values")
    return arr


def _float_vector(values: np.ndarray, *, name: str, n: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite")
    return arr.astype(np.float32)


def _int_vector(values: np.ndarray, *, name: str, n: int, high: int | None, low: int = 0) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < low or (high is not None and arr.max() >= high)):
        upper = "" if high is None else f", < {high}"
        raise ValueError(f"{name} out of range (must be >= {low}{upper})")
    return arr


def _check_unique(ids: pa.Array) -> None:
    if pc.count_distinct(ids).as_py() == len(ids):
        return
    counts = pd.Series(ids.to_pylist()).value_counts()
    dupes = [str(value) for value in counts[counts > 1].index]
    raise DataError(summarise_offenders("duplicate sample ids", dupes))


def _write_all(sink: Any, data: bytes) -> None:
    """Write every byte of ``data`` to the binary ``sink``, or raise.

    A buffered writer whose pipe's reader exits in the middle of a large write returns the short count instead of
    raising; writing the rest then raises `BrokenPipeError`, which is how a closed pipe gets noticed.
    """
    view = memoryview(data)
    while view:
        written = sink.write(view)
        if written is None:  # a stream that does not count what it took: it took all of it, or raised
            return
        if written == 0:  # nothing taken and no error: the other end is gone
            raise BrokenPipeError("the pipe took no more bytes")
        view = view[written:]
