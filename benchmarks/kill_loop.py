"""Kills at random moments, by hand (not in the suite): N rounds on one home, each a source
change (a simulated day, sometimes itself killed mid-transaction, sometimes a hand edit), then
`run` or `refresh` of a random range SIGKILLed after a random delay drawn over that command's
whole duration, then `run` to completion, `verify`, and gold compared with the plain-SQL
reference of tests/helpers. One JSON line per round; the first failure stops the loop and keeps
the home. Every command runs under a memory bound (its process tree SIGKILLed past it).

With `--dev`, `dg dev` runs on the home too, both sensors on: each round the simulated day
reaches it while the command runs, half the rounds also launch a backfill of the fact path
through the UI's GraphQL, and the process SIGKILLed is drawn from the command, a run worker,
the launcher's fork server, the daemon and the code server (`dg dev` is started again when a
kill ended it). Before the check every run and backfill must end.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/kill_loop.py --rounds 30 --seed 1 \\
        --home /tmp/qa-kills-1 [--history-days 21] [--dev] \\
        [--source-odbc 'Driver={PostgreSQL Unicode};…']
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from resources.lake import LakeStorage
from resources.lease import WriterLease
from spotify_assets.catalog.tables import CATALOG
from spotify_assets.orchestration.assets.bronze import bronze_key
from spotify_assets.orchestration.assets.gold import gold_key
from spotify_assets.orchestration.assets.silver import silver_key
from tests.helpers.dagster_dev import graphql, location_loaded, start_dev, stop_dev
from tests.helpers.gold_reference import (
    assert_dimensions_equal_source,
    assert_gold_equals_source,
    keep_initial_dimensions,
    source_session,
)
from tests.helpers.processes import CLI, Lakehouse, tree_rss
from tests.helpers.servers import free_port
from tests.helpers.source import HISTORY_DAYS, SCALE

MEMORY_GIB = 4.0
SENSORS = ("cdc_arrival_sensor", "reconciliation_sensor")
START_SENSOR = """
mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) { __typename } }"""
LAUNCH_BACKFILL = """
mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } } }"""
BACKFILLS = "{ partitionBackfillsOrError { ... on PartitionBackfills { results { status } } } }"
FACT_PATH = [
    bronze_key(CATALOG.fact),
    silver_key(CATALOG.fact),
    gold_key(CATALOG.fact.lake_name),
    *(gold_key(a.name) for a in CATALOG.aggregates),
]
# `dg dev`'s processes a round may SIGKILL, by what their command line holds.
DEV_PROCESSES = {
    "daemon": "dagster._daemon run",
    "code_server": "dagster code-server start",
    "fork_server": "multiprocessing.forkserver import main",
}


@dataclass(frozen=True)
class Killed:
    """A command started, then SIGKILLed `delay` seconds later unless it ended first (or,
    with `dg dev`, a process of its own SIGKILLed then, `victim`)."""

    returncode: int | None  # None: killed
    seconds: float
    peak_gib: float
    victim: int | None = None


def killed_after(
    cli: Lakehouse,
    args: list[str],
    delay: float,
    log: Path,
    dev: Dev | None = None,
    role: str = "",
    dev_delay: float = 0.0,
) -> Killed:
    """`spotify-lakehouse ARGS` in a session of its own, its whole tree SIGKILLed after `delay`
    seconds (or past the memory bound); with `dev`, its process of `role` is SIGKILLed after
    `dev_delay` (the first time there is one)."""
    start = time.monotonic()
    peak, victim = 0, None
    with log.open("a") as out:
        out.write(f"--- {' '.join(args)} (kill after {delay:.2f} s)\n")
        out.flush()
        process = subprocess.Popen(
            [CLI, *args], env=cli.env, stdout=out, stderr=out, start_new_session=True
        )
        try:
            while process.poll() is None and time.monotonic() - start < delay:
                peak = max(peak, tree_rss(process.pid))
                if peak > MEMORY_GIB * 2**30:
                    raise SystemExit(f"{args}: passed {MEMORY_GIB} GiB")
                due = dev is not None and victim is None and time.monotonic() - start >= dev_delay
                if due and (victim := dev.pid(role)) is not None:  # type: ignore[union-attr]
                    os.kill(victim, signal.SIGKILL)
                    out.write(f"--- SIGKILL {role} {victim}\n")
                time.sleep(0.02)
        finally:
            ended = process.poll() is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    seconds = time.monotonic() - start
    return Killed(process.returncode if ended else None, seconds, peak / 2**30, victim)


class Dev:
    """`dg dev` on the loop's home with both sensors on, started again whenever a kill ended
    it (what is left of its group SIGKILLed first)."""

    def __init__(self, cli: Lakehouse, log: Path) -> None:
        self.cli, self.log = cli, log
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.starts = 0

    def ensure(self) -> None:
        alive = self.process is not None and self.process.poll() is None
        if alive and all(self.pid(role) for role in ("daemon", "code_server")):
            return
        if self.process is not None:
            stop_dev(self.process)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.starts += 1
        log = self.log.with_suffix(f".{self.starts}.log")  # each start's own: kills end some
        self.process = start_dev(self.cli.settings, port, log, self.cli.source_odbc)
        if not location_loaded(self.process, port, 600):
            raise SystemExit(f"dg dev did not load its code location: {log}")
        for name in SENSORS:
            selector = {"repositoryLocationName": "spotify_lakehouse",
                        "repositoryName": "__repository__", "sensorName": name}  # fmt: skip
            graphql(self.url, START_SENSOR, {"s": selector})

    def pid(self, role: str) -> int | None:
        """A process of `dg dev` by its role, or a run worker (a child of the fork server)."""
        assert self.process is not None
        members = _group(self.process.pid)
        if role == "worker":
            servers = {pid for pid, line in members.items() if DEV_PROCESSES["fork_server"] in line}
            workers = [pid for pid in members if _parent(pid) in servers]
            return workers[0] if workers else None
        return next((pid for pid, line in members.items() if DEV_PROCESSES[role] in line), None)

    def backfill(self, first: str, last: str) -> str:
        params = {
            "assetSelection": [{"path": key.path} for key in FACT_PATH],
            "partitionNames": _days(first, last),
            "title": "kill loop",
        }
        launched = graphql(self.url, LAUNCH_BACKFILL, {"p": params})["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        return launched["backfillId"]

    def settle(self, seconds: float = 900) -> None:
        """Waits until no run is queued or in progress and every backfill has ended."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            backfills = graphql(self.url, BACKFILLS)["partitionBackfillsOrError"]["results"]
            if runs_in(self.cli, OPEN) == 0 and all(b["status"] != "REQUESTED" for b in backfills):
                return
            if tree_rss(self.process.pid) > MEMORY_GIB * 2**30:  # type: ignore[union-attr]
                raise SystemExit(f"dg dev passed {MEMORY_GIB} GiB")
            time.sleep(2)
        raise SystemExit(f"runs or backfills still open after {seconds} s")

    def stop(self) -> None:
        if self.process is not None:
            stop_dev(self.process)


