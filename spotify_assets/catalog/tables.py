"""The table catalog: the single source of truth for every table of the lakehouse.

Source DDL, change capture, the copy queries, the ADF JSON, the silver rules, the gold specs and the
Dagster assets are all derived from these entries. Adding a source table means adding one entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import date
from enum import StrEnum

import pyarrow as pa

from spotify_assets.catalog.gold_spec import (
    END_AT,
    START_AT,
    Aggregate,
    Calendar,
    GoldSpec,
    Lookup,
    Measure,
    PointInTimeFact,
    Reference,
    Scd2Dimension,
)
from spotify_assets.catalog.reference import COUNTRY_CODES, DEVICES, SUBSCRIPTIONS
from spotify_assets.catalog.rules import Clean, Derived, Rule, SilverSpec, in_list

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class CatalogError(ValueError):
    """A catalog entry or a catalog override is invalid."""


def validate_identifier(name: str) -> str:
    """Return `name` if it is a plain SQL identifier; reject anything that could inject SQL."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise CatalogError(
            f"invalid identifier {name!r}: use letters, digits and '_', starting with a letter "
            "or '_', at most 63 characters"
        )
    return name


class ColumnType(StrEnum):
    """Logical column types; each dialect and Arrow map them in one place."""

    INT = "int"
    BIGINT = "bigint"
    STRING = "string"
    DATE = "date"
    TIMESTAMP = "timestamp"

    @property
    def arrow(self) -> pa.DataType:
        return _ARROW_TYPES[self]


_ARROW_TYPES: dict[ColumnType, pa.DataType] = {
    ColumnType.INT: pa.int32(),
    ColumnType.BIGINT: pa.int64(),
    ColumnType.STRING: pa.string(),
    ColumnType.DATE: pa.date32(),
    ColumnType.TIMESTAMP: pa.timestamp("us"),
}


class TableRole(StrEnum):
    """What a table is in the star schema; the simulator and gold treat each role alike."""

    DIMENSION = "dimension"  # entities that change: inserted, updated, deleted
    CALENDAR = "calendar"  # reference data that only grows
    FACT = "fact"  # events, append-only at the source


class CaptureMode(StrEnum):
    """How bronze captures a table's changes (README: Bronze ingestion)."""

    SNAPSHOT = "snapshot"
    WATERMARK = "watermark"
    CDC = "cdc"


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    nullable: bool = True
    length: int | None = None  # max characters of a STRING column on servers that need one
    description: str = ""  # what a person sees on every asset holding the column

    def __post_init__(self) -> None:
        validate_identifier(self.name)
        if self.type is ColumnType.STRING and not self.length:
            raise CatalogError(f"string column {self.name!r} needs a length")


@dataclass(frozen=True)
class Table:
    """One source table and everything derived from it."""

    name: str
    lake_name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    role: TableRole
    mode: CaptureMode
    cdc_column: str | None
    description: str = ""
    silver: SilverSpec = field(default_factory=SilverSpec, compare=False)
    gold: GoldSpec | None = field(default=None, compare=False)
    # The first daily partition: configuration (Settings.partition_start), never a constant;
    # None until `Catalog.with_partition_start` sets it.
    partition_start: date | None = None

    def __post_init__(self) -> None:
        validate_identifier(self.name)
        validate_identifier(self.lake_name)
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise CatalogError(f"{self.name}: duplicate column names")
        for k in self.key:
            if k not in names:
                raise CatalogError(f"{self.name}: key column {k!r} is not a column")
            if self.column(k).nullable:
                raise CatalogError(f"{self.name}: key column {k!r} must be NOT NULL")
        if self.mode is CaptureMode.SNAPSHOT:
            if self.cdc_column is not None:
                raise CatalogError(f"{self.name}: snapshot tables have no cdc column")
        elif self.cdc_column is None or self.cdc_column not in names:
            raise CatalogError(f"{self.name}: mode {self.mode} needs a cdc column of the table")
        elif self.column(self.cdc_column).type is not ColumnType.TIMESTAMP:
            raise CatalogError(f"{self.name}: cdc column {self.cdc_column!r} must be a timestamp")

    @property
    def first_partition(self) -> date:
        """The configured partition start: no change time before it is loaded."""
        if self.partition_start is None:
            raise CatalogError(f"{self.name}: the partition start is not configured")
        return self.partition_start

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise CatalogError(f"{self.name}: no column {name!r}")

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema(
            [pa.field(c.name, c.type.arrow, nullable=c.nullable) for c in self.columns]
        )

    @property
    def change_table(self) -> str:
        """Trigger-maintained change table (SQLite, PostgreSQL); SQL Server uses native CDC."""
        return f"{self.name}_changes"

    @property
    def change_time_column(self) -> str | None:
        """The time bronze windows and partitions this table by (None: unpartitioned snapshot)."""
        if self.mode is CaptureMode.CDC:
            return CHANGE_AT
        return self.cdc_column if self.mode is CaptureMode.WATERMARK else None

    @property
    def copied_schema(self) -> pa.Schema:
        """The source's columns as a copy reads them: any may hold NULL whatever the catalog
        declares (a source without the constraint); bronze keeps what the source holds and
        silver's rules judge it."""
        return pa.schema([f.with_nullable(True) for f in self.arrow_schema])

    @property
    def extract_schema(self) -> pa.Schema:
        """The columns an extraction query returns: cdc mode adds op, sequence and change time."""
        if self.mode is not CaptureMode.CDC:
            return self.copied_schema
        audit = [
            pa.field(CHANGE_OP, pa.string(), nullable=False),
            pa.field(CHANGE_SEQ, pa.int64()),  # NULL for images
            pa.field(CHANGE_AT, pa.timestamp("us"), nullable=False),
        ]
        return pa.schema(audit + list(self.copied_schema))


