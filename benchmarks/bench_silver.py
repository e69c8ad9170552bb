"""Bronze-to-silver figures for FactStream: Sail against classic JVM Spark, side by side.

    .venv/bin/python benchmarks/bench_silver.py [--scale 1] [--keep DIR]

Creates a scale-S SQLite source (history ending two days ago), loads bronze for every table with
`LocalCopyRunner`, then measures, for table FactStream, all its partitions at once:

- Sail, full silver build: `SilverStore.refresh(days)` into an empty lake: Delta valid rows and
  quarantine (replaceWhere), then the counts it reports; the split of its time is printed below
  the table;
- Sail, transform + parquet write: the same live bronze files (`SilverStore.read_bronze`), the
  pure `transform`, `valid` and `quarantine` written as parquet to a scratch folder — the
  engine-neutral figure;
- JVM Spark, transform + parquet write: the same on a classic `local[2]` session reading the same
  bronze parquet files; the JVM start-up is its own row;
- Sail, replay of one partition: `refresh((d, d))` of the busiest day on the built table.

Each step runs in a fresh subprocess: "seconds" is the work itself, timed inside the subprocess
after its imports and session start-up; "process s" is the subprocess's wall time including
interpreter start-up, imports and the engine; the peak RSS is the subprocess's own (Sail runs in
it) plus, for JVM Spark, the peak of the JVM process it launches. `--keep DIR` works in DIR (new
or empty) and leaves the source, the lake and the parquet outputs there. Not a test: run it on
the reference machine and record the output in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

SEED = 42
FACT = "FactStream"
RUN_ID = "bench"

# Goals: Sail's bronze-to-silver build of FactStream at scale 1; peak memory as for bronze.
GOAL_ROWS_PER_S = 1_000_000
GOAL_PEAK_MIB = 2048

Payload = dict[str, Any]


@dataclass(frozen=True)
class Context:
    """What a step subprocess is told: the work directory (its SPOTIFY_HOME) and the scale."""

    work: Path
    scale: float

    @property
    def source(self) -> Path:
        return self.work / "source.db"  # checked against Settings.embedded_source_path

    @property
    def out(self) -> Path:
        return self.work / "out"  # the parquet outputs of the engine-neutral steps


# --- steps: each runs in its own subprocess -------------------------------------------------
# Linux keeps ru_maxrss across fork and exec: a child starts from its parent's peak. So the driver
# stays small (it imports nothing of the project; creating the source and loading bronze are
# subprocesses too), and each step's peak is its own.


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _settings(ctx: Context) -> Any:
    from spotify_assets.settings import Settings

    settings = Settings.from_env({"SPOTIFY_HOME": str(ctx.work)})
    assert settings.embedded_source_path == ctx.source, settings.embedded_source_path
    return settings


def _lake(ctx: Context) -> Any:
    from resources.lake import LakeStorage

    return LakeStorage(url=_settings(ctx).lake_url)


def _fact() -> Any:
    from spotify_assets.catalog import CATALOG

    return CATALOG[FACT]


def _all_days() -> tuple[date, date]:
    return _fact().partition_start, datetime.now(UTC).date()


def _bronze_files(ctx: Context) -> list[Any]:
    """FactStream's live bronze files; after a single load every file is fully live."""
    from resources.bronze_store import BronzeStore

    files = list(BronzeStore(_lake(ctx), _fact()).current().files)
    partial = [f.path for f in files if not f.fully_live]
    assert not partial, f"bronze files not fully live after one load: {partial[:3]}"
    return files


def _sail() -> tuple[Any, float]:
    from resources.spark import SparkResource

    started = time.perf_counter()
    spark = SparkResource().session()
    return spark, time.perf_counter() - started


