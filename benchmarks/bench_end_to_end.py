"""End to end: `spotify-lakehouse` as users call it, at several scales, from one invocation.

    .venv/bin/python benchmarks/bench_end_to_end.py [--scales 0.004 1 3 [10]]
        [--history-days 90 320 1095] [--layers-scale 1] [--remote-scale 3] [--freshness-rounds 3]
        [--memory-limit 6] [--keep DIR]

For each scale, on a fresh SPOTIFY_HOME: `source init` (the default 90-day history, ending two
days ago), the initial `run`, `source simulate --days 1`, `run` after that day and `run` with
nothing changed. Then, each on a fresh SPOTIFY_HOME of its own:

- the first load of histories of several lengths: `source init --scale 0.002 --history-days N`
  (ending yesterday) and `run`, with what it left per partition (Dagster's events, parquet
  files) and the size of Dagster's storage; then, between successive lengths, the cost of each
  partition added (the slope of wall and CPU seconds), which a run's fixed start-up does not
  blur as the whole run divided by its partitions does (bench_history.py breaks a long first
  load down by step);
- the sum of the layers' work at one scale, from the steps of bench_gold.py (the initial bronze
  load of every table, the full silver build, the full gold build; each timed after its imports),
  which the initial `run` is compared with;
- the initial `run` at one scale against a separate Spark Connect server
  (`SAIL_MODE=local-cluster sail spark server`, via SPOTIFY_SPARK_REMOTE);
- freshness: bench_freshness.py (scale 0.1, the arrival sensor on), its median latency.

Every command is a subprocess: "seconds" is its wall time, start-up included; "CPU s" the user +
system seconds of its process tree (which a shared machine's load inflates far less: compare these
when the loads differ; the remote row counts the CLI's alone); "load" the 1-min load average as it
ended; "peak GiB" the peak resident memory of its whole process tree (polled every 50 ms; over
--memory-limit GiB the tree is SIGKILLed and the row says so; the remote row adds the server's own
peak and CPU seconds). A flag set to 0 skips its part, so the script can be run part by part.
Not a test: run it on the reference machine and record the output in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

from harness import Bookkeeping, Context, bookkeeping, measure, workdir

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the process helpers the tests use: tests/helpers/processes.py

from tests.helpers.processes import cpu_seconds, run_bounded, sail_cluster, tree_rss  # noqa: E402

CLI = str(Path(sys.executable).with_name("spotify-lakehouse"))
BENCH = Path(__file__).resolve().parent
GIB = 2**30
PEAK_GOAL_GIB = 2.0
TIMEOUT_S = 3 * 3600
RUN_STEPS = ("initial run", "run after one simulated day", "run with nothing changed")


@dataclass
class Row:
    """One line of the table: a command's figures, its goal and whether they meet it."""

    scale: str
    step: str
    seconds: float | None = None
    peak_gib: float | None = None
    cpu_s: float | None = None  # user + system seconds of the command's process tree
    load: float | None = None  # the 1-min load average as the command ended
    goal: str = ""
    met: bool | None = None
    note: str = ""  # what else was measured
    error: str = ""  # why the command did not finish: its figures are not a result

    @property
    def verdict(self) -> str:
        return {None: "", True: "met", False: "NOT met"}[self.met]


def children_cpu() -> float:
    """User + system seconds of this process's waited-for children and their descendants."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


@contextmanager
def cpu_and_load(row: Row) -> Iterator[Row]:
    """Fill in `row`'s CPU seconds and load average with those of the subprocesses the block
    runs (and waits for)."""
    before = children_cpu()
    yield row
    row.cpu_s, row.load = children_cpu() - before, os.getloadavg()[0]


class Lakehouse:
    """`spotify-lakehouse` on one SPOTIFY_HOME, each command timed with its tree's peak RSS."""

    def __init__(self, home: Path, scale: float, memory_limit: float, **env: str) -> None:
        self.home, self.scale, self.limit = home, scale, memory_limit
        caller = {k: v for k, v in os.environ.items()
                  if not k.startswith("SPOTIFY_") and k != "DAGSTER_HOME"}  # fmt: skip
        # PYTHONPATH: the CLI runs this checkout's code, whatever the venv has installed.
        self.env = {**caller, "PYTHONPATH": str(REPO), "SPOTIFY_HOME": str(home), **env}

    def __call__(self, label: str, *args: str) -> Row:
        print(f"scale {self.scale:g}: {label} ...", file=sys.stderr, flush=True)
        row = Row(f"{self.scale:g}", label)
        with cpu_and_load(row):
            started = time.perf_counter()
            done = run_bounded([CLI, *args], self.limit, env=self.env, timeout=TIMEOUT_S)
            row.seconds, row.peak_gib = time.perf_counter() - started, done.peak_gib
        print(
            f"  {row.seconds:.1f} s, {row.cpu_s:.1f} CPU s (load {row.load:.1f}), "
            f"peak {done.peak_gib:.2f} GiB",
            file=sys.stderr,
            flush=True,
        )
        if done.killed_for_memory:
            row.error = f"killed: its processes passed {self.limit:g} GiB"
        elif done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            row.error = f"failed (exit {done.returncode}): {tail[:90]}"
        return row

    def init(self, end: datetime, history_days: int | None = None) -> Row:
        args = ["source", "init", "--scale", str(self.scale), "--end-date", end.date().isoformat()]
        if history_days is not None:
            args += ["--history-days", str(history_days)]
        return self("source init", *args)


