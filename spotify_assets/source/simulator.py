"""Simulated change of the source system: the days after the initial data.

Pure functions like the generator: the simulator reads a SourceState (built from the initial data
or by the DB layer reading the database), yields ChangeBatches for the DB layer to apply, and keeps
the state an exact mirror of what the database holds after each batch, dirty values included.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spotify_assets.catalog.reference import (
    COUNTRY_CODES,
    COUNTRY_NAMES,
    COUNTRY_WEIGHTS,
    DEVICE_WEIGHTS,
    DEVICES,
    GENRE_WEIGHTS,
    GENRES,
    SUBSCRIPTION_WEIGHTS,
    SUBSCRIPTIONS,
)
from spotify_assets.catalog.tables import CATALOG
from spotify_assets.source.generator import (
    ARTIST_OUTPUT_EXPONENT,
    ARTIST_SALT,
    BASE_SHAPE,
    MIN_TRACK_SECONDS,
    SECONDS_PER_DAY,
    TRACK_SALT,
    TRACK_ZIPF_EXPONENT,
    USER_ACTIVITY_EXPONENT,
    USER_SALT,
    InitialData,
    album_names,
    artist_names,
    date_array,
    day_number,
    dim_date_table,
    diurnal_mass,
    diurnal_seconds,
    epoch_seconds,
    int32_array,
    listen_durations,
    person_names,
    pick_weighted,
    rank_weights,
    rng_for,
    stream_table,
    timestamp_array,
    track_durations,
    track_names,
    uniform_seconds,
    weighted_choice,
)

DIM_TABLES: tuple[str, ...] = ("DimUser", "DimArtist", "DimTrack")
DIRTY_KINDS: tuple[str, ...] = (
    "padding",  # leading/trailing spaces: "  Premium "
    "wrong_case",  # "premium", "FREE", "us", "MOBILE"
    "country_name",  # a country's name instead of its ISO code: "United States", "germany"
    "null_foreign_key",  # FactStream.user_id/track_id or DimTrack.artist_id NULL
    "bad_duration",  # listen_duration < 0 or > 86400; duration_sec <= 0
)
# Which columns of which table each dirty kind can hit; keys and change times never.
DIRTY_TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    "DimUser": {
        "padding": ("user_name", "country", "subscription_type"),
        "wrong_case": ("country", "subscription_type"),
        "country_name": ("country",),
    },
    "DimArtist": {
        "padding": ("artist_name", "genre", "country"),
        "wrong_case": ("genre", "country"),
        "country_name": ("country",),
    },
    "DimTrack": {
        "padding": ("track_name", "album_name"),
        "null_foreign_key": ("artist_id",),
        "bad_duration": ("duration_sec",),
    },
    "FactStream": {
        "padding": ("device_type",),
        "wrong_case": ("device_type",),
        "null_foreign_key": ("user_id", "track_id"),
        "bad_duration": ("listen_duration",),
    },
}
MAX_LISTEN_SECONDS = 86_400
STREAMS_PER_USER_DAY = BASE_SHAPE.streams / BASE_SHAPE.history_days / BASE_SHAPE.users
_FALLBACK_TRACK_SECONDS = 210  # stands in for a dirty duration_sec when streaming that track
_MAX_SLICES_PER_DAY = 1_440
_DAY = timedelta(days=1)

# Plan changes: row = current plan (Free, Premium, Family), column = probability of the new plan.
_PLAN_TRANSITIONS = np.array([[0.0, 0.8, 0.2], [0.5, 0.0, 0.5], [0.3, 0.7, 0.0]])


@dataclass(frozen=True)
class SimulationRates:
    """Change per simulated day, as fractions of the live population unless said otherwise."""

    new_users: float = 0.003
    new_artists: float = 0.002
    new_tracks: float = 0.003
    user_updates: float = 0.01  # plan upgrades/downgrades, country moves, end_date set/cleared
    artist_updates: float = 0.003  # renames, genre changes
    track_updates: float = 0.003  # renames, album renames
    user_deletes: float = 0.0005
    artist_deletes: float = 0.0001
    track_deletes: float = 0.0003
    streams_per_day: float | None = None  # None: the initial data's rate per live user
    late_fraction: float = 0.03  # share of new streams stamped 1..late_max_days days back
    late_max_days: int = 5
    # Share of new streams whose user and track the source gets only later: the keys the next
    # new user and track take (an app that writes the stream before the account or catalogue).
    early_fraction: float = 0.0
    dirty_fraction: float = 0.01  # share of inserted/updated rows given one dirty value

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "late_max_days":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"late_max_days must be an integer >= 1, got {value!r}")
            elif f.name == "streams_per_day":
                if value is not None and not (_is_number(value) and value >= 0):
                    raise ValueError(f"streams_per_day must be None or >= 0, got {value!r}")
            elif not (_is_number(value) and 0 <= value <= 1):
                raise ValueError(f"{f.name} must be a fraction in [0, 1], got {value!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class SourceState:
    """What the simulator knows about the source; `simulate` keeps it in step with the batches."""

    clock: datetime  # simulated now (naive UTC)
    dims: dict[str, pa.Table]  # current rows of DimUser, DimArtist, DimTrack (catalog schema)
    next_ids: dict[str, int]  # next key per table incl. "FactStream"; deleted keys never reused
    date_keys_until: date  # DimDate covers days up to this date inclusive
    date_keys_from: date | None = None  # first DimDate day: no late stream falls before it


@dataclass(frozen=True)
class ChangeBatch:
    """One slice of simulated time; apply inserts, then updates, then deletes, as of `at`."""

    at: datetime
    inserts: dict[str, pa.Table]  # only tables with new rows; may include DimDate, FactStream
    updates: dict[str, pa.Table]  # full new row images of existing keys
    deletes: dict[str, pa.Array]  # int32 keys of rows to hard-delete

    def row_count(self) -> int:
        return (
            sum(t.num_rows for t in self.inserts.values())
            + sum(t.num_rows for t in self.updates.values())
            + sum(len(keys) for keys in self.deletes.values())
        )


def state_from_initial(data: InitialData) -> SourceState:
    return SourceState(
        clock=datetime(data.end.year, data.end.month, data.end.day),
        dims={name: data.dims[name] for name in DIM_TABLES},
        next_ids={
            **{name: _max_key(data.dims[name], name) + 1 for name in DIM_TABLES},
            "FactStream": data.shape.streams + 1,
        },
        date_keys_until=data.end,
        date_keys_from=data.start,
    )


def simulate(
    state: SourceState,
    days: int,
    seed: int,
    rates: SimulationRates = SimulationRates(),
    slices_per_day: int = 4,
) -> Iterator[ChangeBatch]:
    """Advance `state` by `days` days, yielding `slices_per_day` batches per day.

    `state` is mutated as batches are yielded, so a later call continues where this one stopped.
    The randomness of a day depends only on (seed, that day), not on earlier calls.
    """
    if isinstance(days, bool) or not isinstance(days, int) or days < 0:
        raise ValueError(f"days must be an integer >= 0, got {days!r}")
    if not 1 <= slices_per_day <= _MAX_SLICES_PER_DAY:
        raise ValueError(
            f"slices_per_day must be in 1..{_MAX_SLICES_PER_DAY}, got {slices_per_day!r}"
        )
    _normalize(state)
    return _run(state, days, seed, rates, slices_per_day)


def _run(
    state: SourceState, days: int, seed: int, rates: SimulationRates, slices_per_day: int
) -> Iterator[ChangeBatch]:
    for _ in range(days):
        day_start = state.clock
        rng = rng_for(seed, day_start.date().toordinal())
        for index in range(1, slices_per_day + 1):
            at = day_start + _DAY * index / slices_per_day
            batch = _slice(state, rng, rates, at)
            _apply(state, batch)
            yield batch


def _normalize(state: SourceState) -> None:
    """Catalog schemas, rows sorted by key (so new keys append in order), sane next ids."""
    for name in DIM_TABLES:
        if name not in state.dims:
            raise ValueError(f"state.dims lacks {name}")
        schema = CATALOG[name].arrow_schema
        table = state.dims[name].select(schema.names).cast(schema)
        state.dims[name] = table.sort_by(_key(name)).combine_chunks()
    for name in (*DIM_TABLES, "FactStream"):
        if name not in state.next_ids:
            raise ValueError(f"state.next_ids lacks {name}")
    for name in DIM_TABLES:
        if state.dims[name].num_rows and state.next_ids[name] <= _max_key(state.dims[name], name):
            raise ValueError(
                f"state.next_ids[{name!r}] = {state.next_ids[name]} would reuse an existing key"
            )


def _key(name: str) -> str:
    return CATALOG[name].key[0]


def _keys(table: pa.Table, name: str) -> np.ndarray:
    return table.column(_key(name)).to_numpy()


def _max_key(table: pa.Table, name: str) -> int:
    return int(pc.max(table.column(_key(name))).as_py() or 0)


# --- one slice ---------------------------------------------------------------------------------


def _slice(
    state: SourceState, rng: np.random.Generator, rates: SimulationRates, at: datetime
) -> ChangeBatch:
    window = (epoch_seconds(state.clock), epoch_seconds(at))
    day_share = (at - state.clock) / _DAY
    inserts: dict[str, pa.Table] = {}
    updates: dict[str, pa.Table] = {}
    deletes: dict[str, pa.Array] = {}
    if at.date() > state.date_keys_until:
        inserts["DimDate"] = dim_date_table(state.date_keys_until + _DAY, at.date())

    survivors: dict[str, np.ndarray] = {}  # keys live before and after this slice
    for name in DIM_TABLES:
        table = state.dims[name]
        update_rows, delete_rows = _pick_targets(rng, table.num_rows, rates, name, day_share)
        if len(update_rows):
            changed = _UPDATERS[name](rng, table.take(update_rows), window)
            updates[name] = _add_dirt(rng, changed, name, rates.dirty_fraction)
        if len(delete_rows):
            deletes[name] = int32_array(_keys(table, name)[delete_rows])
        keep = np.ones(table.num_rows, dtype=bool)
        keep[delete_rows] = False
        survivors[name] = _keys(table, name)[keep]

    for name in DIM_TABLES:
        count = rng.poisson(_rate(rates, "new", name) * state.dims[name].num_rows * day_share)
        if name == "DimTrack" and not len(survivors["DimArtist"]):
            count = 0  # a new track needs a live artist
        if count:
            first = state.next_ids[name]
            ids = np.arange(first, first + count, dtype=np.int64)
            new = _new_rows(rng, name, ids, window, survivors["DimArtist"])
            inserts[name] = _add_dirt(rng, new, name, rates.dirty_fraction)

    upcoming = {  # the keys the next new rows take, after this slice's
        name: state.next_ids[name] + (inserts[name].num_rows if name in inserts else 0)
        for name in ("DimUser", "DimTrack")
    }
    streams = _new_streams(state, rng, rates, window, survivors, upcoming)
    if streams.num_rows:
        inserts["FactStream"] = _add_dirt(rng, streams, "FactStream", rates.dirty_fraction)
    return ChangeBatch(at=at, inserts=inserts, updates=updates, deletes=deletes)


def _rate(rates: SimulationRates, change: str, name: str) -> float:
    noun = {"DimUser": "user", "DimArtist": "artist", "DimTrack": "track"}[name]
    attribute = f"{change}_{noun}s" if change == "new" else f"{noun}_{change}"
    return getattr(rates, attribute)


def _pick_targets(
    rng: np.random.Generator, live: int, rates: SimulationRates, name: str, day_share: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted row positions to update and to delete: distinct, so no key gets both."""
    n_updates = rng.poisson(_rate(rates, "updates", name) * live * day_share)
    n_deletes = rng.poisson(_rate(rates, "deletes", name) * live * day_share)
    n_updates = min(n_updates, live)
    n_deletes = min(n_deletes, live - n_updates)
    rows = rng.choice(live, size=n_updates + n_deletes, replace=False)
    return np.sort(rows[:n_updates]), np.sort(rows[n_updates:])