def _timed(into: dict[str, float], label: Callable[..., str], method: Callable) -> Callable:
    """`method`, adding its wall time to `into[label(*args)]` at each call."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            key = label(*args, **kwargs)
            into[key] = into.get(key, 0.0) + time.perf_counter() - started

    return wrapper


def _refresh(ctx: Context, days: tuple[date, date]) -> Payload:
    """`SilverStore.refresh(days)`, with the time of its parts: planning the bronze read, the
    two Delta writes, and the rest (the counts it reports, each a query of its own)."""
    from resources.silver_store import SilverStore

    spark, startup = _sail()
    store = SilverStore(_lake(ctx), spark, _fact())
    parts: dict[str, float] = {}
    # Instance attributes shadow the methods `refresh` calls: the store's code is unchanged.
    store.read_bronze = _timed(parts, lambda *_: "plan the bronze read", store.read_bronze)
    store._replace = _timed(
        parts,
        lambda _frame, path, _days: (
            "write quarantine (Delta)" if path == store.quarantine_path else "write valid (Delta)"
        ),
        store._replace,
    )
    started = time.perf_counter()
    result = store.refresh(days, RUN_ID)
    seconds = time.perf_counter() - started
    parts["counts and rule counts"] = seconds - sum(parts.values())
    return {
        "rows": result.bronze_rows,
        "seconds": seconds,
        "startup": startup,
        "silver_rows": result.silver_rows,
        "quarantined": result.quarantined,
        "failures": result.failures,
        "parts": parts,
    }


def step_create(ctx: Context) -> Payload:
    """A scale-S SQLite source whose history ends two days ago."""
    from spotify_assets.cli import source_init

    end = datetime.now(UTC).date() - timedelta(days=2)
    created = source_init(_settings(ctx), ctx.scale, SEED, end, force=True)
    return {"rows": created["rows"], "seconds": created["seconds"], "history": created["history"]}


def step_bronze(ctx: Context) -> Payload:
    """The initial load of every table into bronze."""
    from resources.copy_runner import LocalCopyRunner
    from resources.source_db import SourceDatabase, sqlite_connection_string
    from spotify_assets.catalog import CATALOG

    settings = _settings(ctx)
    runner = LocalCopyRunner(
        source=SourceDatabase(
            connection_string=sqlite_connection_string(settings.embedded_source_path)
        ),
        lake=_lake(ctx),
        safety_lag_seconds=0,
    )
    started = time.perf_counter()
    results = {t.name: runner.copy(t, None, RUN_ID, from_watermark=True) for t in CATALOG}
    return {
        "rows": sum(r.rows_read for r in results.values()),
        "seconds": time.perf_counter() - started,
        "fact_rows": results[FACT].rows_read,
        "fact_files": len(results[FACT].files),
        "fact_partitions": len(results[FACT].partitions),
    }


def step_sail_build(ctx: Context) -> Payload:
    """Sail: the full silver build of every partition, Delta valid rows and quarantine."""
    return _refresh(ctx, _all_days())


def step_sail_replay(ctx: Context) -> Payload:
    """Sail: a rerun of the busiest day on the table the full build left."""
    files = _bronze_files(ctx)
    rows: dict[date, int] = {}
    for f in files:
        rows[f.partition] = rows.get(f.partition, 0) + f.rows
    day = max(rows, key=lambda d: (rows[d], d))
    return {**_refresh(ctx, (day, day)), "day": day.isoformat()}


def _transform_and_write(spark: Any, bronze: Any, target: Path) -> dict[str, float]:
    """The pure transform, then `valid` and `quarantine` as parquet (each a query of its own)."""
    from spotify_assets.silver import transform

    parts = {}
    started = time.perf_counter()
    frames = transform(_fact(), bronze, RUN_ID)
    parts["plan the transform"] = time.perf_counter() - started
    for name, frame in (("valid", frames.valid), ("quarantine", frames.quarantine)):
        started = time.perf_counter()
        frame.write.mode("overwrite").parquet(str(target / name))
        parts[f"write {name} (parquet)"] = time.perf_counter() - started
    return parts


def _parquet_rows(folder: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in folder.rglob("*.parquet"))


def _engine_payload(ctx: Context, target: Path, parts: dict[str, float], startup: float) -> Payload:
    return {
        "rows": sum(f.rows for f in _bronze_files(ctx)),
        "seconds": sum(parts.values()),
        "startup": startup,
        "parts": parts,
        "silver_rows": _parquet_rows(target / "valid"),
        "quarantined": _parquet_rows(target / "quarantine"),
    }


def step_sail_parquet(ctx: Context) -> Payload:
    """Sail: read the live bronze files, transform, write valid and quarantine as parquet."""
    from resources.silver_store import SilverStore

    spark, startup = _sail()
    target = ctx.out / "sail"
    started = time.perf_counter()
    bronze = SilverStore(_lake(ctx), spark, _fact()).read_bronze(_all_days())
    parts = {"plan the bronze read": time.perf_counter() - started}
    parts |= _transform_and_write(spark, bronze, target)
    return _engine_payload(ctx, target, parts, startup)


def _vm_hwm_mib(pid: int) -> float:
    """The peak resident set of another process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def step_jvm_parquet(ctx: Context) -> Payload:
    """Classic JVM Spark, local[2]: read the same bronze files, transform, write parquet."""
    from pyspark.sql import SparkSession

    started = time.perf_counter()
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    startup = time.perf_counter() - started
    lake = _lake(ctx)
    paths = [lake.path(f.path) for f in _bronze_files(ctx)]
    target = ctx.out / "jvm"
    started = time.perf_counter()
    bronze = spark.read.parquet(*paths)
    parts = {"plan the bronze read": time.perf_counter() - started}
    parts |= _transform_and_write(spark, bronze, target)
    jvm_pid = spark._jvm.java.lang.ProcessHandle.current().pid()
    jvm_peak = _vm_hwm_mib(jvm_pid)
    spark.stop()
    payload = _engine_payload(ctx, target, parts, startup)
    payload["peak_mib"] = _peak_mib() + jvm_peak  # the Python driver plus the JVM it launched
    payload["jvm_peak_mib"] = jvm_peak
    return payload


