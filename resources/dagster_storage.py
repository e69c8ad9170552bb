"""Dagster's event log on SQLite, with the batch write Dagster's own SQLite storage lacks.

A single-run backfill over N daily partitions records, per partitioned asset, N materializations
after its step, which the UI needs to show each partition's status and metadata, and at run
creation N planned events, where this storage takes one naming the N partitions (and reads the
failed and in-progress partitions from it). Dagster hands such events to
`store_event_batch` when `DAGSTER_EVENT_BATCH_SIZE` is set, but its SQLite storage stores them
one by one, each in two transactions of their own (the run's shard and the cross-run index): a
first load of three years spent most of its time there. Here a batch is one transaction per
shard, holding exactly the rows the one-by-one path writes, so everything that reads the event
log (the UI, partition status, run planning) sees the same history.

Dagster's SQLite storage also creates a SQLAlchemy engine for each connection, that is for each
event stored, and so compiles every statement afresh each time; here each file's engine is kept,
and its connections to the file: in write-ahead-log mode, the last connection to a file to close
checkpoints the log into it and deletes it, so a connection per transaction (Dagster's) made
SQLite create, sync and delete the log every time (~2,400 syncs on a first load of 320 days);
and whether the index has a table, a column or a secondary index, which Dagster asks for each
event and step, is asked until the answer is yes. And the run and schedule storages check their
schema against every Alembic migration script each time an instance is created, which a code
server does for each sensor evaluation: here once per process and file.

The instance the CLI creates (`spotify_assets/cli/commands.py`) names this class in its
`dagster.yaml`, and the CLI sets `DAGSTER_EVENT_BATCH_SIZE`; `dg dev` on the same instance needs
it too.
"""

from __future__ import annotations

import atexit
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import ClassVar, Self, TypeVar

from dagster import AssetKey, DagsterEventType, StringSource
from dagster._core.events import ASSET_CHECK_EVENTS, ASSET_EVENTS
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.event_log.schema import (
    AssetCheckExecutionsTable,
    SqlEventLogStorageTable,
)
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME
from dagster._core.storage.runs import SqliteRunStorage
from dagster._core.storage.schedules import SqliteScheduleStorage
from dagster._core.storage.sqlalchemy_compat import db_select
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS, create_db_conn_string
from dagster._serdes import ConfigurableClassData, deserialize_value, serialize_value
from sqlalchemy import create_engine
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import ConnectionPoolEntry

# Dagster hands events to `store_event_batch` in batches of up to this many only when it is set.
BATCH_SIZE_VARIABLE = "DAGSTER_EVENT_BATCH_SIZE"
EVENT_BATCH_SIZE = 1000


class ConfiguredByHome:
    """A part of the instance configured by its home alone (`dagster_home`, `env: DAGSTER_HOME`
    in the `dagster.yaml` the CLI writes): its files are where Dagster's default keeps them, so
    an existing instance keeps them."""

    @classmethod
    def config_type(cls) -> dict[str, object]:
        return {"dagster_home": StringSource}