def days_ago(n: int) -> datetime:
    return datetime.now(UTC) - timedelta(days=n)


def judge(row: Row, goal_s: float | None, text: str, peak: bool = True) -> Row:
    """Set the row's goal: at most `goal_s` seconds and, for runs, at most 2 GiB at peak."""
    if row.seconds is None:
        return row
    parts = [text] if text else []
    met = True
    if goal_s is not None:
        met = row.seconds <= goal_s
    if peak and row.peak_gib is not None:
        parts.append(f"peak ≤ {PEAK_GOAL_GIB:g} GiB")
        met = met and row.peak_gib <= PEAK_GOAL_GIB
    row.goal, row.met = "; ".join(parts), met and not row.error
    return row


def scale_rows(work: Path, scale: float, limit: float) -> list[Row]:
    """Initial run, run after one simulated day, run with nothing changed."""
    cli = Lakehouse(work / f"scale-{scale:g}", scale, limit)
    init = cli.init(days_ago(2))
    if init.error:
        return [init]
    initial = cli("initial run", "run")
    if initial.error:
        return [init, initial]
    simulated = cli("source simulate --days 1", "source", "simulate", "--days", "1")
    after_day = cli("run after one simulated day", "run")
    idle = cli("run with nothing changed", "run")
    return [init, initial, simulated, after_day, idle]


FIRST_LOAD_SCALE = 0.002
FIRST_LOAD_GOAL_S = 15.0  # issue 13: a first load of 320 days
FIRST_LOAD_GOAL_DAYS = 320
PER_PARTITION_GOAL_MS = 20.0


@dataclass(frozen=True)
class FirstLoad:
    """A first `run` over a history of `days` days: its row and what it left."""

    days: int
    row: Row
    kept: Bookkeeping | None

    @property
    def partitions(self) -> int:
        return self.days + 2  # the history's days, its end day (yesterday) and today


def first_load(work: Path, days: int, limit: float) -> tuple[Row, FirstLoad]:
    """`source init --history-days days` (ending yesterday) at scale 0.002 and the first `run`."""
    cli = Lakehouse(work / f"history-{days}", FIRST_LOAD_SCALE, limit)
    init = cli.init(days_ago(1), days)
    load = cli(f"first run, {days} days of history", "run")
    if load.seconds is None or load.error:
        return init, FirstLoad(days, load, None)
    loaded = FirstLoad(days, load, bookkeeping(cli.home))
    if days == FIRST_LOAD_GOAL_DAYS:
        judge(load, FIRST_LOAD_GOAL_S, f"≤ {FIRST_LOAD_GOAL_S:g} s")
    kept, n = loaded.kept, loaded.partitions
    planned, materialized = (
        kept.events[f"ASSET_{kind}"] for kind in ("MATERIALIZATION_PLANNED", "MATERIALIZATION")
    )
    load.note = (
        f"{n} partitions, the whole run {load.seconds / n * 1000:.0f} ms each; per partition "
        f"{kept.events.total() / n:.1f} Dagster events ({planned / n:.1f} planned, "
        f"{materialized / n:.1f} materializations), "
        f"{kept.parquet_files / n:.1f} parquet files; Dagster storage "
        f"{kept.dagster_bytes / 2**20:.0f} MB"
    )
    return init, loaded


