"""A user's week on a source with years of history (issue 11, "Done means"): the embedded default
through the CLI, a history starting more than two years back, then simulated days with late,
dirty and deleted rows, deleted users restored with their original `updated_at`, and `run`
after each day. Gold equals plain SQL over the source; no command passes the memory bound or
prints a traceback.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spotify_assets.catalog.tables import CATALOG
from spotify_assets.cli.commands import source_simulate
from spotify_assets.orchestration.resources import source_database
from spotify_assets.orchestration.settings import Settings
from tests.helpers.gold_reference import (
    assert_dimensions_equal_source,
    assert_gold_equals_source,
    keep_initial_dimensions,
)
from tests.helpers.processes import Lakehouse
from tests.helpers.source import BUSY_DAY

USERS = CATALOG["DimUser"]
HISTORY_DAYS = 800
DAYS = 3


def restore_deleted_users(settings: Settings) -> int:
    """Insert every deleted user back as it was when deleted (its original `updated_at`), as an
    application undoing a delete would. Returns how many."""
    columns = ", ".join(USERS.column_names)
    changes, table = USERS.change_table, USERS.name
    with source_database(settings).session() as session:
        before = session.scalar(f'SELECT COUNT(*) FROM "{table}"')
        session.execute(
            f'INSERT INTO "{table}" ({columns}) SELECT {columns} FROM "{changes}" c '
            f"""WHERE "_op" = 'D' AND "_seq" = (SELECT MAX("_seq") FROM "{changes}" d """
            f"""WHERE d.user_id = c.user_id AND d."_op" = 'D') """
            f'AND user_id NOT IN (SELECT user_id FROM "{table}")'
        )
        return session.scalar(f'SELECT COUNT(*) FROM "{table}"') - before


# 800 daily partitions through the CLI, then three days: ~3 min of CPU, 18 min under a load of 34.
@pytest.mark.timeout(1200)
def test_years_of_history_then_a_busy_week(tmp_path: Path) -> None:
    cli = Lakehouse(tmp_path / "home")
    today = datetime.now(UTC).date()
    cli("source", "init", "--scale", "0.002", "--history-days", str(HISTORY_DAYS),
        "--end-date", str(today - timedelta(days=DAYS + 1)))  # fmt: skip
    settings = cli.settings
    keep_initial_dimensions(settings)
    cli("run")

    restored = 0
    for day in range(DAYS):
        if day:  # before the day's changes: the simulated clock moves past the restores
            restored += restore_deleted_users(settings)
        source_simulate(settings, 1, 100 + day, replace(BUSY_DAY, user_deletes=0.05))
        cli("run")
    assert restored > 0, "the scenario must restore deleted users"

    assert_gold_equals_source(settings)
    assert_dimensions_equal_source(settings)