class BatchingSqliteEventLogStorage(ConfiguredByHome, SqliteEventLogStorage):
    """`SqliteEventLogStorage` (same files and schema) whose batch write is one transaction per
    shard instead of one per event."""

    @classmethod
    def from_config_value(  # ty: ignore[invalid-method-override]
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, str]
    ) -> BatchingSqliteEventLogStorage:
        runs = os.path.join(config_value["dagster_home"], "history", "runs")
        return cls(base_dir=runs, inst_data=inst_data)

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        self._features: set[tuple[str, str]] = set()  # of the index shard, see `_present`
        super().__init__(base_dir, inst_data)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        """A transaction on the shard, as Dagster's, on the shard's kept engine."""
        with self._db_lock:
            engine = _engine(self.conn_string_for_shard(shard))
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def has_table(self, table_name: str) -> bool:
        """As Dagster's (asked for each asset event stored), on the index's kept engine."""

        def check() -> bool:
            engine = _engine(self.conn_string_for_shard(INDEX_SHARD_NAME))
            with engine.connect() as conn:
                return bool(engine.dialect.has_table(conn, table_name))

        return self._present(("table", table_name), check)

    def has_secondary_index(self, name: str) -> bool:
        dagster = super()
        return self._present(("secondary index", name), lambda: dagster.has_secondary_index(name))

    def has_asset_key_col(self, column_name: str) -> bool:
        dagster = super()
        return self._present(
            ("column", column_name), lambda: dagster.has_asset_key_col(column_name)
        )

    def _has_asset_key_col_on_connection(self, conn: Connection, column_name: str) -> bool:
        dagster = super()
        return self._present(
            ("column", column_name),
            lambda: dagster._has_asset_key_col_on_connection(conn, column_name),
        )

    def _present(self, feature: tuple[str, str], check: Callable[[], bool]) -> bool:
        """Whether the index has a table, a secondary index or an asset-key column: Dagster asks
        for each event stored or step started, each time on a connection of its own (a third of
        the event log's work in a run). Only a yes is kept: migrations add features, none removes
        one, and a no is asked again (a migration in another process may add it)."""
        if feature in self._features:
            return True
        if check():
            self._features.add(feature)
            return True
        return False

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        # Dagster batches the events of one run (its planned events, or one step's asset events).
        for run_id in dict.fromkeys(event.run_id for event in events):
            self._store_run_batch([event for event in events if event.run_id == run_id])

    def _store_run_batch(self, events: Sequence[EventLogEntry]) -> None:
        rows = [self._event_to_row(event) for event in events]
        with self.run_connection(events[0].run_id) as conn:
            conn.execute(SqlEventLogStorageTable.insert(), rows)

        # As `store_event`: asset and asset check events are mirrored into the index shard.
        indexed = [
            (event, row)
            for event, row in zip(events, rows, strict=True)
            if event.dagster_event_type in ASSET_EVENTS | ASSET_CHECK_EVENTS
        ]
        if not indexed:
            return
        with self.index_transaction() as conn:
            inserted = conn.execute(
                SqlEventLogStorageTable.insert().returning(
                    SqlEventLogStorageTable.c.id, sort_by_parameter_order=True
                ),
                [row for _, row in indexed],
            )
            ids = [row[0] for row in inserted]
            assets = [
                (event, event_id)
                for (event, _), event_id in zip(indexed, ids, strict=True)
                if event.dagster_event_type in ASSET_EVENTS
            ]
            self._store_asset_event_tags(conn, [e for e, _ in assets], [i for _, i in assets])
            # The asset's row keeps what the last event of each type set: applying only those,
            # in order, leaves it as applying every event would.
            last = {
                (event.get_dagster_event().asset_key, event.dagster_event_type): n
                for n, (event, _) in enumerate(assets)
            }
            for n in sorted(last.values()):
                self._store_asset_event(conn, *assets[n])
        for (event, _), event_id in zip(indexed, ids, strict=True):
            if event.dagster_event_type in ASSET_CHECK_EVENTS:
                self.store_asset_check_event(event, event_id)

    @property
    def supports_partition_subset_in_asset_materialization_planned_events(self) -> bool:
        """A range run plans each asset with one event naming its partitions as a subset, where
        Dagster's SQLite storage takes one per asset and partition (half of a first load's
        events). Dagster's own storage then loses which partitions are in progress or failed
        (it reads them from the planned events' partition column); this one reads the subsets
        too (`get_latest_asset_partition_materialization_attempts_without_materializations`)."""
        return True

    def get_latest_asset_partition_materialization_attempts_without_materializations(
        self, asset_key: AssetKey, after_storage_id: int | None = None
    ) -> Mapping[str, tuple[str, int]]:
        """As Dagster's: each partition whose latest planned event (after `after_storage_id`)
        no materialization followed, with that event's run and storage id; a planned event that
        names a subset plans each partition of it."""
        planned = DagsterEventType.ASSET_MATERIALIZATION_PLANNED
        latest = self._latest_event_ids_by_partition_subquery(
            asset_key, [planned], after_cursor=after_storage_id
        )
        table = SqlEventLogStorageTable.c
        query = db_select([table.id, table.run_id, table.partition, table.event]).where(
            table.asset_key == asset_key.to_string(),
            table.dagster_event_type == planned.value,
            table.partition.is_(None),
        )
        if after_storage_id is not None:
            query = query.where(table.id > after_storage_id)
        details = self._get_assets_details([asset_key])
        query = self._add_assets_wipe_filter_to_query(query, details, [asset_key])
        by_partition = db_select([table.id, table.run_id, table.partition]).select_from(
            latest.join(SqlEventLogStorageTable, table.id == latest.c.id)
        )
        attempts: dict[str, tuple[str, int]] = {}
        with self.index_connection() as conn:
            rows = [*conn.execute(by_partition), *conn.execute(query)]
        for row in sorted(rows, key=lambda row: row.id):  # the latest of each partition wins
            if row.partition is not None:
                attempts[row.partition] = (row.run_id, row.id)
                continue
            event = deserialize_value(row.event, EventLogEntry).get_dagster_event()
            keys = event.asset_materialization_planned_data.partitions_subset
            for key in keys.get_partition_keys() if keys is not None else ():
                attempts[key] = (row.run_id, row.id)
        materialized = self.get_latest_storage_id_by_partition(
            asset_key, DagsterEventType.ASSET_MATERIALIZATION
        )
        return {
            key: (run_id, event_id)
            for key, (run_id, event_id) in attempts.items()
            if materialized.get(key, -1) < event_id
        }

    def _store_asset_check_evaluation_planned(
        self, event: EventLogEntry, event_id: int | None
    ) -> None:
        """One row per check and run, where Dagster writes one per partition of a range run: the
        assets evaluate each check once for the run (a result without a partition), which
        Dagster records on the row without a partition, leaving the others PLANNED for ever."""
        planned = event.get_dagster_event().asset_check_planned_data
        with self.index_connection() as conn:
            conn.execute(
                AssetCheckExecutionsTable.insert(),
                {
                    "asset_key": planned.asset_key.to_string(),
                    "check_name": planned.check_name,
                    "partition": None,
                    "run_id": event.run_id,
                    "execution_status": AssetCheckExecutionRecordStatus.PLANNED.value,
                    "evaluation_event": serialize_value(event),
                    "evaluation_event_timestamp": self._event_insert_timestamp(event),
                    "evaluation_event_storage_id": event_id,
                },
            )


