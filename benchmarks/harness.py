"""What the benchmark scripts share: each step in a fresh interpreter, its own figures, a table.

Linux keeps ru_maxrss across fork and exec: a child starts from its parent's peak. So a driver
stays small (it imports nothing of the project; every step, setup included, is a subprocess),
and each step's peak is its own. A script calls `cli(...)` with its steps and its driver.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Payload = dict[str, Any]


@dataclass(frozen=True)
class Context:
    """What a step subprocess is told: the work directory (its SPOTIFY_HOME) and the scale."""

    script: Path
    work: Path
    scale: float

    @property
    def source(self) -> Path:
        return self.work / "source.db"  # checked against Settings.embedded_source_path

    @property
    def lake(self) -> Path:
        return self.work / "lake"

    @property
    def out(self) -> Path:
        return self.work / "out"  # outputs of engine-neutral steps


Step = Callable[[Context], Payload]


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def settings(ctx: Context) -> Any:
    from spotify_assets.orchestration.settings import Settings

    result = Settings.from_env({"SPOTIFY_HOME": str(ctx.work)})
    assert result.embedded_source_path == ctx.source, result.embedded_source_path
    return result


# --- shared by the steps; the project is imported inside them, so the driver stays small ---


def create_source(ctx: Context, seed: int) -> Payload:
    """A scale-S SQLite source whose history ends two days ago."""
    from datetime import UTC, datetime, timedelta

    from spotify_assets.cli.commands import source_init

    end = datetime.now(UTC).date() - timedelta(days=2)
    created = source_init(settings(ctx), ctx.scale, seed, end, force=True)
    return {"rows": created["rows"], "seconds": created["seconds"], "history": created["history"]}


def lake_of(ctx: Context) -> Any:
    from resources.lake import LakeStorage

    return LakeStorage(url=str(ctx.lake))


def copy_runner(ctx: Context) -> Any:
    """The local copy runner on the step's source and lake, with no safety lag."""
    from resources.copy_runner import LocalCopyRunner
    from resources.source_db import SourceDatabase, sqlite_connection_string

    return LocalCopyRunner(
        source=SourceDatabase(
            connection_string=sqlite_connection_string(ctx.source),
            partition_start=settings(ctx).partition_start.isoformat(),
        ),
        lake=lake_of(ctx),
        safety_lag_seconds=0,
    )


def sail() -> tuple[Any, float]:
    """A Sail session and the seconds it took to start."""
    from resources.spark import SparkResource

    started = time.perf_counter()
    spark = SparkResource().session()
    return spark, time.perf_counter() - started


@dataclass(frozen=True)
class Bookkeeping:
    """What a first load left per home: Dagster's events by type (every run's shard), the
    bytes they take in the shards, the whole instance on disk, and the lake's parquet files."""

    events: Counter[str]
    event_bytes: int
    dagster_bytes: int
    parquet_files: int


def bookkeeping(home: Path) -> Bookkeeping:
    """Counted in the files of the embedded default (SQLite event log under `home/dagster`, the
    lake under `home/lake`), read with sqlite3 so the driver imports nothing of the project."""
    events: Counter[str] = Counter()
    event_bytes = 0
    runs = home / "dagster" / "history" / "runs"
    for shard in runs.glob("*.db"):
        if shard.name == "index.db":  # a copy of the runs' asset events
            continue
        with closing(sqlite3.connect(f"file:{shard}?mode=ro", uri=True)) as db:
            query = "SELECT dagster_event_type, COUNT(*), SUM(LENGTH(event)) FROM event_logs"
            for kind, count, size in db.execute(f"{query} GROUP BY 1"):
                events[kind or "log message"] += count
                event_bytes += size
    dagster = sum(f.stat().st_size for f in (home / "dagster").rglob("*") if f.is_file())
    parquet = sum(1 for _ in (home / "lake").rglob("*.parquet"))
    return Bookkeeping(events, event_bytes, dagster, parquet)


@dataclass
class Measure:
    """One line of the table; `note` replaces the figures of a skipped or failed step."""

    label: str
    rows: int | None = None
    seconds: float | None = None
    peak_mib: float | None = None
    process_s: float | None = None
    note: str = ""
    extra: Payload = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.note and self.seconds is not None

    @property
    def rate(self) -> float | None:
        if not self.ok or not self.rows or not self.seconds:
            return None
        return self.rows / self.seconds


def measure(label: str, step: str, ctx: Context, env: dict[str, str] | None = None) -> Measure:
    """Run one step in a fresh interpreter and collect the figures it took of itself."""
    result = ctx.work / f"result-{step}-{time.monotonic_ns()}.json"
    command = [sys.executable, str(ctx.script), "--step", step, "--scale", str(ctx.scale)]
    command += ["--work", str(ctx.work), "--result", str(result)]
    print(f"running: {label} ...", file=sys.stderr, flush=True)
    load = os.getloadavg()[0]  # the machine may be shared: other jobs slow every figure down
    started = time.perf_counter()
    done = subprocess.run(
        command, env={**os.environ, **(env or {})}, capture_output=True, text=True, check=False
    )
    process_s = time.perf_counter() - started
    if done.returncode != 0 or not result.exists():
        print(done.stderr[-4000:], file=sys.stderr)
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Measure(label, note=f"failed (exit {done.returncode}): {tail[:100]}")
    payload = json.loads(result.read_text())
    if "skipped" in payload:
        return Measure(label, note=payload["skipped"])
    payload["load"] = load
    return Measure(
        label, payload["rows"], payload["seconds"], payload["peak_mib"], process_s, extra=payload
    )


def required(m: Measure) -> Measure:
    if not m.ok:
        raise SystemExit(f"{m.label}: {m.note}")
    return m


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def print_table(rows: list[Measure]) -> None:
    header = ("rows", "seconds", "rows/s", "peak RSS MiB", "process s")
    width = max(len(r.label) for r in rows) + 2
    print(f"\n{'step':<{width}}" + "".join(f"{h:>14}" for h in header))
    for r in rows:
        if r.note:
            print(f"{r.label:<{width}}  {r.note}")
            continue
        cells = (
            fmt(r.rows, ",d"),
            fmt(r.seconds, ".2f"),
            fmt(r.rate, ",.0f"),
            fmt(r.peak_mib, ",.0f"),
            fmt(r.process_s, ".2f"),
        )
        print(f"{r.label:<{width}}" + "".join(f"{c:>14}" for c in cells))


@contextmanager
def workdir(keep: Path | None, prefix: str) -> Iterator[Path]:
    if keep is None:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            yield Path(tmp)
        return
    keep.mkdir(parents=True, exist_ok=True)
    if any(keep.iterdir()):
        raise SystemExit(f"--keep {keep}: the directory must be new or empty")
    yield keep.resolve()
    print(f"kept in {keep.resolve()}")


def cli(
    script: str, doc: str, steps: dict[str, Step], run_all: Callable[[Context], None], prefix: str
) -> None:
    """Drive all steps, or (as `--step NAME --work DIR --result FILE`) run one in this process."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep it")
    parser.add_argument("--step", choices=sorted(steps), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        payload = steps[args.step](Context(Path(script), args.work, args.scale))
        payload.setdefault("peak_mib", peak_mib())
        payload["process_peak_mib"] = peak_mib()
        args.result.write_text(json.dumps(payload))
        return
    with workdir(args.keep, prefix) as work:
        run_all(Context(Path(script), work, args.scale))
