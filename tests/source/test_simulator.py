"""The change simulator: collision-free keys, an exact mirror, late streams and dirty values."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from spotify_assets.catalog.reference import (
    COUNTRY_CODES,
    COUNTRY_NAMES,
    DEVICES,
    GENRES,
    SUBSCRIPTIONS,
)
from spotify_assets.catalog.tables import CATALOG
from spotify_assets.source.generator import (
    InitialData,
    generate,
)
from spotify_assets.source.simulator import (
    DIRTY_KINDS,
    ChangeBatch,
    SimulationRates,
    SourceState,
    simulate,
    state_from_initial,
)

SCALE = 0.01
SEED = 5
END = date(2026, 4, 1)
DAYS = 30
DIMS = ("DimUser", "DimArtist", "DimTrack")
SLICE = timedelta(hours=6)  # the default 4 slices per day
LATE_MAX_DAYS = SimulationRates().late_max_days

Rows = dict[str, dict[int, dict]]  # table -> key -> row


@dataclass(frozen=True)
class History:
    initial: SourceState
    batches: list[ChangeBatch]
    final: SourceState


def key_of(name: str) -> str:
    return CATALOG[name].key[0]


def rows_by_key(name: str, table: pa.Table) -> dict[int, dict]:
    return {row[key_of(name)]: row for row in table.to_pylist()}


def fresh_state(data: InitialData) -> SourceState:
    return state_from_initial(data)


def run(state: SourceState, days: int, seed: int = SEED, **rates: object) -> list[ChangeBatch]:
    return list(simulate(state, days, seed, SimulationRates(**rates)))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def data() -> InitialData:
    return generate(SCALE, 3, END)


@pytest.fixture(scope="module")
def history(data: InitialData) -> History:
    initial = fresh_state(data)
    final = fresh_state(data)
    # 200 artists at the default delete rate would see under one delete in 30 days.
    batches = run(final, DAYS, artist_deletes=0.003)
    return History(initial=initial, batches=batches, final=final)


@pytest.fixture(scope="module")
def dirty_history(data: InitialData) -> list[ChangeBatch]:
    return run(fresh_state(data), 15, dirty_fraction=0.2)


def streams_of(batches: list[ChangeBatch]) -> pa.Table:
    tables = [b.inserts["FactStream"] for b in batches if "FactStream" in b.inserts]
    return pa.concat_tables(tables).combine_chunks()


# --- keys and the mirror -----------------------------------------------------------------------


def test_keys_never_collide_and_changes_target_live_rows(history: History) -> None:
    live = {name: set(rows_by_key(name, history.initial.dims[name])) for name in DIMS}
    ever = {name: set(keys) for name, keys in live.items()}
    next_stream = history.initial.next_ids["FactStream"]
    for batch in history.batches:
        for name in DIMS:
            inserted = batch.inserts.get(name, pa.table({key_of(name): []})).column(key_of(name))
            updated = batch.updates.get(name, pa.table({key_of(name): []})).column(key_of(name))
            deleted = batch.deletes.get(name, pa.array([], pa.int32())).to_pylist()
            inserted, updated = inserted.to_pylist(), updated.to_pylist()
            assert len(set(inserted)) == len(inserted) and not ever[name] & set(inserted)
            assert len(set(updated)) == len(updated) and set(updated) <= live[name]
            assert len(set(deleted)) == len(deleted) and set(deleted) <= live[name]
            assert not set(updated) & set(deleted), "a key is updated and deleted at once"
            ever[name] |= set(inserted)
            live[name] = (live[name] | set(inserted)) - set(deleted)
        if "FactStream" in batch.inserts:
            ids = batch.inserts["FactStream"].column("stream_id").to_numpy()
            np.testing.assert_array_equal(ids, np.arange(next_stream, next_stream + len(ids)))
            next_stream += len(ids)
    for name in DIMS:
        assert history.final.next_ids[name] == max(ever[name]) + 1
        assert set(rows_by_key(name, history.final.dims[name])) == live[name]
    assert history.final.next_ids["FactStream"] == next_stream


def test_simulation_changes_every_dimension(history: History) -> None:
    for name in DIMS:
        for changes in ("inserts", "updates", "deletes"):
            assert any(name in getattr(b, changes) for b in history.batches), (name, changes)


def test_state_mirrors_the_applied_batches(history: History) -> None:
    mirror: Rows = {name: rows_by_key(name, history.initial.dims[name]) for name in DIMS}
    for batch in history.batches:  # in the DB layer's order: inserts, updates, deletes
        for name in DIMS:
            for row in batch.inserts[name].to_pylist() if name in batch.inserts else []:
                assert row[key_of(name)] not in mirror[name]
                mirror[name][row[key_of(name)]] = row
            for row in batch.updates[name].to_pylist() if name in batch.updates else []:
                mirror[name][row[key_of(name)]] = row
            for key in batch.deletes[name].to_pylist() if name in batch.deletes else []:
                del mirror[name][key]
    for name in DIMS:
        final = history.final.dims[name]
        assert final.schema == CATALOG[name].arrow_schema
        assert rows_by_key(name, final) == mirror[name], name
    start = history.initial.clock
    assert history.final.clock == start + timedelta(days=DAYS)
    assert history.final.date_keys_until == END + timedelta(days=DAYS)


def test_batches_are_slices_of_the_day_with_catalog_schemas(history: History) -> None:
    start = history.initial.clock
    assert [b.at for b in history.batches] == [start + SLICE * i for i in range(1, 4 * DAYS + 1)]
    for batch in history.batches:
        for name, table in [*batch.inserts.items(), *batch.updates.items()]:
            assert table.schema == CATALOG[name].arrow_schema, name
            assert table.num_rows > 0
        assert all(keys.type == pa.int32() for keys in batch.deletes.values())
        assert batch.row_count() == (
            sum(t.num_rows for t in batch.inserts.values())
            + sum(t.num_rows for t in batch.updates.values())
            + sum(len(k) for k in batch.deletes.values())
        )


def test_change_times_lie_in_their_slice_and_only_move_forward(history: History) -> None:
    updated_at = {
        name: {k: r["updated_at"] for k, r in rows_by_key(name, history.initial.dims[name]).items()}
        for name in DIMS
    }
    for batch in history.batches:
        low = batch.at - SLICE
        for name in DIMS:
            for changes in (batch.inserts, batch.updates):
                for row in changes[name].to_pylist() if name in changes else []:
                    key = row[key_of(name)]
                    assert low <= row["updated_at"] < batch.at
                    assert row["updated_at"] > updated_at[name].get(key, datetime.min)
                    updated_at[name][key] = row["updated_at"]


def test_updates_are_realistic_changes(history: History) -> None:
    before: Rows = {name: rows_by_key(name, history.initial.dims[name]) for name in DIMS}
    changed: Counter[tuple[str, str]] = Counter()
    plans: Counter[tuple[str, str]] = Counter()
    for batch in history.batches:
        for name in DIMS:
            for row in batch.updates[name].to_pylist() if name in batch.updates else []:
                old = before[name][row[key_of(name)]]
                changed.update((name, c) for c in row if c != "updated_at" and row[c] != old[c])
                if name == "DimUser" and row["subscription_type"] != old["subscription_type"]:
                    plans[(old["subscription_type"], row["subscription_type"])] += 1
                before[name][row[key_of(name)]] = row
            for row in batch.inserts[name].to_pylist() if name in batch.inserts else []:
                before[name][row[key_of(name)]] = row
    for name, column in [
        ("DimUser", "subscription_type"),
        ("DimUser", "country"),
        ("DimUser", "end_date"),
        ("DimArtist", "genre"),
        ("DimTrack", "track_name"),
        ("DimTrack", "album_name"),
    ]:
        assert changed[(name, column)] > 0, (name, column)
    assert plans[("Free", "Premium")] > 0 and plans[("Premium", "Free")] > 0
    assert plans[("Premium", "Family")] > 0


def test_new_calendar_days_arrive_as_the_clock_passes_them(history: History) -> None:
    calendar = [b.inserts["DimDate"] for b in history.batches if "DimDate" in b.inserts]
    rows = pa.concat_tables(calendar).to_pylist()
    assert [r["date"] for r in rows] == [END + timedelta(days=i) for i in range(1, DAYS + 1)]
    for batch in history.batches:
        if "DimDate" in batch.inserts:
            assert batch.inserts["DimDate"].column("date").to_pylist() == [batch.at.date()]
    for row in rows:
        assert row["date_key"] == int(row["date"].strftime("%Y%m%d"))
        assert row["weekday"] == row["date"].strftime("%A")


# --- streams -----------------------------------------------------------------------------------


def test_streams_reference_users_and_tracks_live_throughout_the_slice(history: History) -> None:
    live = {name: set(rows_by_key(name, history.initial.dims[name])) for name in DIMS}
    for batch in history.batches:
        if "FactStream" in batch.inserts:
            streams = batch.inserts["FactStream"]
            for name, column in (("DimUser", "user_id"), ("DimTrack", "track_id")):
                gone = set(batch.deletes[name].to_pylist()) if name in batch.deletes else set()
                referenced = set(pc.drop_null(streams.column(column)).to_pylist())
                assert referenced <= live[name] - gone, column
        for name in DIMS:
            if name in batch.inserts:
                live[name] |= set(batch.inserts[name].column(key_of(name)).to_pylist())
            if name in batch.deletes:
                live[name] -= set(batch.deletes[name].to_pylist())


def test_early_streams_come_before_their_user_and_track(data: InitialData) -> None:
    """A stream of a user and a track the source does not have yet: the keys the next new ones
    take, inserted in a later slice (or still to come)."""
    state = fresh_state(data)
    before = {name: set(rows_by_key(name, state.dims[name])) for name in DIMS}
    batches = run(state, 4, early_fraction=0.05)
    for name, column in (("DimUser", "user_id"), ("DimTrack", "track_id")):
        known, early = set(before[name]), set()
        for batch in batches:
            if name in batch.inserts:
                known |= set(batch.inserts[name].column(key_of(name)).to_pylist())
            streams = batch.inserts.get("FactStream")
            if streams is not None:
                early |= set(pc.drop_null(streams.column(column)).to_pylist()) - known
        assert early, column
        assert early <= (known - before[name]) | {state.next_ids[name]}, column


def test_on_time_and_late_streams(history: History) -> None:
    late_count = total = 0
    for batch in history.batches:
        if "FactStream" not in batch.inserts:
            continue
        stamps = batch.inserts["FactStream"].column("stream_timestamp").to_pylist()
        late = [t for t in stamps if t < batch.at - SLICE]
        assert all(t < batch.at for t in stamps)
        assert all(batch.at - SLICE - timedelta(days=LATE_MAX_DAYS) <= t for t in late)
        assert all(t < batch.at - timedelta(days=1) for t in late), "late means a day or more"
        late_count, total = late_count + len(late), total + len(stamps)
    assert 0.02 < late_count / total < 0.04


def test_date_keys_match_timestamps_and_exist_in_the_calendar(
    history: History, data: InitialData
) -> None:
    streams = streams_of(history.batches)
    stamps = streams.column("stream_timestamp")
    expected = pc.add(
        pc.add(pc.multiply(pc.year(stamps), 10_000), pc.multiply(pc.month(stamps), 100)),
        pc.day(stamps),
    )
    assert pc.all(pc.equal(pc.cast(expected, pa.int32()), streams.column("date_key"))).as_py()
    calendar = pa.concat_tables(
        [data.dims["DimDate"]]
        + [b.inserts["DimDate"] for b in history.batches if "DimDate" in b.inserts]
    ).column("date_key")
    assert pc.all(pc.is_in(streams.column("date_key"), value_set=calendar)).as_py()


def test_stream_volume_follows_the_live_population(history: History, data: InitialData) -> None:
    per_day = streams_of(history.batches).num_rows / DAYS
    expected = data.shape.streams / data.shape.history_days  # the population barely changes
    assert 0.9 * expected < per_day < 1.1 * expected
    by_hour = np.bincount(
        pc.hour(streams_of(history.batches).column("stream_timestamp")).to_numpy(), minlength=24
    )
    assert by_hour[19:22].sum() > 5 * by_hour[3:6].sum()


def test_fixed_stream_rate_and_no_late_streams(data: InitialData) -> None:
    batches = run(fresh_state(data), 4, streams_per_day=2_000.0, late_fraction=0.0)
    streams = streams_of(batches)
    assert 0.9 * 8_000 < streams.num_rows < 1.1 * 8_000
    stamps = streams.column("stream_timestamp")
    assert pc.min(stamps).as_py() >= batches[0].at - SLICE


def test_late_streams_never_precede_the_first_calendar_day(data: InitialData) -> None:
    state = fresh_state(data)
    state.clock = datetime.combine(data.start, datetime.min.time()) + timedelta(days=1)
    batches = run(state, 1, late_fraction=1.0)
    stamps = streams_of(batches).column("stream_timestamp")
    assert pc.min(stamps).as_py() >= datetime.combine(data.start, datetime.min.time())
    assert pc.min(stamps).as_py() < state.clock - timedelta(days=1), "some are still late"


# --- dirty values ------------------------------------------------------------------------------

_CANONICAL = {
    "country": set(COUNTRY_CODES),
    "subscription_type": set(SUBSCRIPTIONS),
    "genre": set(GENRES),
    "device_type": set(DEVICES),
}
_COUNTRY_NAMES = {name.lower() for name in COUNTRY_NAMES.values()}


def dirty_kinds(name: str, row: dict) -> list[str]:
    """The dirty values of a row, judged only from the clean domains."""
    kinds = []
    for column, value in row.items():
        if not isinstance(value, str):
            continue
        if value != value.strip():
            kinds.append("padding")
        elif column in _CANONICAL and value not in _CANONICAL[column]:
            if column == "country" and value.lower() in _COUNTRY_NAMES:
                kinds.append("country_name")
            elif value.lower() in {v.lower() for v in _CANONICAL[column]}:
                kinds.append("wrong_case")
            else:
                kinds.append(f"unknown {column}={value!r}")
    if name == "FactStream":
        kinds += ["null_foreign_key"] * ((row["user_id"] is None) + (row["track_id"] is None))
        duration = row["listen_duration"]
        if duration is not None and not 1 <= duration <= 86_400:
            kinds.append("bad_duration")
    if name == "DimTrack":
        kinds += ["null_foreign_key"] * (row["artist_id"] is None)
        if row["duration_sec"] is not None and row["duration_sec"] <= 0:
            kinds.append("bad_duration")
    return kinds


def changed_rows(batches: list[ChangeBatch], changes: str) -> list[tuple[str, dict]]:
    """(table, row) of every inserted or updated dimension or stream row."""
    return [
        (name, row)
        for batch in batches
        for name, table in getattr(batch, changes).items()
        if name != "DimDate"
        for row in table.to_pylist()
    ]


def test_every_dirty_kind_appears_and_nothing_else(dirty_history: list[ChangeBatch]) -> None:
    rows = changed_rows(dirty_history, "inserts") + changed_rows(dirty_history, "updates")
    found = Counter(kind for name, row in rows for kind in dirty_kinds(name, row))
    assert set(found) == set(DIRTY_KINDS), found
    assert min(found.values()) >= 3, found


def test_inserted_rows_get_one_dirty_value_at_the_configured_rate(
    dirty_history: list[ChangeBatch],
) -> None:
    kinds_per_row = [
        len(dirty_kinds(name, row)) for name, row in changed_rows(dirty_history, "inserts")
    ]
    assert max(kinds_per_row) == 1
    assert 0.18 < np.mean(kinds_per_row) < 0.22


def test_default_dirty_rate(history: History) -> None:
    rows = changed_rows(history.batches, "inserts")
    dirty = [bool(dirty_kinds(name, row)) for name, row in rows]
    assert 0.006 < np.mean(dirty) < 0.014


def test_keys_and_change_times_are_never_dirty(dirty_history: list[ChangeBatch]) -> None:
    for batch in dirty_history:
        for name, table in [*batch.inserts.items(), *batch.updates.items()]:
            time_column = "stream_timestamp" if name == "FactStream" else "updated_at"
            for column in (key_of(name), *([time_column] if name != "DimDate" else [])):
                assert table.column(column).null_count == 0, (name, column)
        if "FactStream" in batch.inserts:
            ids = batch.inserts["FactStream"].column("stream_id").to_numpy()
            assert (np.diff(ids) == 1).all()
        for name in DIMS:
            if name in batch.inserts:
                keys = batch.inserts[name].column(key_of(name)).to_numpy()
                assert (np.diff(keys) == 1).all()


def test_dirty_values_persist_in_the_state(data: InitialData) -> None:
    state = fresh_state(data)
    run(state, 5, dirty_fraction=0.5)
    dirty_rows = sum(
        bool(dirty_kinds(name, row)) for name in DIMS for row in state.dims[name].to_pylist()
    )
    assert dirty_rows > 0


# --- determinism and continuation --------------------------------------------------------------


def assert_same_batches(left: list[ChangeBatch], right: list[ChangeBatch]) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        assert a.at == b.at
        for changes in ("inserts", "updates", "deletes"):
            mine, theirs = getattr(a, changes), getattr(b, changes)
            assert mine.keys() == theirs.keys()
            assert all(mine[n].equals(theirs[n]) for n in mine), (a.at, changes)


def test_simulation_is_deterministic_for_a_seed(data: InitialData) -> None:
    first = run(fresh_state(data), 3)
    assert_same_batches(first, run(fresh_state(data), 3))
    other = run(fresh_state(data), 3, seed=SEED + 1)
    assert not all(
        a.inserts["FactStream"].equals(b.inserts["FactStream"])
        for a, b in zip(first, other, strict=True)
    )


def test_a_second_call_continues_the_first(data: InitialData) -> None:
    split_state, whole_state = fresh_state(data), fresh_state(data)
    split = run(split_state, 3) + run(split_state, 2)
    assert split_state.clock == datetime.combine(END, datetime.min.time()) + timedelta(days=5)
    assert_same_batches(split, run(whole_state, 5))
    for name in DIMS:
        assert split_state.dims[name].equals(whole_state.dims[name])
    assert split_state.next_ids == whole_state.next_ids
    assert split_state.date_keys_until == whole_state.date_keys_until == END + timedelta(days=5)


def test_state_rows_in_any_order_are_accepted(data: InitialData) -> None:
    shuffled = fresh_state(data)
    for name in DIMS:
        table = shuffled.dims[name]
        order = np.random.default_rng(0).permutation(table.num_rows)
        shuffled.dims[name] = table.take(order)
    assert_same_batches(run(shuffled, 1), run(fresh_state(data), 1))


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("new_users", -0.1),
        ("user_updates", 1.5),
        ("track_deletes", math.nan),
        ("dirty_fraction", 2),
        ("late_fraction", "0.1"),
        ("late_max_days", 0),
        ("late_max_days", 1.5),
        ("streams_per_day", -1.0),
    ],
)
def test_rates_are_validated_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SimulationRates(**{field: value})  # type: ignore[arg-type]


def test_simulate_rejects_bad_arguments(data: InitialData) -> None:
    with pytest.raises(ValueError, match="days"):
        simulate(fresh_state(data), -1, SEED)
    with pytest.raises(ValueError, match="slices_per_day"):
        simulate(fresh_state(data), 1, SEED, slices_per_day=0)
    reusing = fresh_state(data)
    reusing.next_ids = {**reusing.next_ids, "DimTrack": 5}
    with pytest.raises(ValueError, match="DimTrack"):
        simulate(reusing, 1, SEED)


def test_other_slice_counts(data: InitialData) -> None:
    state = fresh_state(data)
    batches = list(simulate(state, 2, SEED, slices_per_day=3))
    start = datetime.combine(END, datetime.min.time())
    assert [b.at for b in batches] == [start + timedelta(hours=8) * i for i in range(1, 7)]
    assert state.clock == start + timedelta(days=2)


def test_state_from_initial(data: InitialData) -> None:
    state = state_from_initial(data)
    assert state.clock == datetime(END.year, END.month, END.day)
    assert state.date_keys_until == END and state.date_keys_from == data.start
    assert state.next_ids == {
        "DimUser": data.shape.users + 1,
        "DimArtist": data.shape.artists + 1,
        "DimTrack": data.shape.tracks + 1,
        "FactStream": data.shape.streams + 1,
    }
    assert all(state.dims[name].equals(data.dims[name]) for name in DIMS)
    assert set(state.dims) == set(DIMS)