# Audit columns of a change-table row, in order, ahead of the row image.
CHANGE_SEQ = "_seq"
CHANGE_OP = "_op"
CHANGE_AT = "_changed_at"
# Audit columns every bronze extraction adds after the source's (spotify_assets/bronze/schema.py).
EXTRACTED_AT = "_extracted_at"
WINDOW_START = "_window_start"
WINDOW_END = "_window_end"
RUN_ID = "_run_id"
# Columns silver adds: the business time of a version (a delete's: its change time), when a
# dimension's version takes effect (its business time, never before a change preceding it in the
# source's sequence) and the partition date of a row.
VERSION_AT = "_version_at"
EFFECTIVE_AT = "_effective_at"
CHANGE_DATE = "_change_date"
# Bronze's audit column of values that did not fit their declared type: {column: raw text}.
UNTYPED = "_untyped"
# Every table's rows with such a value go to quarantine, raw text and all.
VALUES_TYPED = Rule("values_typed", f"{UNTYPED} IS NULL")
# Silver's rank of a fact row among the rows of its key (1: the one kept; see silver.rank_keys).
KEY_RANK = "_key_rank"

# What each column a layer adds holds: said once here, shown on every asset that has it.
AUDIT_COLUMNS: dict[str, str] = {
    CHANGE_OP: "Change operation: I insert, U update, D delete (change records), S a row image "
    "(snapshot, watermark copy, or the current row in cdc mode).",
    CHANGE_SEQ: "The source's change sequence (the LSN on SQL Server); NULL for a row image.",
    CHANGE_AT: "When the source recorded the change (a cdc table's partition time).",
    EXTRACTED_AT: "When the copy read the row from the source (UTC).",
    WINDOW_START: "Start of the load window the row was copied in (NULL: a whole-table snapshot).",
    WINDOW_END: "End of the load window the row was copied in, exclusive (NULL: a snapshot).",
    RUN_ID: "The Dagster run that copied the row.",
    UNTYPED: "Raw text of values that did not fit their declared type, by column (NULL: none).",
    VERSION_AT: "Business time of the version: the change-time column, or a delete's change time "
    "(NULL for snapshot rows).",
    EFFECTIVE_AT: "When the version takes effect: its business time, never before a change that "
    "precedes it in the source's sequence.",
    CHANGE_DATE: "The UTC day of the row's change time: its partition.",
    START_AT: "When this version became current.",
    END_AT: "When this version stopped being current (NULL: the current version).",
}


def _s(name: str, length: int, description: str, nullable: bool = True) -> Column:
    return Column(name, ColumnType.STRING, nullable, length, description)


# Every dimension's business time: the change feed's cursor and SCD2's order.
_UPDATED_AT = Column(
    "updated_at",
    ColumnType.TIMESTAMP,
    nullable=False,
    description="When the source last changed the row: its business time.",
)


def _scd2(key: str, tracked: tuple[str, ...]) -> Scd2Dimension:
    """Versions ordered by the time they take effect, then change sequence; a change-feed
    delete closes the current version."""
    return Scd2Dimension(
        tracked=tracked,
        effective_time=EFFECTIVE_AT,
        change_sequence=CHANGE_SEQ,
        delete_when=f"{CHANGE_OP} = 'D'",
        expectations=(Rule(f"{key}_present", f"{key} IS NOT NULL"),),
    )


