"""The source database on SQLite (through ODBC) and on a real PostgreSQL server."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from resources.odbc import SourceConfigError, SourceUnavailableError
from resources.source_db import SourceDatabase, SourceSession
from spotify_assets.bronze.dialects import DIALECTS, Dialect
from spotify_assets.catalog.tables import CATALOG, CaptureMode, TableRole
from spotify_assets.source.schema import SourceSchemaError
from spotify_assets.source.simulator import simulate
from tests.helpers.bronze import runner_for
from tests.helpers.source import BUSY, HISTORY_END, SEED, initialise
from tests.helpers.tsql import parse_tsql


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def source(request: pytest.FixtureRequest) -> SourceDatabase:
    return request.getfixturevalue(f"{request.param}_source")


def sorted_by_key(table: pa.Table, key: str) -> pa.Table:
    return table.sort_by(key).combine_chunks()


def test_initial_load_round_trips_every_table_with_catalog_types(source: SourceDatabase) -> None:
    data = initialise(source)
    assert source.exists()
    with source.session() as session:
        for name, expected in data.dims.items():
            table = source.catalog[name]
            actual = session.read_table(table)
            assert actual.schema == table.arrow_schema
            assert sorted_by_key(actual, table.key[0]).equals(sorted_by_key(expected, table.key[0]))
        fact = source.catalog["FactStream"]
        streams = pa.concat_tables(data.stream_batches())
        assert sorted_by_key(session.read_table(fact), "stream_id").equals(
            sorted_by_key(streams, "stream_id")
        )
        assert session.clock() == datetime.combine(HISTORY_END, datetime.min.time())
        stats = session.stats()
    # The initial load is the snapshot; change capture starts empty after it.
    for table in source.catalog:
        if table.mode is CaptureMode.CDC:
            assert stats["tables"][table.name]["change_rows"] == 0


def change_rows(source: SourceDatabase, table_name: str) -> list[tuple]:
    table = source.catalog[table_name]
    with source.connect() as conn:  # the ODBC path the pipeline reads through
        session = source.session_on(conn)
        rows = session.query(source.session_on(conn).sql.change_feed(table), [0, 10**12])
    return rows


def test_triggers_capture_inserts_updates_deletes_in_order(source: SourceDatabase) -> None:
    initialise(source)
    user = source.catalog["DimUser"]
    at = datetime(2026, 4, 1, 9, 30)
    with source.connect() as conn:
        session = source.session_on(conn)
        session.set_clock(at)
        row = [900001, "Ada", "GB", "Free", None, None, at - timedelta(minutes=5)]
        session.execute(session.sql.insert(user.name, user.column_names), row)
        session.execute(
            f"UPDATE {session.sql.quote(user.name)} SET {session.sql.quote('subscription_type')} "
            f"= ? WHERE {session.sql.quote('user_id')} = ?",
            ["Premium", 900001],
        )
        session.set_clock(at + timedelta(hours=1))
        session.execute(session.sql.delete(user), [900001])
    rows = change_rows(source, "DimUser")
    assert [r[1] for r in rows] == ["I", "U", "D"]
    sequences = [r[0] for r in rows]
    assert sequences == sorted(set(sequences)), "sequence must strictly increase"
    assert [_as_datetime(r[2]) for r in rows] == [at, at, at + timedelta(hours=1)]
    images = [r[3:] for r in rows]
    assert [i[0] for i in images] == [900001] * 3
    assert [i[3] for i in images] == ["Free", "Premium", "Premium"], "D carries the old image"


def test_a_key_change_is_captured_as_a_delete_and_an_insert(source: SourceDatabase) -> None:
    """The old key is closed in gold only if its delete is recorded (as SQL Server's CDC does)."""
    initialise(source)
    user = source.catalog["DimUser"]
    at = datetime(2026, 4, 1, 9, 30)
    with source.connect() as conn:
        session = source.session_on(conn)
        q = session.sql.quote
        session.set_clock(at)
        row = [900001, "Ada", "GB", "Free", None, None, at - timedelta(minutes=5)]
        session.execute(session.sql.insert(user.name, user.column_names), row)
        session.execute(
            f"UPDATE {q(user.name)} SET {q('user_id')} = ? WHERE {q('user_id')} = ?",
            [900002, 900001],
        )
    rows = change_rows(source, "DimUser")
    assert [(r[1], r[3]) for r in rows] == [("I", 900001), ("D", 900001), ("I", 900002)]
    assert [r[0] for r in rows] == sorted({r[0] for r in rows})
    assert {r[6] for r in rows} == {"Free"}


def _as_datetime(value: object) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def test_simulated_days_are_mirrored_and_captured(source: SourceDatabase) -> None:
    initialise(source)
    with source.session() as session:
        state = session.read_state()
        batches = list(simulate(state, days=3, seed=SEED, rates=BUSY))
        session.apply(batches)
        assert session.clock() == datetime.combine(HISTORY_END, datetime.min.time()) + timedelta(3)
        for name, expected in state.dims.items():
            key = source.catalog[name].key[0]
            assert sorted_by_key(session.read_table(source.catalog[name]), key).equals(
                sorted_by_key(expected, key)
            ), f"{name} differs from the simulator's mirror"
        resumed = session.read_state()
        stats = session.stats()
    assert resumed.next_ids == state.next_ids
    assert resumed.date_keys_until == state.date_keys_until
    for table in source.catalog.by_role(TableRole.DIMENSION):
        inserts = sum(b.inserts[table.name].num_rows for b in batches if table.name in b.inserts)
        updates = sum(b.updates[table.name].num_rows for b in batches if table.name in b.updates)
        deletes = sum(len(b.deletes[table.name]) for b in batches if table.name in b.deletes)
        assert inserts and updates and deletes, f"simulation too small to test {table.name}"
        assert stats["tables"][table.name]["change_rows"] == inserts + updates + deletes
        ops = pc.value_counts(pa.array([r[1] for r in change_rows(source, table.name)]))
        assert {v["values"].as_py(): v["counts"].as_py() for v in ops} == {
            "I": inserts,
            "U": updates,
            "D": deletes,
        }


def test_simulation_never_allocates_a_key_added_by_hand(sqlite_source: SourceDatabase) -> None:
    """Rows a user inserted by hand, with the keys the simulator would allocate next: a day's
    simulation allocates past them (it failed on the stream's UNIQUE constraint)."""
    initialise(sqlite_source)
    with sqlite_source.session() as session:
        counters = session.read_state().next_ids
        for name, counter in counters.items():
            table = sqlite_source.catalog[name]
            row = session.read_table(table).slice(0, 1)
            (key,) = table.key
            by_hand = row.set_column(
                row.schema.get_field_index(key), key, pa.array([counter], pa.int64())
            )
            session.bulk_insert(table, by_hand.cast(table.arrow_schema))
        state = session.read_state()
        assert state.next_ids == {name: counter + 1 for name, counter in counters.items()}
        session.apply(simulate(state, days=1, seed=SEED, rates=BUSY))


def test_only_missing_tables_read_as_not_initialised(source: SourceDatabase) -> None:
    assert not source.exists()
    initialise(source)
    assert source.exists()
    with source.session() as session:
        session.drop_all()  # `source init --force`: every table, change capture and function
    assert not source.exists()
    initialise(source)


def test_an_unreadable_source_is_an_error_naming_it_not_an_empty_source(
    sqlite_source: SourceDatabase,
) -> None:
    """A source that cannot be read must not pass for one never initialised: the sensors would
    skip every evaluation without a word."""
    path = sqlite_source.sqlite_path()
    path.touch()  # an empty database: no tables yet
    assert not sqlite_source.exists()
    path.write_bytes(b"not a SQLite database " * 256)
    with pytest.raises(SourceUnavailableError, match=f"{path}.*not a database"):
        sqlite_source.exists()


def test_a_source_locked_by_another_writer_says_so_not_that_it_is_the_wrong_file(
    sqlite_source: SourceDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds the SQLite file exclusively (a long write of an application, a
    sqlite3 shell): `run` said to check that it is the database `source init` created."""
    initialise(sqlite_source)
    path = sqlite_source.sqlite_path()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA locking_mode = EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    other.execute("CREATE TABLE other_application (x)")
    other.execute("COMMIT")  # and it keeps the file locked, readers included
    connect = sqlite3.connect  # waits its 30 s timeout for the lock, then fails: 0.1 s here
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: connect(*a, **{**k, "timeout": 0.1}))
    with pytest.raises(SourceUnavailableError) as locked:
        sqlite_source.exists()
    message = str(locked.value)
    assert f"{path}" in message and "database is locked" in message
    assert "Another process holds it" in message and "source init" not in message
    other.close()
    assert sqlite_source.exists()


def test_watermark_mode_dimension_has_no_change_capture(sqlite_source: SourceDatabase) -> None:
    source = sqlite_source.model_copy(update={"capture_modes": "DimUser=watermark"})
    initialise(source)
    with source.session() as session:
        session.apply(simulate(session.read_state(), days=1, seed=SEED, rates=BUSY))
        stats = session.stats()["tables"]
        tables = {r[0] for r in session.query("SELECT name FROM sqlite_master WHERE type='table'")}
    assert stats["DimUser"]["mode"] == "watermark"
    assert "change_rows" not in stats["DimUser"] and "DimUser_changes" not in tables
    assert stats["DimArtist"]["change_rows"] > 0 and "DimArtist_changes" in tables
    assert stats["DimUser"]["max_updated_at"] > str(HISTORY_END)


def test_a_failing_batch_changes_nothing(source: SourceDatabase) -> None:
    initialise(source)
    with source.session() as session:
        before = session.stats()
        state = session.read_state()
        (batch, *_) = simulate(state, days=1, seed=SEED)
        users = session.catalog["DimUser"]
        existing = session.read_table(users).slice(0, 1)
        broken = type(batch)(
            at=batch.at,
            inserts={**batch.inserts, "DimUser": existing},  # duplicate key: the insert fails
            updates=batch.updates,
            deletes=batch.deletes,
        )
        with pytest.raises(Exception):  # noqa: B017 - each driver raises its own type
            session.apply([broken])
        assert session.stats() == before


def create_with_own_dim_user(session: SourceSession, columns: str) -> None:
    """The catalog's tables, but a DimUser of the user's own: `columns`."""
    create_with_own_table(session, "DimUser", f'CREATE TABLE "DimUser" ({columns})')


def create_with_own_table(session: SourceSession, name: str, create: str) -> None:
    """The catalog's tables, but table `name` created by the user's `create`."""
    for table in session.catalog:
        if table.name != name:
            session.execute(session.sql.create_table(table))
    session.execute(create)


@pytest.mark.postgres
def test_attached_capture_takes_the_source_types_so_the_users_writes_pass(
    postgres_source: SourceDatabase,
) -> None:
    """A user's DimUser with its key as text and a timestamptz: after `source attach`, their
    insert, update and delete pass and are recorded (the update failed: the change table had
    the catalog's integer key, and the trigger raised into the user's UPDATE)."""
    with postgres_source.session() as session:
        create_with_own_dim_user(
            session,
            "user_id varchar(12) PRIMARY KEY, user_name text, "
            "country text, subscription_type text, start_date date, end_date date, "
            "updated_at timestamptz NOT NULL",
        )
        session.execute(
            """INSERT INTO "DimUser" VALUES ('7', 'ann', 'SE', 'Free', NULL, NULL, now())"""
        )
        assert "DimUser_changes" in session.attach()["added"]
        session.execute(
            """INSERT INTO "DimUser" VALUES ('8', 'bo', 'SE', 'Free', NULL, NULL, now())"""
        )
        session.execute(
            """UPDATE "DimUser" SET subscription_type = 'Premium', updated_at = now()
            WHERE user_id = '7'"""
        )
        session.execute("""DELETE FROM "DimUser" WHERE user_id = '8'""")
    assert [(op, key, plan) for op, key, plan in change_rows_of(postgres_source)] == [
        ("I", "8", "Free"),
        ("U", "7", "Premium"),
        ("D", "8", "Free"),
    ]


@pytest.mark.postgres
def test_a_truncate_is_captured_as_the_delete_of_every_row(
    postgres_source: SourceDatabase,
) -> None:
    """A DBA's TRUNCATE of a dimension, then its refill: the rows not refilled are deleted in
    gold only if their deletes are recorded (row triggers do not fire on TRUNCATE: they stayed
    current forever, and reconciliation, counting the same records, saw nothing)."""
    users = initialise(postgres_source).dims["DimUser"].sort_by("user_id")
    keys, plans = users["user_id"].to_pylist(), users["subscription_type"].to_pylist()
    with postgres_source.session() as session:
        session.execute('TRUNCATE "DimUser"')
        session.execute(
            """INSERT INTO "DimUser" VALUES (?, 'ann', 'SE', 'Free', NULL, NULL, now())""",
            [keys[0]],
        )
    assert change_rows_of(postgres_source) == [
        *sorted(("D", key, plan) for key, plan in zip(keys, plans, strict=True)),
        ("I", keys[0], "Free"),
    ]


@pytest.mark.postgres
def test_attach_refuses_a_column_created_quoted_with_capitals(
    postgres_source: SourceDatabase,
) -> None:
    """PostgreSQL tells "User_Id" from user_id where SQL compares names without case: the check
    passed, and every query and trigger naming user_id would fail. Refused in one line naming
    the column and the rename."""
    with postgres_source.session() as session:
        create_with_own_dim_user(
            session,
            '"User_Id" integer PRIMARY KEY, user_name text, '
            "country text, subscription_type text, start_date date, end_date date, "
            "updated_at timestamp NOT NULL",
        )
        expected = (
            r'^DimUser: column "User_Id" differs from the catalog\'s user_id in case only, which '
            r'PostgreSQL tells apart: rename it \(ALTER TABLE "DimUser" RENAME COLUMN "User_Id" '
            r"TO user_id\)$"
        )
        with pytest.raises(SourceSchemaError, match=expected):
            session.attach()


@pytest.mark.postgres
def test_attached_capture_records_writes_from_any_search_path(
    postgres_source: SourceDatabase,
) -> None:
    """The user's tables in a schema of their own ("Music", the database's search_path): their
    application writes "Music"."DimUser" from a session on another search_path, where the
    trigger found no "DimUser_changes" and failed the user's INSERT."""
    with postgres_source.session() as session:
        (database,) = session.query("SELECT current_database()")[0]
        session.execute('CREATE SCHEMA "Music"')
        session.execute(f'ALTER DATABASE "{database}" SET search_path TO "Music"')
    with postgres_source.session() as session:
        for table in postgres_source.catalog:
            session.execute(session.sql.create_table(table))
        assert "DimUser_changes" in session.attach()["added"]
        session.execute("SET search_path TO public")
        session.execute(
            """INSERT INTO "Music"."DimUser" (user_id, user_name, country, subscription_type,
            updated_at) VALUES (8, 'bo', 'SE', 'Free', now())"""
        )
        session.execute("RESET search_path")
    assert change_rows_of(postgres_source) == [("I", 8, "Free")]


# Keys moved by one UPDATE of a table without a primary key: shifted up and down, swapped,
# rotated (old key -> new key).
KEY_MOVES = {
    "shifted_up": {1: 2, 2: 3, 3: 4},
    "shifted_down": {1: 0, 2: 1, 3: 2},
    "swapped": {1: 2, 2: 1},
    "rotated": {1: 2, 2: 3, 3: 1},
}


@pytest.mark.parametrize("moves", KEY_MOVES.values(), ids=KEY_MOVES.keys())
def test_keys_moved_by_one_statement_replay_to_the_table(
    source: SourceDatabase, moves: dict[int, int]
) -> None:
    """A user's DimUser without a primary key, its keys moved by one UPDATE: the change
    records applied in sequence order (an insert or update sets its key's row, a delete
    removes it) give the table as it is, whatever order the engine updates the rows in.
    Recorded row by row, keys shifted up (1 -> 2, 2 -> 3) recorded the insert of 2 before its
    delete, and gold closed every shifted key but the last: on PostgreSQL until every delete
    of a statement came first, on SQLite until the delete of a key another row still holds is
    followed by that row's insert."""
    with source.session() as session:
        create_with_own_dim_user(
            session,
            "user_id integer NOT NULL, user_name text, country text, "
            "subscription_type text, start_date date, end_date date, updated_at timestamp",
        )
        session.execute(
            'INSERT INTO "DimUser" VALUES '
            + ", ".join(f"({k}, 'u{k}', 'SE', 'Free', NULL, NULL, '2026-04-01')" for k in (1, 2, 3))
        )
        session.attach()
        cases = " ".join(f"WHEN {old} THEN {new}" for old, new in moves.items())
        session.execute(f'UPDATE "DimUser" SET user_id = CASE user_id {cases} ELSE user_id END')
        table = sorted(
            (int(k), name) for k, name in session.query('SELECT user_id, user_name FROM "DimUser"')
        )
        replayed: dict[int, str] = {}
        for op, key, name in session.query(
            'SELECT "_op", user_id, user_name FROM "DimUser_changes" ORDER BY "_seq"'
        ):
            if op == "D":
                replayed.pop(int(key), None)
            else:
                replayed[int(key)] = name
    assert sorted(replayed.items()) == table


def change_tables(source: SourceDatabase) -> list[str]:
    return [t.change_table for t in source.catalog if t.mode is CaptureMode.CDC]


def change_rows_of(source: SourceDatabase) -> list[tuple]:
    with source.session() as session:
        return session.query(
            'SELECT "_op", user_id, subscription_type FROM "DimUser_changes" ORDER BY "_seq"'
        )


def attach_own_dim_user(session: SourceSession) -> None:
    """A user's DimUser on PostgreSQL holding user 7 ('ann', Free), attached."""
    create_with_own_dim_user(
        session,
        "user_id integer PRIMARY KEY, user_name text, country text, "
        "subscription_type text, start_date date, end_date date, updated_at timestamp",
    )
    session.execute("""INSERT INTO "DimUser" VALUES (7, 'ann', 'SE', 'Free', NULL, NULL, now())""")
    session.attach()


@pytest.mark.postgres
def test_a_renamed_column_lets_the_users_writes_pass_and_stops_the_copy(
    postgres_source: SourceDatabase, tmp_path: Path
) -> None:
    """An attached DimUser whose column `country` the user renames: their insert, updates (of
    the key too), delete and TRUNCATE pass, recorded with that column NULL (the trigger named
    NEW.country and failed every write: 'record "new" has no field "country"'), and the copy
    refuses the renamed column in one line."""
    with postgres_source.session() as session:
        attach_own_dim_user(session)
        session.execute('ALTER TABLE "DimUser" RENAME COLUMN country TO land')
        session.execute(
            """INSERT INTO "DimUser" VALUES (8, 'bo', 'SE', 'Free', NULL, NULL, now())"""
        )
        session.execute("""UPDATE "DimUser" SET subscription_type = 'Premium' WHERE user_id = 7""")
        session.execute("""UPDATE "DimUser" SET user_id = 9 WHERE user_id = 8""")
        session.execute("""DELETE FROM "DimUser" WHERE user_id = 9""")
        session.execute('TRUNCATE "DimUser"')
        countries = session.query('SELECT DISTINCT country FROM "DimUser_changes"')
    assert change_rows_of(postgres_source) == [
        ("I", 8, "Free"),
        ("U", 7, "Premium"),
        ("D", 8, "Free"),
        ("I", 9, "Free"),
        ("D", 9, "Free"),
        ("D", 7, "Premium"),
    ]
    assert countries == [(None,)]
    runner = runner_for(postgres_source, tmp_path / "lake")
    with pytest.raises(
        SourceSchemaError, match=r"^DimUser: the source has no column\(s\) country "
    ):
        runner.source_columns(postgres_source.catalog["DimUser"])


# The capture `source attach` made before TRUNCATEs were recorded (commit 4a2d8d5's parent):
# one row trigger, a key update recorded as a delete and an insert in the AFTER trigger.
_OLD_PG_CAPTURE = [
    """CREATE FUNCTION "DimUser_capture"() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP = 'DELETE' THEN
        INSERT INTO "DimUser_changes" ("_op", "_changed_at", user_id, user_name, country,
          subscription_type, start_date, end_date, updated_at) VALUES ('D', now(), OLD.user_id,
          OLD.user_name, OLD.country, OLD.subscription_type, OLD.start_date, OLD.end_date,
          OLD.updated_at);
        RETURN OLD;
      END IF;
      INSERT INTO "DimUser_changes" ("_op", "_changed_at", user_id, user_name, country,
        subscription_type, start_date, end_date, updated_at) VALUES (left(TG_OP, 1), now(),
        NEW.user_id, NEW.user_name, NEW.country, NEW.subscription_type, NEW.start_date,
        NEW.end_date, NEW.updated_at);
      RETURN NEW;
    END $$""",
    """CREATE TRIGGER "DimUser_capture" AFTER INSERT OR UPDATE OR DELETE ON "DimUser"
    FOR EACH ROW EXECUTE FUNCTION "DimUser_capture"()""",
]
# An older version recorded nothing of the capture it made.
_NO_CAPTURE_RECORDED = "DELETE FROM source_meta WHERE name LIKE 'capture:%'"
# A trigger of the user's own on the same table, which no command may touch.
_USERS_TRIGGER = [
    """CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN NEW.user_name := NEW.user_name || '!'; RETURN NEW; END $$""",
    """CREATE TRIGGER "DimUser_audit" BEFORE INSERT ON "DimUser" FOR EACH ROW
    EXECUTE FUNCTION audit()""",
]


@pytest.mark.postgres
def test_attach_brings_an_older_capture_up_to_date(postgres_source: SourceDatabase) -> None:
    """A source attached by an older version keeps its older triggers (no TRUNCATE recorded):
    `source attach` added capture only where a change table was missing. It now replaces our
    triggers once (a second attach changes nothing) and leaves the user's own trigger alone."""
    with postgres_source.session() as session:
        attach_own_dim_user(session)
        for statement in session.sql.drop_capture_triggers(postgres_source.catalog["DimUser"]):
            session.execute(statement)
        for statement in _OLD_PG_CAPTURE + _USERS_TRIGGER + [_NO_CAPTURE_RECORDED]:
            session.execute(statement)
        attached = session.attach()
        assert session.attach() == {"added": [], "updated": []}
        session.execute(
            """INSERT INTO "DimUser" VALUES (8, 'bo', 'SE', 'Free', NULL, NULL, now())"""
        )
        session.execute('TRUNCATE "DimUser"')
        names = session.query('SELECT DISTINCT user_name FROM "DimUser_changes"')
    assert attached == {"added": [], "updated": change_tables(postgres_source)}
    assert change_rows_of(postgres_source) == [("I", 8, "Free"), ("D", 7, "Free"), ("D", 8, "Free")]
    assert sorted(names) == [("ann",), ("bo!",)]


def test_attach_brings_an_older_sqlite_capture_up_to_date(sqlite_source: SourceDatabase) -> None:
    """A SQLite source whose key-update trigger an older version did not make: `source attach`
    adds it (it added capture only where a change table was missing), once, leaving the
    user's own trigger alone."""
    initialise(sqlite_source)
    with sqlite_source.session() as session:
        session.execute("DROP TRIGGER DimUser_capture_k")
        session.execute("DROP TRIGGER DimUser_capture_u")
        session.execute(
            "CREATE TRIGGER DimUser_capture_u AFTER UPDATE ON DimUser BEGIN INSERT INTO "
            "DimUser_changes (_op, _changed_at, user_id, user_name, country, subscription_type, "
            "start_date, end_date, updated_at) VALUES ('U', '2026-04-01', NEW.user_id, "
            "NEW.user_name, NEW.country, NEW.subscription_type, NEW.start_date, NEW.end_date, "
            "NEW.updated_at); END"
        )
        session.execute(
            "CREATE TRIGGER DimUser_audit AFTER DELETE ON DimUser BEGIN "
            "INSERT INTO source_meta VALUES ('deleted:' || OLD.user_id, 'yes'); END"
        )
        session.execute(_NO_CAPTURE_RECORDED)
        assert session.attach() == {"added": [], "updated": change_tables(sqlite_source)}
        assert session.attach() == {"added": [], "updated": []}
        (key,) = session.query("SELECT MIN(user_id) FROM DimUser")[0]
        session.execute("UPDATE DimUser SET user_id = ? WHERE user_id = ?", [10**6, key])
        session.execute("DELETE FROM DimUser WHERE user_id = ?", [10**6])
        ops = session.query("SELECT _op, user_id FROM DimUser_changes ORDER BY _seq")
        audited = session.query("SELECT name FROM source_meta WHERE name LIKE 'deleted:%'")
    assert ops == [("D", key), ("I", 10**6), ("D", 10**6)]
    assert audited == [(f"deleted:{10**6}",)]


@pytest.mark.postgres
def test_dropping_the_source_under_a_users_view_names_it_and_drops_nothing(
    postgres_source: SourceDatabase,
) -> None:
    """`source init --force` where a user's view reads FactStream: refused in one line naming
    the view, every table still there (the driver's error, with a traceback, after the tables
    before FactStream had been dropped)."""
    initialise(postgres_source)
    with postgres_source.session() as session:
        session.execute('CREATE VIEW plays AS SELECT stream_id FROM "FactStream"')
        expected = (
            r'^cannot drop the source\'s tables: view plays depends on table "FactStream": drop '
            r"it first \(and create it again after `source init`\); nothing was dropped$"
        )
        with pytest.raises(SourceConfigError, match=expected):
            session.drop_all()
        assert all(session.query(session.sql.columns_query(t.name)) for t in session.catalog)


@pytest.mark.postgres
def test_a_table_created_unquoted_is_named_with_the_spelling_expected(
    postgres_source: SourceDatabase,
) -> None:
    """FactStream created without quotes is factstream on PostgreSQL: `source attach` said only
    that the source had no such table; it names the table found and the rename."""
    with postgres_source.session() as session:
        create_with_own_table(
            session,
            "FactStream",
            "CREATE TABLE FactStream (stream_id bigint, user_id int, track_id int, date_key int, "
            "listen_duration int, device_type text, stream_timestamp timestamp)",
        )
        expected = (
            r'^FactStream: the source has no table "FactStream" but has factstream, which differs '
            r"in case only \(PostgreSQL keeps the case of a quoted name and lowers an unquoted "
            r'one\): rename it \(ALTER TABLE factstream RENAME TO "FactStream"\)$'
        )
        with pytest.raises(SourceSchemaError, match=expected):
            session.attach()


@pytest.mark.postgres
def test_tables_outside_the_search_path_are_named_with_the_setting(
    postgres_source: SourceDatabase,
) -> None:
    """The user's tables in their schema "music", the connection on another search_path: every
    command said the source held no tables yet and to run `source init` (which would create
    empty ones beside them); it names the schema and the setting that reaches it."""
    with postgres_source.session() as session:
        session.execute("CREATE SCHEMA music")
        session.execute("SET search_path TO music")
        for table in postgres_source.catalog:
            session.execute(session.sql.create_table(table))
    expected = (
        r"^the source's tables are in schema music, not on the connection's search_path "
        r"\(public\): add ConnSettings=\{SET search_path TO music\} to SPOTIFY_SOURCE_ODBC, or "
        r"run ALTER ROLE spotify SET search_path TO music$"
    )
    with pytest.raises(SourceUnavailableError, match=expected):
        postgres_source.require_initialised()
    attached = r"^DimUser: the source's table is in schema music, "
    with postgres_source.session() as session, pytest.raises(SourceSchemaError, match=attached):
        session.attach()


class _Recording:
    """A DB-API connection that records what it is asked to execute and returns no rows."""

    def __init__(self) -> None:
        self.executed: list[str] = []

    def cursor(self) -> _Recording:
        return self

    def execute(self, statement: str, params: object = ()) -> None:
        self.executed.append(statement)

    def fetchall(self) -> list[tuple]:
        return []

    def close(self) -> None:
        pass


def test_sql_server_source_schema_is_tsql_that_parses() -> None:
    """`source init`'s schema on SQL Server, as the session issues it: every statement parses,
    native CDC enabled per table (recording the capture asked a dialect without triggers of
    ours for them and raised NotImplementedError)."""
    conn = _Recording()
    session = SourceSession(conn, DIALECTS[Dialect.TSQL], CATALOG)
    session.create_schema()
    session.finish_schema()
    for statement in conn.executed:
        parse_tsql(statement)
    enabled = [s for s in conn.executed if "sys.sp_cdc_enable_table" in s]
    assert len(enabled) == len([t for t in CATALOG if t.mode is CaptureMode.CDC])