def _group(pgid: int) -> dict[int, str]:
    """The command lines of the processes of group `pgid`, by pid (from /proc)."""
    members = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                command = stat.with_name("cmdline").read_bytes().replace(b"\0", b" ")
                members[int(stat.parent.name)] = command.decode()
    return members


def _parent(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return None


def _days(first: str, last: str) -> list[str]:
    start, end = datetime.fromisoformat(first).date(), datetime.fromisoformat(last).date()
    return [(start + timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]


def hand_edit(cli: Lakehouse, rng: random.Random) -> str:
    """A change the simulator does not make, straight in SQL: an update that keeps
    `updated_at`, one backdated by a few days, or the delete of the newest track."""
    kind = rng.choice(["keep_updated_at", "backdated_update", "delete_track"])
    with source_session(cli.settings) as session:
        if kind == "delete_track":
            (track,) = session.query('SELECT max(track_id) FROM "DimTrack"')[0]
            session.execute(f'DELETE FROM "DimTrack" WHERE track_id = {track}')
            return kind
        users = session.query('SELECT user_id, updated_at FROM "DimUser" ORDER BY user_id')
        user, updated_at = users[rng.randrange(min(10, len(users)))]
        country = rng.choice(["SE", "Norway", " us ", "DE"])
        assignments = f"subscription_type = 'Premium', country = '{country}'"
        if kind == "backdated_update" and updated_at is not None:
            at = (
                updated_at
                if isinstance(updated_at, datetime)
                else datetime.fromisoformat(str(updated_at))
            )
            assignments += (
                f", updated_at = '{at - timedelta(days=rng.randint(1, 3)):%Y-%m-%d %H:%M:%S}'"
            )
        session.execute(f'UPDATE "DimUser" SET {assignments} WHERE user_id = {user}')
    return kind


OPEN = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]  # fmt: skip


def runs_in(cli: Lakehouse, statuses: list[DagsterRunStatus]) -> int:
    os.environ["DAGSTER_HOME"] = str(cli.settings.dagster_home)
    with DagsterInstance.get() as instance:
        return instance.get_runs_count(RunsFilter(statuses=statuses))


def check(cli: Lakehouse, dev: Dev | None) -> None:
    """`run` to completion, `verify`, gold against the reference, no run left STARTED or
    STARTING, the lake's writer lease free (with `dg dev`: once its runs and backfills ended)."""
    if dev is not None:
        dev.ensure()
        dev.settle()
    cli("run")
    if dev is not None:
        dev.settle()
    cli("verify")
    assert_gold_equals_source(cli.settings)
    assert_dimensions_equal_source(cli.settings)
    in_progress = [DagsterRunStatus.STARTED, DagsterRunStatus.STARTING]
    assert runs_in(cli, in_progress) == 0, "a Dagster run is left STARTED or STARTING"
    holder = WriterLease(LakeStorage(url=cli.settings.lake_url)).current()
    assert holder is None or holder.holder is None, f"the lake lease is not released: {holder}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--source-odbc", default=None)
    parser.add_argument("--history-days", type=int, default=HISTORY_DAYS)
    parser.add_argument("--dev", action="store_true", help="`dg dev` too (module docstring)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    cli = Lakehouse(args.home, args.source_odbc)
    log = args.home / "kill_loop.log"
    if not (args.home / "kill_loop.started").exists():
        args.home.mkdir(parents=True, exist_ok=True)
        end = datetime.now(UTC).date() - timedelta(days=args.rounds + 2)
        cli("source", "init", "--scale", str(SCALE), "--seed", str(args.seed),
            "--history-days", str(args.history_days), "--end-date", end.isoformat())  # fmt: skip
        keep_initial_dimensions(cli.settings)
        (args.home / "kill_loop.started").touch()
        started = time.monotonic()
        cli("run")
        print(json.dumps({"initial_run_s": round(time.monotonic() - started, 1)}), flush=True)
    dev = Dev(cli, args.home / "dg_dev.log") if args.dev else None
    longest = {"run": 10.0, "refresh": 10.0, "simulate": 2.0}
    try:
        for number in range(args.rounds):
            one_round(cli, dev, rng, number, args, longest, log)
    finally:
        if dev is not None:
            dev.stop()


def one_round(
    cli: Lakehouse,
    dev: Dev | None,
    rng: random.Random,
    number: int,
    args: argparse.Namespace,
    longest: dict[str, float],
    log: Path,
) -> None:
    entry: dict[str, object] = {"round": number, "seed": args.seed}
    if dev is not None:
        dev.ensure()
    draw = rng.random()
    if draw < 0.3:
        # Before the simulated day: the triggers stamp a hand edit with the source's clock,
        # and a change at the clock's instant is in no window until the clock moves on.
        entry["hand_edit"] = hand_edit(cli, rng)
    simulate = ["source", "simulate", "--days", "1", "--seed", str(int(rng.random() * 2**31))]
    if draw > 0.7:
        delay = rng.uniform(0, longest["simulate"])
        killed = killed_after(cli, simulate, delay, log)
        entry["simulate_killed_at"] = None if killed.returncode is not None else delay
        if killed.returncode is not None:
            longest["simulate"] = max(longest["simulate"], killed.seconds)
    else:
        cli(*simulate)
    today = datetime.now(UTC).date() - timedelta(days=args.rounds + 1 - number)
    first = today - timedelta(days=rng.randint(0, 8))
    last = first + timedelta(days=rng.randint(0, 3))
    command = rng.choice(["run", "run", "refresh"])
    argv = [command]
    if command == "refresh":
        argv += ["--from", first.isoformat(), "--to", last.isoformat()]
    if dev is not None and rng.random() < 0.5:
        entry["backfill"] = [first.isoformat(), last.isoformat()]
        dev.backfill(first.isoformat(), last.isoformat())
    victim = rng.choice(["cli", "worker", *DEV_PROCESSES]) if dev is not None else "cli"
    delay = rng.uniform(0, longest[command] * 1.1)
    if victim == "cli":
        killed = killed_after(cli, argv, delay, log)
    else:
        assert dev is not None
        killed = killed_after(cli, argv, longest[command] * 3, log, dev, victim, delay)
        entry["killed"] = victim if killed.victim else None
    if killed.returncode is not None:
        longest[command] = max(longest[command], killed.seconds)
    entry |= {"command": argv, "delay": round(delay, 3), "exit": killed.returncode,
              "peak_gib": round(killed.peak_gib, 2)}  # fmt: skip
    try:
        check(cli, dev)
    except (AssertionError, SystemExit) as failure:
        entry["failure"] = str(failure)[-3000:]
        print(json.dumps(entry), flush=True)
        sys.exit(1)
    entry["ok"] = True
    print(json.dumps(entry), flush=True)


if __name__ == "__main__":
    main()
