"""Bronze from a real PostgreSQL server: both readers, and writers committing during copies."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from resources.source_db import SourceDatabase
from resources.source_reader import ReaderKind
from spotify_assets.source.simulator import simulate
from tests.helpers.bronze import (
    assert_bronze_matches_source,
    canonical,
    load_everything,
    runner_for,
)
from tests.helpers.source import ON_TIME, SEED, initialise

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("reader", [ReaderKind.CONNECTORX, ReaderKind.ARROW_ODBC])
def test_initial_and_incremental_loads_equal_the_source(
    postgres_source: SourceDatabase, tmp_path: Path, reader: ReaderKind
) -> None:
    initialise(postgres_source)
    runner = runner_for(postgres_source, tmp_path / "lake", reader=reader)
    load_everything(runner, postgres_source.catalog, "initial")
    assert_bronze_matches_source(postgres_source, runner)
    with postgres_source.session() as session:
        session.apply(simulate(session.read_state(), days=2, seed=SEED, rates=ON_TIME))
    load_everything(runner, postgres_source.catalog, "incremental")
    assert_bronze_matches_source(postgres_source, runner)


def test_both_readers_produce_identical_bronze(
    postgres_source: SourceDatabase, sqlite_source: SourceDatabase, tmp_path: Path
) -> None:
    for name, source in (("postgres", postgres_source), ("sqlite", sqlite_source)):
        initialise(source)
        runners = {
            kind: runner_for(source, tmp_path / name / kind.value, reader=kind, chunk_rows=10**9)
            for kind in (ReaderKind.CONNECTORX, ReaderKind.ARROW_ODBC)
        }
        for runner in runners.values():
            load_everything(runner, source.catalog, "same")
        for table in source.catalog:
            cx, odbc = (canonical(r.store(table).read_all(), table) for r in runners.values())
            assert cx.schema == odbc.schema
            assert cx.equals(odbc), f"{name}/{table.name}: readers disagree"


def test_rows_committed_during_copies_are_neither_lost_nor_duplicated(
    postgres_source: SourceDatabase, tmp_path: Path
) -> None:
    """A live source (server clock, no simulated one): writers stamp rows at transaction start
    and commit later; the safety lag keeps `high` behind every transaction still open."""
    initialise(postgres_source)
    facts = postgres_source.catalog["FactStream"]
    with postgres_source.session() as session:
        session.execute('DELETE FROM "source_clock"')
        next_id = int(session.meta()["next_id:FactStream"])
    lag = 1.0
    runner = runner_for(postgres_source, tmp_path / "lake").model_copy(
        update={"safety_lag_seconds": lag}
    )
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        ids = iter(range(next_id, next_id + 1_000_000))
        rng = random.Random(SEED)
        with postgres_source.connect() as conn:
            conn.autocommit = False
            cursor = conn.cursor()
            while not stop.is_set():
                batch = [next(ids) for _ in range(rng.randint(1, 20))]
                for stream_id in batch:
                    cursor.execute(
                        'INSERT INTO "FactStream" ("stream_id", "user_id", "track_id", '
                        '"date_key", "listen_duration", "device_type", "stream_timestamp") '
                        "VALUES (?, 1, 1, 20260401, 60, 'web', now() AT TIME ZONE 'utc')",
                        stream_id,
                    )
                time.sleep(rng.uniform(0.0, 0.3))  # commit well after the rows were stamped
                conn.commit()
                written.extend(batch)

    thread = threading.Thread(target=writer)
    thread.start()
    copies = 0
    try:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            runner.copy(facts, None, f"copy-{copies}", from_watermark=True)
            copies += 1
    finally:
        stop.set()
        thread.join()
    time.sleep(lag + 0.5)
    runner.copy(facts, None, "final", from_watermark=True)

    bronze_ids = runner.store(facts).read_all()["stream_id"]
    with postgres_source.session() as session:
        source_ids = session.read_table(facts)["stream_id"]
    assert copies >= 5 and len(written) > 50
    assert pc.count_distinct(bronze_ids).as_py() == len(bronze_ids), "duplicated rows"
    assert set(written) <= set(bronze_ids.to_pylist()), "lost rows"
    assert sorted(bronze_ids.to_pylist()) == sorted(source_ids.to_pylist())


def test_schema_changes_are_checked_on_a_server(
    postgres_source: SourceDatabase, tmp_path: Path
) -> None:
    initialise(postgres_source)
    runner = runner_for(postgres_source, tmp_path / "lake")
    users, streams = postgres_source.catalog["DimUser"], postgres_source.catalog["FactStream"]
    with postgres_source.session() as session:
        session.execute('ALTER TABLE "FactStream" ADD COLUMN email VARCHAR(50)')
        session.execute('ALTER TABLE "DimUser_changes" RENAME COLUMN country TO land')
    runner.copy(streams, None, "carried", from_watermark=True)
    assert "email" in runner.store(streams).read_all().column_names
    with pytest.raises(ValueError, match=r"DimUser: its change capture records no .* country"):
        runner.copy(users, None, "renamed", from_watermark=True)


def test_a_column_retyped_to_numeric_keeps_its_whole_values(
    postgres_source: SourceDatabase, tmp_path: Path
) -> None:
    """An integer column retyped NUMERIC(10,2) reads as text `185.00`: whole values still fit
    the catalog's integer, only a fraction is untyped (it once sent every row to quarantine)."""
    initialise(postgres_source)
    runner = runner_for(postgres_source, tmp_path / "lake")
    streams = postgres_source.catalog["FactStream"]
    with postgres_source.session() as session:
        session.execute('ALTER TABLE "FactStream" ALTER COLUMN listen_duration TYPE NUMERIC(10, 2)')
        session.execute(
            'UPDATE "FactStream" SET listen_duration = 12.5 WHERE stream_id = '
            '(SELECT MIN(stream_id) FROM "FactStream")'
        )
        source = session.query('SELECT stream_id, listen_duration FROM "FactStream"')
    runner.copy(streams, None, "retyped", from_watermark=True)
    bronze = runner.store(streams).read_all()
    untyped = bronze.filter(pc.is_valid(bronze["_untyped"]))
    assert untyped["_untyped"].to_pylist() == ['{"listen_duration": "12.50"}']
    copied = zip(
        bronze["stream_id"].to_pylist(), bronze["listen_duration"].to_pylist(), strict=True
    )
    expected = {i: None if d % 1 else int(d) for i, d in source}
    assert dict(copied) == expected


def test_keys_stored_as_text_are_copied_and_profiled(
    postgres_source: SourceDatabase, tmp_path: Path
) -> None:
    """A user's source with its keys as text (`varchar`, `text`): the copy's profile sums each
    key as a number, as bronze's does (it failed: `sum(character varying)` does not exist)."""
    initialise(postgres_source)
    with postgres_source.session() as session:
        for name in ("DimUser", "DimUser_changes"):  # as `source attach` mirrors the type
            session.execute(f'ALTER TABLE "{name}" ALTER COLUMN user_id TYPE varchar(12)')
        session.execute('ALTER TABLE "FactStream" ALTER COLUMN stream_id TYPE text')
    runner = runner_for(postgres_source, tmp_path / "lake")
    load_everything(runner, postgres_source.catalog, "initial")
    for name, key in (("DimUser", "user_id"), ("FactStream", "stream_id")):
        with postgres_source.session() as session:
            keys = [int(k) for (k,) in session.query(f'SELECT {key} FROM "{name}"')]
        bronze = runner.store(postgres_source.catalog[name]).read_all()
        assert sorted(bronze[key].to_pylist()) == sorted(keys), name
