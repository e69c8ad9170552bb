"""Kills at random moments, by hand (not in the suite): N rounds on one home, each a source
change (a simulated day, sometimes itself killed mid-transaction, sometimes a hand edit), then
`run` or `refresh` of a random range SIGKILLed after a random delay drawn over that command's
whole duration, then `run` to completion, `verify`, and gold compared with the plain-SQL
reference of tests/helpers. One JSON line per round; the first failure stops the loop and keeps
the home. Every command runs under a memory bound (its process tree SIGKILLed past it).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/kill_loop.py --rounds 30 --seed 1 \\
        --home /tmp/qa-kills-1 [--source-odbc 'Driver={PostgreSQL Unicode};…']
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

from tests.helpers.gold_reference import (
    assert_dimensions_equal_source,
    assert_gold_equals_source,
    keep_initial_dimensions,
    source_session,
)
from tests.helpers.processes import CLI, Lakehouse, tree_rss
from tests.helpers.source import HISTORY_DAYS, SCALE

MEMORY_GIB = 4.0


@dataclass(frozen=True)
class Killed:
    """A command started, then SIGKILLed `delay` seconds later unless it ended first."""

    returncode: int | None  # None: killed
    seconds: float
    peak_gib: float


def killed_after(cli: Lakehouse, args: list[str], delay: float, log: Path) -> Killed:
    """`spotify-lakehouse ARGS` in a session of its own, its whole tree SIGKILLed after `delay`
    seconds (or past the memory bound)."""
    start = time.monotonic()
    peak = 0
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
                time.sleep(0.02)
        finally:
            ended = process.poll() is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    seconds = time.monotonic() - start
    return Killed(process.returncode if ended else None, seconds, peak / 2**30)


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


def runs_left_started(cli: Lakehouse) -> int:
    os.environ["DAGSTER_HOME"] = str(cli.settings.dagster_home)
    with DagsterInstance.get() as instance:
        return instance.get_runs_count(
            RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING])
        )


def check(cli: Lakehouse) -> None:
    """`run` to completion, `verify`, gold against the reference, no run left STARTED."""
    cli("run")
    cli("verify")
    assert_gold_equals_source(cli.settings)
    assert_dimensions_equal_source(cli.settings)
    assert runs_left_started(cli) == 0, "a Dagster run is left STARTED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--source-odbc", default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    cli = Lakehouse(args.home, args.source_odbc)
    log = args.home / "kill_loop.log"
    if not (args.home / "kill_loop.started").exists():
        args.home.mkdir(parents=True, exist_ok=True)
        end = datetime.now(UTC).date() - timedelta(days=args.rounds + 2)
        cli("source", "init", "--scale", str(SCALE), "--seed", str(args.seed),
            "--history-days", str(HISTORY_DAYS), "--end-date", end.isoformat())  # fmt: skip
        keep_initial_dimensions(cli.settings)
        (args.home / "kill_loop.started").touch()
        started = time.monotonic()
        cli("run")
        print(json.dumps({"initial_run_s": round(time.monotonic() - started, 1)}), flush=True)
    longest = {"run": 10.0, "refresh": 10.0, "simulate": 2.0}
    for number in range(args.rounds):
        entry: dict[str, object] = {"round": number, "seed": args.seed}
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
        command = rng.choice(["run", "run", "refresh"])
        argv = [command]
        if command == "refresh":
            today = datetime.now(UTC).date() - timedelta(days=args.rounds + 1 - number)
            first = today - timedelta(days=rng.randint(0, 8))
            last = first + timedelta(days=rng.randint(0, 3))
            argv += ["--from", first.isoformat(), "--to", last.isoformat()]
        delay = rng.uniform(0, longest[command] * 1.1)
        killed = killed_after(cli, argv, delay, log)
        if killed.returncode is not None:
            longest[command] = max(longest[command], killed.seconds)
        entry |= {"command": argv, "delay": round(delay, 3), "exit": killed.returncode,
                  "peak_gib": round(killed.peak_gib, 2)}  # fmt: skip
        try:
            check(cli)
        except (AssertionError, SystemExit) as failure:
            entry["failure"] = str(failure)[-3000:]
            print(json.dumps(entry), flush=True)
            sys.exit(1)
        entry["ok"] = True
        print(json.dumps(entry), flush=True)


if __name__ == "__main__":
    main()