DIM_USER = Table(
    name="DimUser",
    lake_name="dim_user",
    description="Listeners and their subscription.",
    columns=(
        Column("user_id", ColumnType.INT, nullable=False, description="The listener's id."),
        _s("user_name", 100, "The listener's name (upper case from silver on)."),
        _s("country", 50, "The listener's country (ISO 3166 alpha-2 from silver on)."),
        _s("subscription_type", 20, f"The plan: {', '.join(SUBSCRIPTIONS)}."),
        Column("start_date", ColumnType.DATE, description="When the subscription started."),
        Column("end_date", ColumnType.DATE, description="When it ended (NULL: still running)."),
        _UPDATED_AT,
    ),
    key=("user_id",),
    role=TableRole.DIMENSION,
    mode=CaptureMode.CDC,
    cdc_column="updated_at",
    silver=SilverSpec(
        clean=(
            ("user_name", (Clean.TRIM, Clean.UPPER)),
            ("country", (Clean.COUNTRY_CODE,)),
            ("subscription_type", (Clean.TRIM, Clean.INITCAP)),
        ),
        rules=(
            Rule("user_id_not_null", "user_id IS NOT NULL", critical=True),
            VALUES_TYPED,
            Rule("subscription_type_known", in_list("subscription_type", SUBSCRIPTIONS)),
            Rule("country_is_iso", in_list("country", COUNTRY_CODES)),
        ),
    ),
    gold=_scd2("user_id", ("user_name", "country", "subscription_type", "start_date", "end_date")),
)

DIM_ARTIST = Table(
    name="DimArtist",
    lake_name="dim_artist",
    description="Artists with genre and country.",
    columns=(
        Column("artist_id", ColumnType.INT, nullable=False, description="The artist's id."),
        _s("artist_name", 100, "The artist's name."),
        _s("genre", 50, "Main genre (lower case from silver on)."),
        _s("country", 50, "The artist's country (ISO 3166 alpha-2 from silver on)."),
        _UPDATED_AT,
    ),
    key=("artist_id",),
    role=TableRole.DIMENSION,
    mode=CaptureMode.CDC,
    cdc_column="updated_at",
    silver=SilverSpec(
        clean=(
            ("artist_name", (Clean.TRIM,)),
            ("genre", (Clean.TRIM, Clean.LOWER)),
            ("country", (Clean.COUNTRY_CODE,)),
        ),
        rules=(
            Rule("artist_id_not_null", "artist_id IS NOT NULL", critical=True),
            VALUES_TYPED,
            Rule("artist_name_present", "artist_name IS NOT NULL AND artist_name <> ''"),
            Rule("country_is_iso", in_list("country", COUNTRY_CODES)),
        ),
    ),
    gold=_scd2("artist_id", ("artist_name", "genre", "country")),
)

DIM_TRACK = Table(
    name="DimTrack",
    lake_name="dim_track",
    description="Tracks, their artist and album.",
    columns=(
        Column("track_id", ColumnType.INT, nullable=False, description="The track's id."),
        _s("track_name", 200, "The track's title (dashes as spaces from silver on)."),
        Column("artist_id", ColumnType.INT, description="The track's artist."),
        _s("album_name", 200, "The album the track is on."),
        Column("duration_sec", ColumnType.INT, description="Length of the track in seconds."),
        Column("release_date", ColumnType.DATE, description="When the track was released."),
        _UPDATED_AT,
    ),
    key=("track_id",),
    role=TableRole.DIMENSION,
    mode=CaptureMode.CDC,
    cdc_column="updated_at",
    silver=SilverSpec(
        clean=(
            ("track_name", (Clean.DASHES_TO_SPACES, Clean.TRIM)),
            ("album_name", (Clean.TRIM,)),
        ),
        derived=(
            Derived(
                "duration_flag",
                "CASE WHEN duration_sec < 150 THEN 'low' "
                "WHEN duration_sec < 300 THEN 'medium' ELSE 'high' END",
                "string",
                "low under 150 s, medium under 300 s, high from 300 s.",
            ),
        ),
        rules=(
            Rule("track_id_not_null", "track_id IS NOT NULL", critical=True),
            VALUES_TYPED,
            Rule("artist_id_not_null", "artist_id IS NOT NULL"),
            Rule("duration_positive", "duration_sec > 0"),
        ),
    ),
    gold=_scd2(
        "track_id",
        ("track_name", "artist_id", "album_name", "duration_sec", "release_date", "duration_flag"),
    ),
)