STEPS: dict[str, Callable[[Context], Payload]] = {
    "create": step_create,
    "bronze": step_bronze,
    "sail-build": step_sail_build,
    "sail-parquet": step_sail_parquet,
    "jvm-parquet": step_jvm_parquet,
    "sail-replay": step_sail_replay,
}


def run_step(step: str, ctx: Context, result: Path) -> None:
    """Inside the subprocess: run one step and leave its figures in `result` as JSON."""
    payload = STEPS[step](ctx)
    payload.setdefault("peak_mib", _peak_mib())
    result.write_text(json.dumps(payload))


# --- the driver -----------------------------------------------------------------------------


@dataclass
class Measure:
    """One line of the table; `note` replaces the figures of a failed step."""

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


def measure(label: str, step: str, ctx: Context) -> Measure:
    """Run one step in a fresh interpreter and collect the figures it took of itself."""
    result = ctx.work / f"result-{step}-{time.monotonic_ns()}.json"
    command = [sys.executable, __file__, "--step", step, "--scale", str(ctx.scale)]
    command += ["--work", str(ctx.work), "--result", str(result)]
    print(f"running: {label} ...", file=sys.stderr, flush=True)
    load = os.getloadavg()[0]  # the machine is shared: other jobs slow every figure down
    started = time.perf_counter()
    done = subprocess.run(command, env=os.environ, capture_output=True, text=True, check=False)
    process_s = time.perf_counter() - started
    if done.returncode != 0 or not result.exists():
        print(done.stderr[-4000:], file=sys.stderr)
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Measure(label, note=f"failed (exit {done.returncode}): {tail[:100]}")
    payload = json.loads(result.read_text())
    payload["load"] = load
    return Measure(
        label, payload["rows"], payload["seconds"], payload["peak_mib"], process_s, extra=payload
    )


def startup_row(label: str, of: Measure) -> Measure:
    """The engine start-up a step paid before its timed work (its process is the step's)."""
    if not of.ok:
        return Measure(label, note=of.note)
    return Measure(label, seconds=of.extra["startup"])