class _KeptEngine(ConfiguredByHome):
    """On the file's kept engine, its schema checked once per process (`_checked_once`)."""

    folder: ClassVar[str]  # under the instance's home, as Dagster's default
    kind: ClassVar[str]  # Dagster's name for the file
    _conn_string: str

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, str]
    ) -> Self:
        return _checked_once(cls, config_value["dagster_home"], inst_data)  # type: ignore[arg-type]

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        with _engine(self._conn_string).connect() as conn, conn.begin():
            yield conn


class KeptSqliteRunStorage(_KeptEngine, SqliteRunStorage):
    """Dagster's SQLite run storage (`history/runs.db` in the instance's home, as by default) on
    a kept engine, its schema checked once per process."""

    folder: ClassVar[str] = "history"
    kind: ClassVar[str] = "runs"


class KeptSqliteScheduleStorage(_KeptEngine, SqliteScheduleStorage):
    """Dagster's SQLite schedule storage (`schedules/schedules.db`, as by default) on a kept
    engine, its schema checked once per process: sensor ticks are written there."""

    folder: ClassVar[str] = "schedules"
    kind: ClassVar[str] = "schedules"


_SCHEMA_CHECKED: set[str] = set()  # the files whose schema this process has checked or created


Kept = TypeVar("Kept", KeptSqliteRunStorage, KeptSqliteScheduleStorage)


def _checked_once(storage: type[Kept], home: str, inst_data: ConfigurableClassData | None) -> Kept:
    """The storage on its file under the instance's `home`; the first time in this process
    through Dagster's `from_local`, which creates or checks the schema."""
    base_dir = os.path.join(home, storage.folder)
    url = create_db_conn_string(base_dir, storage.kind)
    if url in _SCHEMA_CHECKED:
        return storage(url, inst_data)
    created = storage.from_local(base_dir, inst_data)
    _SCHEMA_CHECKED.add(url)
    return created


# A process writes one run's event shard at a time, the index, the runs and the ticks; one
# reading the history (the UI) goes through many runs' shards: the least recently used engines
# are closed.
KEPT_ENGINES = 16
_engines: OrderedDict[str, Engine] = OrderedDict()  # least recently used first
_engines_lock = threading.Lock()


def _engine(url: str) -> Engine:
    with _engines_lock:
        engine = _engines.pop(url, None) or _kept_engine(url)
        _engines[url] = engine
        while len(_engines) > KEPT_ENGINES:
            _engines.popitem(last=False)[1].dispose()
        return engine


def _kept_engine(url: str) -> Engine:
    """An engine that keeps its connections to the file, until the file is deleted or replaced
    (a home removed and created again): a kept connection would go on writing to the deleted
    file, so the pool opens a new one instead."""
    engine = create_engine(
        url,
        # Two connections kept (Dagster nests one, e.g. a schema check inside a write), as many
        # more as threads overlap (each closed when returned); handed from thread to thread by
        # the pool, never used by two at once.
        pool_size=2,
        max_overflow=-1,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
    )
    sqlalchemy_event.listen(engine, "connect", _sync_at_checkpoints)
    path = str(engine.url.database)

    @sqlalchemy_event.listens_for(engine, "connect")
    def opened(_: object, record: ConnectionPoolEntry) -> None:
        record.info[_FILE_ID] = _file_id(path)

    @sqlalchemy_event.listens_for(engine, "checkout")
    def checked_out(_: object, record: ConnectionPoolEntry, __: object) -> None:
        if record.info.get(_FILE_ID) != _file_id(path):
            raise DisconnectionError(f"{path} was replaced since it was opened")

    return engine


_FILE_ID = "file_id"


def _sync_at_checkpoints(connection: sqlite3.Connection, _: object) -> None:
    """Dagster puts its files in WAL mode as it creates them, where SQLite's default (FULL)
    waits for the disk at every commit: ~750 commits in a small first load, seconds of waiting
    on a busy disk. NORMAL waits at WAL checkpoints only: a commit survives a killed process, a
    power cut may lose the last ones, and the file never ends up corrupt."""
    connection.execute("PRAGMA synchronous=NORMAL")


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


@atexit.register
def _close_engines() -> None:
    """At exit the last connection to each file checkpoints its log into it."""
    with _engines_lock:
        while _engines:
            _engines.popitem()[1].dispose()