DIM_DATE = Table(
    name="DimDate",
    lake_name="dim_date",
    description="Calendar days, keyed yyyymmdd.",
    columns=(
        Column("date_key", ColumnType.INT, nullable=False, description="The day as yyyymmdd."),
        Column("date", ColumnType.DATE, nullable=False, description="The day."),
        Column("day", ColumnType.INT, nullable=False, description="Day of the month."),
        Column("month", ColumnType.INT, nullable=False, description="Month, 1-12."),
        Column("year", ColumnType.INT, nullable=False, description="Year."),
        _s("weekday", 10, "Name of the weekday (Monday ...).", nullable=False),
    ),
    key=("date_key",),
    role=TableRole.CALENDAR,
    mode=CaptureMode.SNAPSHOT,
    cdc_column=None,
    silver=SilverSpec(
        clean=(("weekday", (Clean.TRIM, Clean.INITCAP)),),
        rules=(Rule("date_key_not_null", "date_key IS NOT NULL", critical=True), VALUES_TYPED),
    ),
    gold=Calendar(expectations=(Rule("date_key_present", "date_key IS NOT NULL"),)),
)

FACT_STREAM = Table(
    name="FactStream",
    lake_name="fact_stream",
    description="One row per stream (a play of a track by a user).",
    columns=(
        Column("stream_id", ColumnType.BIGINT, nullable=False, description="The stream's id."),
        Column("user_id", ColumnType.INT, description="Who listened."),
        Column("track_id", ColumnType.INT, description="What was played."),
        Column("date_key", ColumnType.INT, description="The stream's day as yyyymmdd."),
        Column("listen_duration", ColumnType.INT, description="Seconds listened."),
        _s("device_type", 50, f"The device played on: {', '.join(DEVICES)}."),
        Column(
            "stream_timestamp",
            ColumnType.TIMESTAMP,
            nullable=False,
            description="When the stream started: its business time and partition time.",
        ),
    ),
    key=("stream_id",),
    role=TableRole.FACT,
    mode=CaptureMode.WATERMARK,
    cdc_column="stream_timestamp",
    silver=SilverSpec(
        clean=(("device_type", (Clean.TRIM, Clean.LOWER)),),
        rules=(
            Rule("stream_id_not_null", "stream_id IS NOT NULL", critical=True),
            VALUES_TYPED,
            Rule("stream_id_unique", f"{KEY_RANK} = 1"),
            Rule("user_id_not_null", "user_id IS NOT NULL"),
            Rule("track_id_not_null", "track_id IS NOT NULL"),
            Rule("listen_duration_in_range", "listen_duration BETWEEN 0 AND 86400"),
            Rule("device_type_known", in_list("device_type", DEVICES)),
        ),
    ),
    gold=PointInTimeFact(
        time_column="stream_timestamp",
        date_column="stream_date",
        lookups=(
            Lookup("DimUser", on="user_id", columns=("subscription_type", "country")),
            Lookup("DimTrack", on="track_id", columns=("artist_id",)),
        ),
        references=(Reference("DimDate", on="date_key"),),
        expectations=(
            Rule("user_id_present", "user_id IS NOT NULL"),
            Rule("track_id_present", "track_id IS NOT NULL"),
            Rule("listen_duration_non_negative", "listen_duration >= 0"),
        ),
    ),
)


_STREAMS = Measure("streams", "count(*)", "Streams.")
_LISTENING_SECONDS = Measure(
    "listening_seconds", "sum(CAST(listen_duration AS BIGINT))", "Seconds listened, summed."
)
_LISTENERS = Measure("listeners", "count(DISTINCT user_id)", "Distinct listeners.")
_AT_LEAST_ONE_STREAM = (
    Rule("streams_positive", "streams > 0", guaranteed_by="`streams` counts a group's rows"),
)

DAILY_AGGREGATES = (
    Aggregate(
        "agg_daily_track",
        "Streams, distinct listeners and listening seconds per track and day.",
        group_by=("stream_date", "track_id"),
        measures=(_STREAMS, _LISTENERS, _LISTENING_SECONDS),
        expectations=_AT_LEAST_ONE_STREAM,
    ),
    Aggregate(
        "agg_daily_artist",
        "Streams, distinct listeners and listening seconds per artist (at stream time) and day.",
        group_by=("stream_date", "artist_id"),
        measures=(_STREAMS, _LISTENERS, _LISTENING_SECONDS),
        expectations=_AT_LEAST_ONE_STREAM,
    ),
    Aggregate(
        "agg_daily_country_device",
        "Streams, distinct listeners and listening seconds per listener country and "
        "subscription (at stream time), device and day.",
        group_by=("stream_date", "country", "device_type", "subscription_type"),
        measures=(_STREAMS, _LISTENERS, _LISTENING_SECONDS),
        expectations=_AT_LEAST_ONE_STREAM,
    ),
    Aggregate(
        "agg_daily_user",
        "Streams, distinct tracks and listening seconds per listener and day.",
        group_by=("stream_date", "user_id"),
        measures=(
            _STREAMS,
            Measure("tracks", "count(DISTINCT track_id)", "Distinct tracks."),
            _LISTENING_SECONDS,
        ),
        expectations=_AT_LEAST_ONE_STREAM,
    ),
)