def marginal_row(short: FirstLoad, long: FirstLoad) -> Row:
    """What each partition added costs: the slope between two first loads of the same scale,
    which leaves out what any first `run` pays whatever its days (start-up, the same steps)."""
    step = f"first run, per partition added ({short.days} -> {long.days} days)"
    row = Row(f"{FIRST_LOAD_SCALE:g}", step, goal=f"≤ {PER_PARTITION_GOAL_MS:g} ms per partition")
    a, b = short.row, long.row
    if (
        a.seconds is None or b.seconds is None or a.cpu_s is None or b.cpu_s is None
        or short.kept is None or long.kept is None
    ):  # fmt: skip
        row.error = "a first load did not finish"
        return row
    added = long.partitions - short.partitions
    wall_ms = (b.seconds - a.seconds) / added * 1000
    cpu_ms = (b.cpu_s - a.cpu_s) / added * 1000
    fixed_s = a.seconds - wall_ms * short.partitions / 1000
    fixed_cpu = a.cpu_s - cpu_ms * short.partitions / 1000
    events = long.kept.events.total() - short.kept.events.total()
    kib = (long.kept.event_bytes - short.kept.event_bytes) / 1024
    files = long.kept.parquet_files - short.kept.parquet_files
    row.load, row.met = b.load, wall_ms <= PER_PARTITION_GOAL_MS
    row.note = (
        f"{wall_ms:.1f} ms of wall, {cpu_ms:.1f} ms of CPU per partition added (what any first "
        f"run pays: {fixed_s:.1f} s, {fixed_cpu:.1f} CPU s); per partition added "
        f"{events / added:.1f} Dagster events "
        f"({kib / added:.1f} KiB), {files / added:.1f} parquet files"
    )
    return row


def history_rows(work: Path, lengths: list[int], limit: float) -> list[Row]:
    """The first loads of histories of each length, then the slope between successive ones."""
    rows: list[Row] = []
    loads: list[FirstLoad] = []
    for days in sorted(lengths):
        init, loaded = first_load(work, days, limit)
        rows += [init, loaded.row]
        loads.append(loaded)
    return rows + [marginal_row(a, b) for a, b in pairwise(loads)]


def layers_row(work: Path, scale: float) -> Row:
    """The sum of the layer benchmarks' work: bench_gold.py's bronze, silver and gold steps."""
    ctx = Context(BENCH / "bench_gold.py", work / f"layers-{scale:g}", scale)
    ctx.work.mkdir(parents=True)
    parts, cpu = {}, {}
    for step in ("create", "bronze", "silver", "gold-build"):
        with cpu_and_load(Row(f"{scale:g}", step)) as used:
            done = measure(
                f"layers at scale {scale:g}: {step}", step, ctx, {"PYTHONPATH": str(REPO)}
            )
        if not done.ok:
            return Row(f"{scale:g}", "sum of the layers' work", error=f"{step}: {done.note}")
        parts[step], cpu[step] = done, used
    steps = ("bronze", "silver", "gold-build")
    return Row(
        f"{scale:g}",
        "sum of the layers' work",
        sum(parts[s].seconds or 0 for s in steps),
        max(parts[s].peak_mib or 0 for s in steps) / 1024,
        # Of the steps' whole processes, imports included.
        cpu_s=sum(cpu[s].cpu_s or 0 for s in steps),
        load=cpu["gold-build"].load,
        note="bronze {:.1f} + silver {:.1f} + gold {:.1f} s (bench_gold.py steps)".format(
            *(parts[s].seconds for s in steps)
        ),
    )


