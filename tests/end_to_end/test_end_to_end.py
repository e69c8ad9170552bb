"""End-to-end invariant: whatever happens — simulated days with late streams, streams whose
user and track arrive later, deletes and dirty values, incremental runs, backdated refreshes, a
run killed mid-way (SIGKILL) and retried — gold ends equal to a reference computed from the
source with plain SQL: the current state of every dimension, every stream exactly once with its
point-in-time attributes, and every aggregate.

The scenario is drawn from a seed (`SPOTIFY_E2E_SEED` to replay one); the seed is in the test id.
"""

from __future__ import annotations

import os
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from spotify_assets.cli.commands import source_simulate
from tests.helpers.gold_reference import (
    assert_dimensions_equal_source,
    assert_gold_equals_source,
    keep_initial_dimensions,
    source_session,
)
from tests.helpers.processes import Lakehouse
from tests.helpers.servers import PG_PASSWORD
from tests.helpers.source import BUSY_DAY, HISTORY_DAYS

SEEDS = [int(os.environ["SPOTIFY_E2E_SEED"])] if "SPOTIFY_E2E_SEED" in os.environ else [11]
DAYS = replace(BUSY_DAY, early_fraction=0.02)


@pytest.mark.timeout(600)  # a first load and four runs: minutes when the machine is busy
@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_gold_equals_the_source_whatever_happens(
    lakehouse_cli: Lakehouse, killed_run, seed: int
) -> None:
    """Through the CLI on a source named by SPOTIFY_SOURCE_ODBC (SQLite, PostgreSQL): a
    SIGKILLed run and a backdated refresh, in a random order between simulated days, then
    `run`; every command exits 0, bounded, without a traceback or the password."""
    cli, rng = lakehouse_cli, random.Random(seed)
    today = datetime.now(UTC).date()
    cli("source", "init", "--scale", "0.002", "--seed", str(seed), "--history-days",
        str(HISTORY_DAYS), "--end-date", str(today - timedelta(days=6)))  # fmt: skip
    settings = cli.settings
    keep_initial_dimensions(settings)
    cli("run")

    steps = ["kill", "refresh"]
    rng.shuffle(steps)
    for n, step in enumerate(steps):
        source_simulate(settings, rng.choice([1, 2]), seed + n, DAYS)
        if step == "kill":
            killed_run(cli, rng)
        else:
            cli("refresh", "--from", str(today - timedelta(days=rng.randint(1, 5))),
                "--to", str(today))  # fmt: skip
    cli("run")

    assert_gold_equals_source(settings)
    assert_dimensions_equal_source(settings)
    with source_session(settings) as session:
        assert session.scalar("""SELECT COUNT(*) FROM "DimUser_changes" WHERE "_op" = 'D'"""), (
            "the scenario must delete users"
        )
    for stored in settings.dagster_home.rglob("*"):
        if stored.is_file():
            assert PG_PASSWORD.encode() not in stored.read_bytes(), stored