@dataclass(frozen=True)
class Catalog:
    tables: tuple[Table, ...]
    aggregates: tuple[Aggregate, ...] = ()

    def __post_init__(self) -> None:
        names = [t.name for t in self.tables] + [t.lake_name for t in self.tables]
        names += [a.name for a in self.aggregates]
        if len({n.lower() for n in names}) != len(names):
            raise CatalogError("table names must be unique (case-insensitively)")
        for a in self.aggregates:
            validate_identifier(a.name)
        for t in self.tables:
            if isinstance(t.gold, PointInTimeFact):
                for lookup in t.gold.lookups:
                    if not isinstance(self[lookup.dimension].gold, Scd2Dimension):
                        raise CatalogError(f"{t.name}: {lookup.dimension} is not an SCD2 dimension")

    def __iter__(self):
        return iter(self.tables)

    def __getitem__(self, name: str) -> Table:
        for t in self.tables:
            if name in (t.name, t.lake_name):
                return t
        known = ", ".join(t.name for t in self.tables)
        raise CatalogError(f"unknown table {name!r}; the catalog has {known}")

    def by_role(self, role: TableRole) -> tuple[Table, ...]:
        return tuple(t for t in self.tables if t.role is role)

    def with_modes(self, modes: dict[str, CaptureMode | str]) -> Catalog:
        """The catalog with the capture mode of some tables overridden (e.g. a dim by watermark);
        a table is named as in the source or in the lake."""
        by_table = {self[name].name: CaptureMode(mode) for name, mode in modes.items()}
        return replace(
            self,
            tables=tuple(
                replace(t, mode=by_table[t.name]) if t.name in by_table else t for t in self.tables
            ),
        )

    def with_partition_start(self, start: date) -> Catalog:
        """The catalog with every table's partitions starting on `start`."""
        return replace(self, tables=tuple(replace(t, partition_start=start) for t in self.tables))

    def gold_tables(self, table: Table) -> tuple[str, ...]:
        """The gold tables built from one source table (the fact brings the aggregates)."""
        if table.gold is None:
            return ()
        if isinstance(table.gold, PointInTimeFact):
            return (table.lake_name, *(a.name for a in self.aggregates))
        return (table.lake_name,)

    @property
    def fact(self) -> Table:
        """The table gold's point-in-time fact and the aggregates are built from."""
        (fact,) = (t for t in self.tables if isinstance(t.gold, PointInTimeFact))
        return fact

    def fact_inputs(self) -> tuple[Table, ...]:
        """The tables gold's fact is built from: the fact and the dimensions it looks up or
        references."""
        spec = self.fact.gold
        assert isinstance(spec, PointInTimeFact)
        read = {x.dimension for x in (*spec.lookups, *spec.references)}
        return tuple(t for t in self.tables if t is self.fact or t.name in read)


CATALOG = Catalog((DIM_USER, DIM_ARTIST, DIM_TRACK, DIM_DATE, FACT_STREAM), DAILY_AGGREGATES)


def configured_catalog(capture_modes: str, partition_start: date | None) -> Catalog:
    """The catalog as the settings shape it: capture-mode overrides and the partition start."""
    catalog = CATALOG.with_modes(parse_mode_overrides(capture_modes))
    return catalog if partition_start is None else catalog.with_partition_start(partition_start)


def parse_mode_overrides(spec: str) -> dict[str, CaptureMode]:
    """Parse `DimUser=watermark,DimTrack=cdc` (the SPOTIFY_CAPTURE_MODES setting)."""
    modes: dict[str, CaptureMode] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, mode = item.partition("=")
        if not sep:
            raise CatalogError(f"capture-mode override {item!r} is not of the form Table=mode")
        try:
            modes[name.strip()] = CaptureMode(mode.strip().lower())
        except ValueError:
            allowed = ", ".join(m.value for m in CaptureMode)
            raise CatalogError(f"unknown capture mode {mode!r} for {name}; use {allowed}") from None
    return modes