@contextmanager
def peak_of(pid: int, limit_gib: float) -> Iterator[list[int]]:
    """The peak RSS of a process tree while the block runs: [bytes], filled in at its end. Over
    `limit_gib` the tree is SIGKILLed, as `run_bounded` does."""
    peak, stop = [0], threading.Event()

    def poll() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss(pid))
            if peak[0] > limit_gib * GIB:
                os.killpg(pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    try:
        yield peak
    finally:
        stop.set()
        watcher.join()


def remote_rows(work: Path, scale: float, limit: float) -> list[Row]:
    """The initial run at `scale` against a Sail server in local-cluster mode."""
    home = work / f"remote-{scale:g}"
    home.mkdir(parents=True)
    with sail_cluster(home / "sail.log") as (url, server):
        cli = Lakehouse(home, scale, limit, SPOTIFY_SPARK_REMOTE=url)
        init = cli.init(days_ago(2))
        before = cpu_seconds(server)
        with peak_of(server, limit) as server_peak:
            run = cli("initial run, Spark Connect server (Sail local-cluster)", "run")
        server_cpu = cpu_seconds(server) - before
    if run.seconds is not None:
        run.note = (
            f"the server's own peak {server_peak[0] / GIB:.2f} GiB, its CPU {server_cpu:.1f} s"
        )
    return [init, run]


def freshness_row(rounds: int, limit: float) -> Row:
    """bench_freshness.py at scale 0.1: the median latency from a source change to gold."""
    print(f"freshness, {rounds} rounds ...", file=sys.stderr, flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, str(BENCH / "bench_freshness.py"), "--rounds", str(rounds)]
    row = Row("0.1", "source change → gold, arrival sensor on (median)")
    with cpu_and_load(row):
        done = run_bounded(command, limit, env=env, timeout=TIMEOUT_S)
    row.peak_gib = done.peak_gib
    found = re.search(r"latency: median ([\d.]+) s, max ([\d.]+) s", done.stdout)
    if done.returncode != 0 or found is None:
        print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
        row.error = f"bench_freshness.py failed (exit {done.returncode})"
        return row
    row.seconds = float(found.group(1))
    row.note = f"max {found.group(2)} s over {rounds} rounds; peak is the whole dg dev tree"
    return judge(row, 10.0, "≤ 10 s", peak=False)


def find(rows: list[Row], scale: float, step: str) -> Row | None:
    return next((r for r in rows if r.scale == f"{scale:g}" and r.step == step), None)


def judge_all(rows: list[Row]) -> None:
    """The issue's goals, for the rows this invocation measured."""
    init_1, initial_1 = find(rows, 1, "source init"), find(rows, 1, "initial run")
    layers = next((r for r in rows if r.step == "sum of the layers' work"), None)
    for row in rows:
        if row.step not in (
            "initial run",
            "run after one simulated day",
            "run with nothing changed",
        ):
            continue
        scale = float(row.scale)
        goal_s, text = None, ""
        if row.step == "run with nothing changed":
            goal_s, text = 2.5, "≤ 2.5 s"
        elif row.step == "run after one simulated day":
            initial = find(rows, scale, "initial run")
            if initial and initial.seconds:
                goal_s, text = 0.1 * initial.seconds, "≤ 10% of the initial run"
            if initial and initial.cpu_s and row.cpu_s is not None:
                row.note = f"CPU: {row.cpu_s / initial.cpu_s:.0%} of the initial run's"
        elif scale <= 0.004:
            goal_s, text = 10.0, "≤ 10 s"
        elif layers and layers.seconds and layers.scale == row.scale:
            goal_s, text = 1.2 * layers.seconds, "≤ 1.2 x the layers' work"
        elif scale > 1 and initial_1 and initial_1.seconds:
            factor = 3 if scale <= 3 else 10
            goal_s, text = factor * initial_1.seconds, f"≤ {factor} x scale 1"
        judge(row, goal_s, text)
    for row in rows:
        if row.step.startswith("initial run, Spark Connect"):
            judge(row, None, "")
        if row.step == "source init" and float(row.scale) >= 10 and init_1 and init_1.seconds:
            judge(row, 10 * init_1.seconds, "≤ 10 x scale 1", peak=False)


def print_rows(rows: list[Row]) -> None:
    width = max(len(r.step) for r in rows) + 2
    print(
        f"\n{'scale':<7}{'step':<{width}}{'seconds':>9}{'CPU s':>9}{'load':>6}{'peak GiB':>10}"
        f"  {'goal':<42}verdict"
    )
    for r in rows:
        figures = "".join(
            f"{'—' if value is None else format(value, spec):>{width_}}"
            for value, spec, width_ in (
                (r.seconds, ".1f", 9), (r.cpu_s, ".1f", 9), (r.load, ".1f", 6),
                (r.peak_gib, ".2f", 10),
            )
        )  # fmt: skip
        print(f"{r.scale:<7}{r.step:<{width}}{figures}  {r.goal:<42}{r.verdict}")
        for text in (r.error, r.note):
            if text:
                print(f"{'':<7}  {text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--scales", type=float, nargs="*", default=[0.004, 1.0, 3.0])
    parser.add_argument(
        "--history-days",
        type=int,
        nargs="*",
        default=[90, FIRST_LOAD_GOAL_DAYS, 3 * 365],
        help="first loads of these lengths at scale 0.002, and the cost per partition added "
        "between successive ones (0: skip)",
    )
    parser.add_argument("--layers-scale", type=float, default=1.0, help="0: skip")
    parser.add_argument("--remote-scale", type=float, default=3.0, help="0: skip")
    parser.add_argument("--freshness-rounds", type=int, default=3, help="0: skip")
    parser.add_argument("--memory-limit", type=float, default=6.0, metavar="GIB")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep it")
    args = parser.parse_args()
    if not shutil.which(CLI):
        raise SystemExit(f"{CLI} not found: install the project into this venv (make test)")
    rows: list[Row] = []
    load = os.getloadavg()
    with workdir(args.keep, "spotify-bench-e2e-") as work:
        for scale in args.scales:
            rows += scale_rows(work, scale, args.memory_limit)
        if args.layers_scale:
            rows.append(layers_row(work, args.layers_scale))
        if args.remote_scale:
            rows += remote_rows(work, args.remote_scale, args.memory_limit)
        if lengths := [days for days in args.history_days if days]:
            rows += history_rows(work, lengths, args.memory_limit)
    if args.freshness_rounds:
        rows.append(freshness_row(args.freshness_rounds, args.memory_limit))
    judge_all(rows)
    print_rows(rows)
    after = os.getloadavg()
    figures = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(load, after, strict=True))
    print(f"\nload average before/after (1, 5, 15 min): {figures}; {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