def _new_rows(
    rng: np.random.Generator,
    name: str,
    ids: np.ndarray,
    window: tuple[int, int],
    artists: np.ndarray,
) -> pa.Table:
    n = len(ids)
    changed = uniform_seconds(rng, np.full(n, window[0]), window[1])
    if name == "DimUser":
        columns = [
            int32_array(ids),
            person_names(rng, n),
            pick_weighted(rng, COUNTRY_CODES, COUNTRY_WEIGHTS, n),
            pick_weighted(rng, SUBSCRIPTIONS, SUBSCRIPTION_WEIGHTS, n),
            date_array(changed // SECONDS_PER_DAY),
            pa.nulls(n, pa.date32()),
            timestamp_array(changed),
        ]
    elif name == "DimArtist":
        columns = [
            int32_array(ids),
            artist_names(rng, n),
            pick_weighted(rng, GENRES, GENRE_WEIGHTS, n),
            pick_weighted(rng, COUNTRY_CODES, COUNTRY_WEIGHTS, n),
            timestamp_array(changed),
        ]
    else:
        artist_weights = rank_weights(artists, ARTIST_SALT, ARTIST_OUTPUT_EXPONENT)
        # Mostly fresh releases; some back-catalogue tracks added late.
        age = np.where(rng.random(n) < 0.7, 0, rng.integers(1, 3650, n))
        columns = [
            int32_array(ids),
            track_names(rng, n),
            int32_array(artists[weighted_choice(rng, n, artist_weights)]),
            album_names(rng, n),
            pa.array(track_durations(rng, n)),
            date_array(changed // SECONDS_PER_DAY - age),
            timestamp_array(changed),
        ]
    return pa.Table.from_arrays(columns, schema=CATALOG[name].arrow_schema)


def _new_streams(
    state: SourceState,
    rng: np.random.Generator,
    rates: SimulationRates,
    window: tuple[int, int],
    survivors: dict[str, np.ndarray],
    upcoming: dict[str, int],
) -> pa.Table:
    """Streams of users and tracks live throughout the slice; a few arrive days late, and a few
    come before their user and track exist (`early_fraction`: the `upcoming` keys)."""
    users, tracks = survivors["DimUser"], survivors["DimTrack"]
    per_day = rates.streams_per_day
    if per_day is None:
        per_day = STREAMS_PER_USER_DAY * state.dims["DimUser"].num_rows
    n = rng.poisson(per_day * diurnal_mass(*window)) if len(users) and len(tracks) else 0
    arrival = np.sort(diurnal_seconds(rng, n, *window))
    backdate = rng.integers(1, rates.late_max_days + 1, n) * SECONDS_PER_DAY
    late = rng.random(n) < rates.late_fraction
    if state.date_keys_from is not None:
        late &= arrival - backdate >= day_number(state.date_keys_from) * SECONDS_PER_DAY
    track_ids = tracks[
        weighted_choice(rng, n, rank_weights(tracks, TRACK_SALT, TRACK_ZIPF_EXPONENT))
    ]
    first = state.next_ids["FactStream"]
    user_ids = users[
        weighted_choice(rng, n, rank_weights(users, USER_SALT, USER_ACTIVITY_EXPONENT))
    ]
    listen = listen_durations(rng, _playable_seconds(state.dims["DimTrack"], track_ids))
    if rates.early_fraction:  # drawn only then: other rates keep their streams for a seed
        early = rng.random(n) < rates.early_fraction
        user_ids = np.where(early, upcoming["DimUser"], user_ids)
        track_ids = np.where(early, upcoming["DimTrack"], track_ids)
    return stream_table(
        stream_ids=np.arange(first, first + n, dtype=np.int64),
        user_ids=user_ids,
        track_ids=track_ids,
        listen=listen,
        devices=pick_weighted(rng, DEVICES, DEVICE_WEIGHTS, n),
        seconds=np.where(late, arrival - backdate, arrival),
    )


def _playable_seconds(tracks: pa.Table, track_ids: np.ndarray) -> np.ndarray:
    """duration_sec of each track, a typical length where the source value is dirty."""
    rows = np.searchsorted(_keys(tracks, "DimTrack"), track_ids)
    seconds = tracks.column("duration_sec").to_numpy(zero_copy_only=False)[rows]
    valid = ~np.isnan(seconds.astype(np.float64)) & (seconds >= MIN_TRACK_SECONDS)
    return np.where(valid, seconds, _FALLBACK_TRACK_SECONDS).astype(np.int64)


# --- updates -----------------------------------------------------------------------------------


def _change_times(rng: np.random.Generator, rows: pa.Table, window: tuple[int, int]) -> pa.Array:
    """New updated_at in the slice, strictly after each row's previous one."""
    previous = rows.column("updated_at").to_numpy().astype("datetime64[s]").astype(np.int64)
    changed = uniform_seconds(rng, np.full(rows.num_rows, window[0]), window[1])
    return timestamp_array(np.maximum(changed, previous + 1))


def _replace(rows: pa.Table, column: str, chosen: np.ndarray, values: pa.Array) -> pa.Table:
    index = rows.schema.get_field_index(column)
    merged = pc.if_else(pa.array(chosen), values, rows.column(column).combine_chunks())
    return rows.set_column(index, rows.schema.field(index), merged)


def _update_users(rng: np.random.Generator, rows: pa.Table, window: tuple[int, int]) -> pa.Table:
    """Plan upgrades/downgrades, country moves, churn (end_date set) and returns (cleared)."""
    n = rows.num_rows
    kind = weighted_choice(rng, n, np.array([0.6, 0.15, 0.25]))
    plan = pc.index_in(
        pc.utf8_lower(pc.utf8_trim_whitespace(rows.column("subscription_type"))),
        value_set=pa.array([s.lower() for s in SUBSCRIPTIONS]),
    )
    current = pc.fill_null(plan, 0).to_numpy()
    cumulative = np.cumsum(_PLAN_TRANSITIONS, axis=1)[current]
    new_plan = (rng.random(n)[:, None] >= cumulative).sum(axis=1)
    updated_at = _change_times(rng, rows, window)
    churn_day = date_array(updated_at.to_numpy().astype("datetime64[D]").astype(np.int64))
    end_date = pc.if_else(pc.is_null(rows.column("end_date")), churn_day, pa.nulls(n, pa.date32()))
    rows = _replace(rows, "subscription_type", kind == 0, pa.array(SUBSCRIPTIONS).take(new_plan))
    rows = _replace(
        rows, "country", kind == 1, pick_weighted(rng, COUNTRY_CODES, COUNTRY_WEIGHTS, n)
    )
    rows = _replace(rows, "end_date", kind == 2, end_date)
    return _replace(rows, "updated_at", np.ones(n, dtype=bool), updated_at)


def _update_artists(rng: np.random.Generator, rows: pa.Table, window: tuple[int, int]) -> pa.Table:
    n = rows.num_rows
    renamed = rng.random(n) < 0.4
    rows = _replace(rows, "artist_name", renamed, artist_names(rng, n))
    rows = _replace(rows, "genre", ~renamed, pick_weighted(rng, GENRES, GENRE_WEIGHTS, n))
    return _replace(rows, "updated_at", np.ones(n, dtype=bool), _change_times(rng, rows, window))


def _update_tracks(rng: np.random.Generator, rows: pa.Table, window: tuple[int, int]) -> pa.Table:
    n = rows.num_rows
    renamed = rng.random(n) < 0.6
    rows = _replace(rows, "track_name", renamed, track_names(rng, n))
    rows = _replace(rows, "album_name", ~renamed, album_names(rng, n))
    return _replace(rows, "updated_at", np.ones(n, dtype=bool), _change_times(rng, rows, window))


_UPDATERS: dict[str, Callable[[np.random.Generator, pa.Table, tuple[int, int]], pa.Table]] = {
    "DimUser": _update_users,
    "DimArtist": _update_artists,
    "DimTrack": _update_tracks,
}


# --- dirty values ------------------------------------------------------------------------------


def _add_dirt(rng: np.random.Generator, table: pa.Table, name: str, fraction: float) -> pa.Table:
    """Give `fraction` of the rows one dirty value: a kind of the table, then one of its columns."""
    rows = np.flatnonzero(rng.random(table.num_rows) < fraction)
    targets = DIRTY_TARGETS[name]
    kinds = rng.integers(0, len(targets), len(rows))
    column_draw = rng.random(len(rows))
    for kind_index, (kind, columns) in enumerate(targets.items()):
        column_index = np.floor(column_draw * len(columns)).astype(np.int64)
        for position, column in enumerate(columns):
            hit = rows[(kinds == kind_index) & (column_index == position)]
            if len(hit):
                table = _dirty_column(rng, table, column, hit, kind)
    return table


def _dirty_column(
    rng: np.random.Generator, table: pa.Table, column: str, rows: np.ndarray, kind: str
) -> pa.Table:
    index = table.schema.get_field_index(column)
    values = table.column(column).combine_chunks()
    dirty = _DIRT[kind](rng, values.take(rows), column)
    mask = np.zeros(table.num_rows, dtype=bool)
    mask[rows] = True
    replaced = pc.replace_with_mask(values, pa.array(mask), dirty.cast(values.type))
    return table.set_column(index, table.schema.field(index), replaced)


def _padded(rng: np.random.Generator, values: pa.Array, column: str) -> pa.Array:
    spaces = pa.array(["", " ", "  "])
    left = rng.integers(0, 3, len(values))
    right = np.where(left == 0, rng.integers(1, 3, len(values)), rng.integers(0, 3, len(values)))
    return pc.binary_join_element_wise(spaces.take(left), values, spaces.take(right), "")


def _wrong_case(rng: np.random.Generator, values: pa.Array, column: str) -> pa.Array:
    swapped = pc.utf8_swapcase(values)
    variant = pc.choose(
        pa.array(rng.integers(0, 3, len(values)).astype(np.int8)),
        pc.utf8_lower(values),
        pc.utf8_upper(values),
        swapped,
    )
    # Swapping the case of a value with letters always changes it.
    return pc.if_else(pc.equal(variant, values), swapped, variant)


def _country_name(rng: np.random.Generator, values: pa.Array, column: str) -> pa.Array:
    position = pc.index_in(values, value_set=pa.array(COUNTRY_CODES))
    name = pa.array([COUNTRY_NAMES[code] for code in COUNTRY_CODES]).take(position)
    variant = pc.choose(
        pa.array(rng.integers(0, 3, len(values)).astype(np.int8)),
        name,
        pc.utf8_lower(name),
        pc.utf8_upper(name),
    )
    return pc.coalesce(variant, values)  # an already dirty country stays as it is


def _null(rng: np.random.Generator, values: pa.Array, column: str) -> pa.Array:
    return pa.nulls(len(values), values.type)


def _bad_duration(rng: np.random.Generator, values: pa.Array, column: str) -> pa.Array:
    n = len(values)
    if column == "duration_sec":
        return pa.array(-rng.integers(0, 600, n), type=pa.int32())
    too_long = rng.integers(MAX_LISTEN_SECONDS + 1, 10 * MAX_LISTEN_SECONDS, n)
    negative = -rng.integers(1, 3_600, n)
    return pa.array(np.where(rng.random(n) < 0.5, negative, too_long), type=pa.int32())


_DIRT: dict[str, Callable[[np.random.Generator, pa.Array, str], pa.Array]] = {
    "padding": _padded,
    "wrong_case": _wrong_case,
    "country_name": _country_name,
    "null_foreign_key": _null,
    "bad_duration": _bad_duration,
}


# --- applying a batch to the mirror ------------------------------------------------------------


def _apply(state: SourceState, batch: ChangeBatch) -> None:
    """Do to `state` what the DB layer does to the database."""
    for name in DIM_TABLES:
        if name in batch.inserts or name in batch.updates or name in batch.deletes:
            state.dims[name] = _applied(state.dims[name], name, batch)
        if name in batch.inserts:
            state.next_ids[name] = _max_key(batch.inserts[name], name) + 1
    if "FactStream" in batch.inserts:
        stream_ids = batch.inserts["FactStream"].column("stream_id")
        state.next_ids["FactStream"] = int(pc.max(stream_ids).as_py()) + 1
    if "DimDate" in batch.inserts:
        state.date_keys_until = max(batch.inserts["DimDate"].column("date").to_pylist())
    state.clock = batch.at


def _applied(table: pa.Table, name: str, batch: ChangeBatch) -> pa.Table:
    """`table` after the batch, as one `take` from [table, update images, inserts].

    Rows stay sorted by key: inserted keys are larger than every existing one.
    """
    keys = _keys(table, name)
    parts = [table]
    source_row = np.arange(len(keys))
    if name in batch.updates:
        images = batch.updates[name]
        source_row[np.searchsorted(keys, _keys(images, name))] = len(keys) + np.arange(len(images))
        parts.append(images)
    keep = np.ones(len(keys), dtype=bool)
    if name in batch.deletes:
        keep[np.searchsorted(keys, batch.deletes[name].to_numpy())] = False
    source_row = source_row[keep]
    if name in batch.inserts:
        offset = sum(part.num_rows for part in parts)
        parts.append(batch.inserts[name])
        source_row = np.concatenate([source_row, offset + np.arange(batch.inserts[name].num_rows)])
    return pa.concat_tables(parts).take(source_row).combine_chunks()
