"""Throughput of ``qmix corrupt`` against a plain copy of the same images, measured side by side.

What is measured
----------------
* ``qmix corrupt``: wall time of ``qmix_cli.api.corrupt(source, out, quality_rate=..., seed=0, force=True,
  workers=...)``, i.e. what the command costs end to end: loading and validating the dataset (every image is
  decoded once), planning the noise, degrading the low-quality fraction (decode, degrade, re-encode as PNG),
  copying the other images byte for byte, and writing ``manifest.parquet`` and ``noise.json``.
* ``decode+write`` (the reference the ratio is taken against): every image is decoded with Pillow
  (``Image.open(...).load()``) and written back as PNG (``compress_level=1``, as ``qmix corrupt`` writes its
  degraded images) to a fresh directory, on a ``ThreadPoolExecutor`` with the same number of threads. This is
  the cheapest "touch every pixel" copy a tool could make, so ``corrupt / decode+write`` says how much qmix costs
  beyond the unavoidable image I/O.
* ``copyfile``: a pure ``shutil.copyfile`` of every file on the same pool; the floor set by the file system.
* ``load+validate``: ``qmix_cli.data.create_dataset(...)`` alone, the part of ``corrupt`` spent before any
  image is written (shown for reading the ratio, not as an alternative).

The one-time materialisation of a built-in dataset (``fashion-mnist:test``, ``digits``) is done before any
timing. Each method writes to a directory that does not exist yet (removed, untimed, before every run). The
methods run one after another within each repeat (the order rotating between repeats), so all see the same
page-cache and machine state; the table reports the median over ``--repeats``.

Usage::

    QMIX_CACHE_DIR=/tmp/qmix-bench-cache .venv/bin/python benchmarks/bench_corrupt.py
    .venv/bin/python benchmarks/bench_corrupt.py --dataset digits --repeats 5 --json bench.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import PIL
from PIL import Image

import qmix_cli
from qmix_cli.api import corrupt
from qmix_cli.data import create_dataset
from qmix_cli.data.images import default_workers
from qmix_cli.errors import DataError

FALLBACK_DATASET = "digits"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion-mnist:test", help="any qmix source (default: %(default)s)")
    parser.add_argument("--quality-rate", type=float, default=0.15, help="fraction degraded (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None, help="threads for every method (default: qmix's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method; median reported (default: 3)")
    parser.add_argument("--out-dir", type=Path, default=None, help="scratch directory (default: a temp dir, removed)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def load_dataset(name: str, workers: int):
    """The dataset (materialised if built in), falling back to ``digits`` when fashion-mnist is not installed."""
    try:
        return name, create_dataset(name, workers=workers)
    except DataError as err:
        if not name.startswith("fashion-mnist"):
            raise
        print(f"note: {name} is unavailable ({err}); using {FALLBACK_DATASET} instead\n", file=sys.stderr)
        return FALLBACK_DATASET, create_dataset(FALLBACK_DATASET, workers=workers)


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    return path


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _on_pool(workers: int, job: Callable[[int], None], n: int) -> None:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # Same chunking as qmix corrupt; list() re-raises any worker error.
        list(pool.map(job, range(n), chunksize=16))


def decode_write(src: list[Path], rel: list[str], out: Path, workers: int) -> None:
    def job(i: int) -> None:
        dst = (out / rel[i]).with_suffix(".png")
        dst.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src[i]) as img:
            img.load()
            img.save(dst, compress_level=1)

    _on_pool(workers, job, len(src))


def copy_files(src: list[Path], rel: list[str], out: Path, workers: int) -> None:
    def job(i: int) -> None:
        dst = out / rel[i]
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src[i], dst)

    _on_pool(workers, job, len(src))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _python_command() -> str:
    exe = Path(sys.executable)
    try:
        return exe.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return "python"


def machine() -> dict[str, object]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "qmix": qmix_cli.__version__,
    }


def render(results: list[dict[str, object]], *, info: dict[str, object]) -> str:
    lines = [
        f"`qmix corrupt` throughput on {info['dataset']} ({info['num_images']:,} images, "
        f"quality-rate {info['quality_rate']}, {info['workers']} threads, median of {info['repeats']})",
        "",
        "| method | seconds (median) | images/s | ratio vs decode+write |",
        "|---|---:|---:|---:|",
    ]
    for r in results:
        ratio = r["ratio_vs_decode_write"]
        lines.append(f"| {r['method']} | {r['seconds']:.3f} | {r['images_per_s']:,.0f} | {ratio:.2f}× |")
    m = info["machine"]
    lines += [
        "",
        f"ratio = seconds / decode+write seconds (higher = slower). corrupt/copyfile = {info['corrupt_vs_copy']:.2f}×.",
        "",
        f"- machine: {m['cpu']}, {m['cpu_count']} CPUs ({m['cpus_usable']} usable), {m['platform']}",
        f"- python {m['python']}, Pillow {m['pillow']}, qmix {m['qmix']}",
        f"- command: `{info['command']}`",
        f"- date: {info['date']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = shlex.join([_python_command(), *(sys.argv if argv is None else ["benchmarks/bench_corrupt.py", *argv])])
    workers = args.workers or default_workers()

    # Materialises a built-in dataset once (untimed) and gives the exact files every method reads.
    dataset_name, dataset = load_dataset(args.dataset, workers)
    src = [Path(p) for p in dataset.abs_paths]
    # Output names laid out as qmix corrupt lays them out: one folder of numbered files, the source's suffix.
    rel = [f"images/{i:07d}{Path(p).suffix.lower()}" for i, p in enumerate(dataset.frame["path"].astype(str))]
    n = len(src)

    scratch = args.out_dir or Path(tempfile.mkdtemp(prefix="qmix-bench-corrupt-"))
    scratch.mkdir(parents=True, exist_ok=True)
    dirs = {k: scratch / k for k in ("corrupt", "decode_write", "copy")}

    methods: dict[str, Callable[[], object]] = {
        "qmix corrupt": lambda: corrupt(
            dataset_name,
            dirs["corrupt"],
            quality_rate=args.quality_rate,
            seed=0,
            force=True,
            workers=workers,
            quiet=True,
        ),
        "decode+write (Pillow PNG)": lambda: decode_write(src, rel, dirs["decode_write"], workers),
        "copyfile": lambda: copy_files(src, rel, dirs["copy"], workers),
        "load+validate (part of corrupt)": lambda: create_dataset(dataset_name, workers=workers),
    }
    out_of = {"qmix corrupt": "corrupt", "decode+write (Pillow PNG)": "decode_write", "copyfile": "copy"}

    def run_once(name: str) -> float:
        if name in out_of:
            _fresh(dirs[out_of[name]])
        return _timed(methods[name])

    times: dict[str, list[float]] = {name: [] for name in methods}
    try:
        print(f"{dataset_name}: {n:,} images, {workers} threads, {args.repeats} repeats; warm-up...", file=sys.stderr)
        for name in methods:  # warm-up: imports, page cache, lazily built state
            run_once(name)
        names = list(methods)
        for rep in range(args.repeats):
            # Rotate the order each repeat so that drift (write-back, other load) does not favour one method.
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                times[name].append(run_once(name))
            summary = ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items())
            print(f"repeat {rep + 1}/{args.repeats}: {summary}", file=sys.stderr)
    finally:
        if args.out_dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            for d in dirs.values():
                shutil.rmtree(d, ignore_errors=True)

    median = {name: statistics.median(v) for name, v in times.items()}
    base = median["decode+write (Pillow PNG)"]
    results = [
        {
            "method": name,
            "seconds": median[name],
            "all_seconds": times[name],
            "images_per_s": n / median[name],
            "ratio_vs_decode_write": median[name] / base,
        }
        for name in methods
    ]
    info: dict[str, object] = {
        "dataset": dataset_name,
        "requested_dataset": args.dataset,
        "num_images": n,
        "quality_rate": args.quality_rate,
        "workers": workers,
        "repeats": args.repeats,
        "corrupt_vs_decode_write": median["qmix corrupt"] / base,
        "corrupt_vs_copy": median["qmix corrupt"] / median["copyfile"],
        "machine": machine(),
        "command": command,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    print(render(results, info=info))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**info, "results": results}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