def _required(m: Measure) -> Measure:
    if not m.ok:
        raise SystemExit(f"{m.label}: {m.note}")
    return m


def _fmt(value: float | None, spec: str) -> str:
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
            _fmt(r.rows, ",d"),
            _fmt(r.seconds, ".2f"),
            _fmt(r.rate, ",.0f"),
            _fmt(r.peak_mib, ",.0f"),
            _fmt(r.process_s, ".2f"),
        )
        print(f"{r.label:<{width}}" + "".join(f"{c:>14}" for c in cells))


def print_notes(steps: list[Measure]) -> None:
    print()
    for m in steps:
        if not m.ok:
            continue
        parts = ", ".join(f"{k} {v:.2f}" for k, v in m.extra["parts"].items())
        print(
            f"{m.label}: {m.extra['silver_rows']:,} valid, {m.extra['quarantined']:,} "
            f"quarantined; seconds = {parts}; 1-min load average at its start "
            f"{m.extra['load']:.1f}"
        )
        if "jvm_peak_mib" in m.extra:
            print(f"  peak RSS = Python driver + JVM ({m.extra['jvm_peak_mib']:,.0f} MiB)")


def print_goals(build: Measure, steps: list[Measure]) -> None:
    peak = max((m.peak_mib or 0) for m in steps)
    checks = [
        (f"Sail bronze→silver (full build) ≥ {GOAL_ROWS_PER_S:,} rows/s at scale 1: "
         f"{_fmt(build.rate, ',.0f')}", (build.rate or 0) >= GOAL_ROWS_PER_S),
        (f"peak memory ≤ {GOAL_PEAK_MIB / 1024:g} GiB: {peak:,.0f} MiB", peak <= GOAL_PEAK_MIB),
    ]  # fmt: skip
    print("goals:")
    for text, met in checks:
        print(f"  {text} — {'met' if met else 'NOT met'}")


def run_all(ctx: Context) -> None:
    source = _required(measure("create the source", "create", ctx))
    bronze = _required(measure("load bronze, 5 tables", "bronze", ctx))
    history = source.extra["history"]
    print(
        f"scale {ctx.scale:g}: {source.rows:,} source rows, history {history[0]} to {history[1]}; "
        f"bronze: {bronze.rows:,} rows in {bronze.seconds:.1f} s, {FACT} "
        f"{bronze.extra['fact_rows']:,} rows in {bronze.extra['fact_files']} files / "
        f"{bronze.extra['fact_partitions']} partitions"
    )
    build = _required(measure("Sail: full silver build (Delta)", "sail-build", ctx))
    sail = measure("Sail: transform + parquet write", "sail-parquet", ctx)
    jvm = measure("JVM Spark local[2]: transform + parquet write", "jvm-parquet", ctx)
    replay = measure("Sail: replay of one partition (Delta)", "sail-replay", ctx)
    if replay.ok:
        replay.label = f"Sail: replay of one partition ({replay.extra['day']}, Delta)"
    steps = [build, sail, jvm, replay]
    print_table(
        [
            startup_row("Sail: session start-up", build),
            build,
            sail,
            startup_row("JVM Spark: session start-up", jvm),
            jvm,
            replay,
        ]
    )
    print_notes(steps)
    print_goals(build, [m for m in steps if m.ok])


@contextmanager
def workdir(keep: Path | None) -> Iterator[Path]:
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="spotify-bench-silver-") as tmp:
            yield Path(tmp)
        return
    keep.mkdir(parents=True, exist_ok=True)
    if any(keep.iterdir()):
        raise SystemExit(f"--keep {keep}: the directory must be new or empty")
    yield keep.resolve()
    print(f"kept in {keep.resolve()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep it")
    # The driver runs each step as `--step NAME --work DIR --result FILE` in a fresh interpreter.
    parser.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        run_step(args.step, Context(args.work, args.scale), args.result)
        return
    with workdir(args.keep) as work:
        run_all(Context(work, args.scale))


if __name__ == "__main__":
    main()
