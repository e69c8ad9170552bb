"""Freshness: seconds from a source change to gold, with `dg dev` and the CDC sensor running.

    .venv/bin/python benchmarks/bench_freshness.py [--scale 0.1] [--rounds 3] [--keep DIR]

Creates a scale-S SQLite source (history ending today, UTC) and loads it with
`spotify-lakehouse run`, under an instance configured the way the CLI does it (run queue, one lake
writer at a time). Then starts `dg dev` on a free port, turns `cdc_arrival_sensor` on through
GraphQL, and lets its first evaluation finish — it has no cursor yet, so it plans every table,
and requests a "warm-up" run only of what gold is behind on (usually nothing).

Each round waits a random 0-5 s (a change may arrive at any point of the sensor's 5-s
cycle), commits the next simulated hour of changes (new streams and a few dimension changes; no
late and no dirty rows, so every new stream must reach gold) and takes T0 when the commit
returns. It polls `gold/fact_stream` with delta-rs every 0.5 s until all the new stream ids are
there; latency = first seen - T0. The split comes from the instance, through GraphQL:

- tick wait: T0 to the start of the sensor evaluation that saw the change;
- sensor eval: that evaluation, up to the creation of its run;
- queue: run created to launched (the run queue's dequeue loop);
- launch: launched to started (the run worker's process start-up and code load);
- run to gold: run started to the new streams seen in gold;
- and the whole run, started to ended (gold's aggregates come after the fact);
- CPU s: user + system seconds of the whole `dg dev` process tree (the run worker included),
  from the commit to the end of the round's runs: what the figures above cost, whatever the load.

Before the sensor is turned on and again after the warm-up (no change in the source), the CPU
time of the whole `dg dev` process group is sampled over `--idle-seconds` (default 60): what
it burns idle without and with the sensor ticking.

The step timings of each round's run are printed below the table. `--keep DIR` works in DIR
(new or empty) and leaves the source, the lake, the instance and `dagster-dev.log` there. Not a
test: run it on the reference machine and record the output in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
from deltalake import DeltaTable
from harness import fmt, workdir

from spotify_assets.cli.commands import dagster_instance
from spotify_assets.orchestration.resources import source_database
from spotify_assets.orchestration.sensors.automation import SENSOR_DAEMON_LOOP_SECONDS
from spotify_assets.orchestration.settings import Settings
from spotify_assets.source.simulator import SimulationRates, simulate

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the dg dev helpers the tests use: tests/helpers/dagster_dev.py

from tests.helpers.dagster_dev import group_gone  # noqa: E402

SENSOR = "cdc_arrival_sensor"
FACT = "FactStream"
GOAL_SECONDS = 10.0  # median (issue 13)
POLL_SECONDS = 0.5
CHECK_EVERY_POLLS = 10  # a failed run is looked for every 5 s, not at each poll
# One hour of simulated time per round: 50-120 new streams at scale 0.1, and the rounds stay
# within the history's last (today's) partition, which is open (end_offset=1).
SLICES_PER_DAY = 24
MAX_ROUNDS = SLICES_PER_DAY - 1
# Every new stream must reach gold: late rows are not in an incremental run's window, and dirty
# ones may be quarantined or dropped by gold's expectations.
RATES = SimulationRates(late_fraction=0.0, dirty_fraction=0.0)
# An evaluation takes a few seconds at most: one that started this long before T0 cannot have
# read the change, and the previous round's ended long before.
TICK_SECONDS = 5.0
SEED = 1000  # plus the round: each round's hour draws its own changes and start delay
# Ticks come at each loop of the sensor daemon (the sensor's minimum interval is just under it).
TICK_CYCLE_SECONDS = SENSOR_DAEMON_LOOP_SECONDS
ACTIVE_RUN_STATUSES = ["QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"]
TERMINAL_RUN_STATUSES = {"SUCCESS", "FAILURE", "CANCELED"}

LOCATIONS_QUERY = """
query {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on RepositoryLocation { repositories { name sensors { name } } }
          ... on PythonError { message }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""
START_SENSOR = """
mutation ($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status } }
    ... on PythonError { message }
  }
}
"""
TICKS_QUERY = """
query ($selector: SensorSelector!, $after: Float) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor {
      sensorState {
        ticks(afterTimestamp: $after, limit: 100) {
          timestamp status runIds error { message }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""
RUNS_QUERY = """
query ($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs {
      results {
        runId status creationTime
        tags { key value }
        stats { __typename ... on RunStatsSnapshot { launchTime startTime endTime } }
        stepStats { stepKey startTime endTime }
      }
    }
    ... on PythonError { message }
  }
}
"""


class GraphQL:
    """The webserver's GraphQL endpoint; errors of any kind raise."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/graphql"

    def __call__(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            self.url, body, {"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        if answer.get("errors"):
            raise RuntimeError(f"GraphQL: {answer['errors']}")
        return answer["data"]


def _value(data: dict[str, Any], field: str, typename: str) -> dict[str, Any]:
    """A union field's value, or the error it returned instead."""
    value = data[field]
    if value["__typename"] != typename:
        raise RuntimeError(f"{field}: {value['__typename']}: {value.get('message', '')}")
    return value


@dataclass
class Run:
    run_id: str
    status: str
    created: float
    launched: float | None
    started: float | None
    ended: float | None
    describe: str
    steps: list[dict[str, Any]]

    @classmethod
    def of(cls, node: dict[str, Any]) -> Run:
        stats = node["stats"] if node["stats"]["__typename"] == "RunStatsSnapshot" else {}
        tags = {t["key"]: t["value"] for t in node["tags"]}
        return cls(
            node["runId"],
            node["status"],
            node["creationTime"],
            stats.get("launchTime"),
            stats.get("startTime"),
            stats.get("endTime"),
            tags.get("spotify/run", ""),
            node["stepStats"],
        )

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_RUN_STATUSES

    def split(self) -> str:
        marks = [self.created, self.launched, self.started, self.ended]
        parts = [
            f"{name} {fmt(None if a is None or b is None else b - a, '.1f')} s"
            for name, (a, b) in zip(("queue", "launch", "run"), pairwise(marks), strict=True)
        ]
        return f"{self.describe}: {', '.join(parts)}"


@dataclass
class Round:
    number: int
    load: float
    streams: int
    t0: float
    visible: float
    tick: float
    run: Run
    cpu: float  # of the `dg dev` tree, from the commit to the end of the round's runs

    @property
    def latency(self) -> float:
        return self.visible - self.t0

    def split(self) -> dict[str, float | None]:
        """The latency's parts (they add up to it) and the whole run's duration."""
        run = self.run
        marks = [self.t0, self.tick, run.created, run.launched, run.started, self.visible]
        names = ("tick wait", "sensor eval", "queue", "launch", "run to gold")
        parts = {
            name: None if start is None or end is None else end - start
            for name, (start, end) in zip(names, pairwise(marks), strict=True)
        }
        whole = None if run.started is None or run.ended is None else run.ended - run.started
        return parts | {"run total": whole}


class Dagster:
    """`dg dev` in its own process group, queried through GraphQL."""

    def __init__(self, work: Path, port: int) -> None:
        self.port = port
        self.log = work / "dagster-dev.log"
        self.gql = GraphQL(port)
        self.process: subprocess.Popen[bytes] | None = None
        self.selector: dict[str, str] = {}

    @contextmanager
    def running(self) -> Iterator[Dagster]:
        command = [str(Path(sys.executable).with_name("dg")), "dev"]
        command += ["-h", "127.0.0.1", "-p", str(self.port)]
        env = {**os.environ, "DAGSTER_DISABLE_TELEMETRY": "1"}
        with self.log.open("wb") as log:
            # A session of its own: stopping the group also stops the webserver, the daemon,
            # the code server and any run worker they started.
            self.process = subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                yield self
            except BaseException:
                print(f"--- end of {self.log.name}:", file=sys.stderr)
                print(self.log.read_text(errors="replace")[-3000:], file=sys.stderr)
                raise
            finally:
                self._stop()

    def _stop(self) -> None:
        assert self.process is not None
        group = self.process.pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                return
            if group_gone(self.process, 30.0):
                return

    def wait_loaded(self, timeout: float) -> None:
        """Until GraphQL answers and the code location has loaded; then the sensor's selector."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"dg dev exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"dg dev not ready after {timeout:.0f} s")
            try:
                workspace = _value(self.gql(LOCATIONS_QUERY), "workspaceOrError", "Workspace")
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)
                continue
            for entry in workspace["locationEntries"]:
                if entry["loadStatus"] != "LOADED":
                    continue
                location = entry["locationOrLoadError"]
                if location["__typename"] != "RepositoryLocation":
                    raise RuntimeError(f"code location {entry['name']}: {location['message']}")
                for repository in location["repositories"]:
                    if SENSOR in {s["name"] for s in repository["sensors"]}:
                        self.selector = {
                            "repositoryLocationName": entry["name"],
                            "repositoryName": repository["name"],
                            "sensorName": SENSOR,
                        }
                        return
                raise RuntimeError(f"code location {entry['name']} has no sensor {SENSOR}")
            time.sleep(1)

    def start_sensor(self) -> None:
        sensor = _value(
            self.gql(START_SENSOR, {"selector": self.selector}), "startSensor", "Sensor"
        )
        if sensor["sensorState"]["status"] != "RUNNING":
            raise RuntimeError(f"{SENSOR}: {sensor['sensorState']['status']}")

    def ticks(self, after: float) -> list[dict[str, Any]]:
        """The sensor's evaluations that started after `after`, oldest first."""
        answer = self.gql(TICKS_QUERY, {"selector": self.selector, "after": after})
        sensor = _value(answer, "sensorOrError", "Sensor")
        ticks = sensor["sensorState"]["ticks"]
        for tick in ticks:
            if tick["status"] == "FAILURE":
                raise RuntimeError(f"{SENSOR} tick failed: {tick['error']['message'][:2000]}")
        return sorted(ticks, key=lambda t: t["timestamp"])

    def runs(self, run_filter: dict[str, Any]) -> list[Run]:
        answer = _value(self.gql(RUNS_QUERY, {"filter": run_filter}), "runsOrError", "Runs")
        return [Run.of(node) for node in answer["results"]]

    def first_tick_with_runs(self, after: float, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            requested = [t for t in self.ticks(after) if t["runIds"]]
            if requested:
                return requested[0]
            time.sleep(1)
        raise RuntimeError(f"{SENSOR} requested no run within {timeout:.0f} s")

    def first_evaluation(self, after: float, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = [t for t in self.ticks(after) if t["status"] in ("SUCCESS", "SKIPPED")]
            if done:
                return done[0]
            time.sleep(1)
        raise RuntimeError(f"{SENSOR} was not evaluated within {timeout:.0f} s")

    def wait_runs(self, run_ids: list[str], timeout: float) -> list[Run]:
        if not run_ids:
            return []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.runs({"runIds": run_ids})
            if len(runs) == len(run_ids) and all(r.done for r in runs):
                failed = [r for r in runs if r.status != "SUCCESS"]
                if failed:
                    raise RuntimeError(f"run {failed[0].run_id} ended {failed[0].status}")
                return sorted(runs, key=lambda r: r.created)
            time.sleep(1)
        raise RuntimeError(f"runs {run_ids} not finished within {timeout:.0f} s")

    def raise_if_failed(self, after: float) -> None:
        failed = self.runs({"createdAfter": after, "statuses": ["FAILURE", "CANCELED"]})
        if failed:
            run = failed[0]
            raise RuntimeError(f"run {run.run_id} ({run.describe}) ended {run.status}")

    def wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.runs({"statuses": ACTIVE_RUN_STATUSES}):
            if time.monotonic() > deadline:
                raise RuntimeError(f"runs still active after {timeout:.0f} s")
            time.sleep(1)


def group_cpu_seconds(group: int) -> float:
    """CPU seconds (user and system, with those of reaped children) of a process group's live
    processes, from /proc."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # After the command's closing parenthesis: state, ppid, pgrp, ..., utime is the 12th.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[2]) == group:
            total += sum(int(value) for value in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def measure_idle(dagster: Dagster, seconds: float, label: str) -> None:
    """CPU burnt by `dg dev` over `seconds` with nothing to do, and the sensor's ticks."""
    assert dagster.process is not None
    started, before = time.time(), group_cpu_seconds(dagster.process.pid)
    time.sleep(seconds)
    cpu = group_cpu_seconds(dagster.process.pid) - before
    ticks = len(dagster.ticks(started)) if dagster.selector else 0
    print(
        f"idle, {label}: {cpu:.1f} CPU s in {seconds:.0f} s ({100 * cpu / seconds:.1f}% of a "
        f"core), {ticks} sensor ticks, load 1m {os.getloadavg()[0]:.2f}",
        flush=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_step(title: str, *args: str) -> None:
    """A `spotify-lakehouse` command in a subprocess, as a user would run it."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "spotify_assets.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        print(done.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"{title}: exit {done.returncode}")
    print(f"{title}: {time.perf_counter() - started:.1f} s", flush=True)


def change_source(settings: Settings, seed: int) -> tuple[int, range]:
    """Commit the next simulated hour (more if it held no stream) in one transaction; returns
    the rows changed and the new stream ids."""
    source = source_database(settings)
    with source.session() as session:
        state = session.read_state()
        first = state.next_ids[FACT]
        changed = 0
        with session.transaction():
            for batch in simulate(state, 1, seed, RATES, SLICES_PER_DAY):
                session.apply_batch(batch)
                changed += batch.row_count()
                if state.next_ids[FACT] > first:
                    break
    return changed, range(first, state.next_ids[FACT])


class Gold:
    """Polls gold/fact_stream for a range of stream ids (delta-rs reads while Sail writes)."""

    def __init__(self, settings: Settings) -> None:
        self.table = DeltaTable(str(Path(settings.lake_url) / "gold" / "fact_stream"))

    def wait_for(self, ids: range, timeout: float, check: Callable[[], None]) -> float | None:
        """The wall time all of `ids` were first seen, or None after `timeout`; `check` runs
        every few polls (it raises when the run that should bring them failed)."""
        wanted = (ds.field("stream_id") >= ids.start) & (ds.field("stream_id") < ids.stop)
        seen_version = -1
        deadline = time.monotonic() + timeout
        polls = 0
        while time.monotonic() < deadline:
            self.table.update_incremental()
            if self.table.version() != seen_version:
                seen_version = self.table.version()
                if self.table.to_pyarrow_dataset().count_rows(filter=wanted) == len(ids):
                    return time.time()
            polls += 1
            if polls % CHECK_EVERY_POLLS == 0:
                check()
            time.sleep(POLL_SECONDS)
        return None


def measure_round(
    number: int, settings: Settings, dagster: Dagster, gold: Gold, timeout: float
) -> Round:
    # Changes arrive at any point of the sensor's cycle; a round starts when the previous run
    # ends, which must not fix the phase.
    time.sleep(random.Random(SEED + number).uniform(0, TICK_CYCLE_SECONDS))
    load = os.getloadavg()[0]  # the machine may be shared: other jobs slow every figure down
    assert dagster.process is not None
    cpu = group_cpu_seconds(dagster.process.pid)
    changed, ids = change_source(settings, seed=SEED + number)
    t0 = time.time()  # Dagster's timestamps are epoch seconds too
    print(f"round {number}: {len(ids)} new streams ({changed} rows changed) ...", flush=True)
    # The evaluation that saw the change may have started just before the commit returned.
    visible = gold.wait_for(ids, timeout, lambda: dagster.raise_if_failed(t0 - TICK_SECONDS))
    if visible is None:
        raise RuntimeError(f"round {number}: the new streams not in gold after {timeout:.0f} s")
    print(f"round {number}: in gold after {visible - t0:.1f} s", flush=True)
    tick = dagster.first_tick_with_runs(t0 - TICK_SECONDS, timeout)
    runs = dagster.wait_runs(tick["runIds"], timeout)
    fact_run = next((r for r in runs if FACT in r.describe), runs[0])
    # The run workers have exited by now and the code server has reaped them: their CPU time
    # is in its children's counters.
    cpu = group_cpu_seconds(dagster.process.pid) - cpu
    return Round(number, load, len(ids), t0, visible, tick["timestamp"], fact_run, cpu)


def print_rounds(rounds: list[Round]) -> None:
    names = ("tick wait", "sensor eval", "queue", "launch", "run to gold", "run total")
    header = ("load 1m", "streams", "latency s", *names, "CPU s")
    print(f"\n{'round':<7}" + "".join(f"{h:>13}" for h in header))
    for r in rounds:
        cells = [f"{r.load:.2f}", f"{r.streams:,d}", f"{r.latency:.1f}"]
        cells += [fmt(v, ".1f") for v in r.split().values()]
        cells.append(f"{r.cpu:.1f}")
        print(f"{r.number:<7}" + "".join(f"{c:>13}" for c in cells))
    latencies = [r.latency for r in rounds]
    median = statistics.median(latencies)
    print(f"\nlatency: median {median:.1f} s, max {max(latencies):.1f} s over {len(rounds)} rounds")
    met = "met" if median <= GOAL_SECONDS else "NOT met"
    print(f"goal: median latency <= {GOAL_SECONDS:.0f} s — {met}")


def print_steps(runs: list[tuple[str, Run]]) -> None:
    """Each step's start (after the run's start) and duration, per run, in the first's order."""
    order: dict[str, float] = {}
    for _, run in runs:
        for step in run.steps:
            if step["startTime"] is not None and run.started is not None:
                order.setdefault(step["stepKey"], step["startTime"] - run.started)
    width = max((len(k) for k in order), default=4) + 2
    print("\nstep timings (s): start after the run's start / duration")
    print(f"{'step':<{width}}" + "".join(f"{label:>16}" for label, _ in runs))
    for key in sorted(order, key=order.__getitem__):
        cells = []
        for _, run in runs:
            step = next((s for s in run.steps if s["stepKey"] == key), None)
            if step is None or step["startTime"] is None or run.started is None:
                cells.append("—")
                continue
            duration = fmt(step["endTime"] and step["endTime"] - step["startTime"], ".1f")
            cells.append(f"{step['startTime'] - run.started:.1f} / {duration}")
        print(f"{key:<{width}}" + "".join(f"{c:>16}" for c in cells))


def run_all(work: Path, scale: float, rounds: int, timeout: float, idle_seconds: float) -> None:
    os.environ["SPOTIFY_HOME"] = str(work)
    # The instance is the work dir's own: dagster_instance writes its dagster.yaml (run queue,
    # one lake writer at a time) and exports DAGSTER_HOME to every process started after it.
    os.environ.pop("DAGSTER_HOME", None)
    settings = Settings.from_env()
    dagster_instance(settings)
    cli_step(f"create the scale-{scale:g} source", "source", "init", "--scale", str(scale))
    cli_step("initial load (spotify-lakehouse run)", "run")
    dagster = Dagster(work, free_port())
    with dagster.running():
        started = time.perf_counter()
        dagster.wait_loaded(timeout)
        print(f"dg dev ready: {time.perf_counter() - started:.1f} s", flush=True)
        if idle_seconds:
            measure_idle(dagster, idle_seconds, "sensor off")
        sensor_on = time.time()
        dagster.start_sensor()
        # Its first evaluation has no cursor: it plans every table, and requests a run only of
        # those gold is behind on (none after the initial load).
        warm_up = dagster.wait_runs(dagster.first_evaluation(sensor_on, timeout)["runIds"], timeout)
        for run in warm_up:
            print(f"warm-up run: {run.split()}")
        if idle_seconds:
            measure_idle(dagster, idle_seconds, f"{SENSOR} on")
        gold = Gold(settings)
        results = []
        for number in range(1, rounds + 1):
            dagster.wait_idle(timeout)
            results.append(measure_round(number, settings, dagster, gold, timeout))
    print_rounds(results)
    fact_runs = [("warm-up", run) for run in warm_up if FACT in run.describe][:1]
    fact_runs += [(f"round {r.number}", r.run) for r in results]
    print_steps(fact_runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        choices=range(1, MAX_ROUNDS + 1),
        metavar=f"1..{MAX_ROUNDS}",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per wait")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep it")
    parser.add_argument(
        "--idle-seconds", type=float, default=60.0, help="CPU sampled idle (0: not measured)"
    )
    args = parser.parse_args()
    with workdir(args.keep, "spotify-bench-freshness-") as work:
        run_all(work, args.scale, args.rounds, args.timeout, args.idle_seconds)


if __name__ == "__main__":
    main()
