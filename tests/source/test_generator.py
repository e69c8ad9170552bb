"""The initial source data: deterministic, in the catalog's schemas, consistent and realistic."""

from __future__ import annotations

import math
import re
from datetime import date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from spotify_assets.catalog.reference import (
    COUNTRY_CODES,
    COUNTRY_WEIGHTS,
    DEVICE_WEIGHTS,
    DEVICES,
    GENRES,
    SUBSCRIPTION_WEIGHTS,
    SUBSCRIPTIONS,
)
from spotify_assets.catalog.tables import CATALOG
from spotify_assets.source.generator import (
    InitialData,
    SourceShape,
    generate,
    rng_for,
    shape_for,
    weighted_choice,
)

SCALE = 0.01
SEED = 11
END = date(2026, 4, 1)
DIMS = ("DimUser", "DimArtist", "DimTrack")


@pytest.fixture(scope="module")
def data() -> InitialData:
    return generate(SCALE, SEED, END)


@pytest.fixture(scope="module")
def streams(data: InitialData) -> pa.Table:
    return pa.concat_tables(data.stream_batches()).combine_chunks()


def all_streams(data: InitialData, batch_rows: int = 500_000) -> pa.Table:
    return pa.concat_tables(data.stream_batches(batch_rows)).combine_chunks()


def share(values: pa.ChunkedArray, value: str) -> float:
    return pc.sum(pc.equal(values, value)).as_py() / len(values)


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day)


# --- shape ---------------------------------------------------------------------------------------


@settings(deadline=None, max_examples=60)
@given(
    weights=st.integers(1, 9000).flatmap(
        lambda size: hnp.arrays(np.float64, size, elements=st.floats(0.0, 1e6))
    ),
    n=st.integers(0, 3000),
    seed=st.integers(0, 2**32),
)
def test_weighted_choice_is_the_draws_searched_in_the_cdf(
    weights: np.ndarray, n: int, seed: int
) -> None:
    """Same draws, same indices, however the search is ordered (short and long cdfs): a source
    generated for a seed stays the same data."""
    weights[0] += 1.0  # some weight to draw from
    cdf = np.cumsum(weights)
    expected = np.searchsorted(cdf, rng_for(seed).random(n) * cdf[-1], side="right")
    chosen = weighted_choice(rng_for(seed), n, weights)
    assert chosen.dtype == np.int64
    assert chosen.tolist() == expected.tolist()


def test_shape_for_scales_the_base_counts() -> None:
    assert shape_for(1) == SourceShape(100_000, 20_000, 200_000, 5_000_000, 90)
    assert shape_for(0.001) == SourceShape(100, 20, 200, 5_000, 90)
    assert shape_for(1e-9) == SourceShape(1, 1, 1, 1, 90)


@pytest.mark.parametrize("scale", [0, -0.5, math.nan, math.inf, "1", True])
def test_bad_scale_is_rejected_naming_the_value(scale: object) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(scale))):
        shape_for(scale)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape(repr(scale))):
        generate(scale, SEED, END)  # type: ignore[arg-type]


def test_a_shorter_history_keeps_the_counts_in_fewer_days() -> None:
    short = generate(0.001, SEED, END, history_days=7)
    assert short.start == END - timedelta(days=7)
    assert short.dims["DimDate"].num_rows == 7 + 1  # the calendar runs through `end`
    rows = all_streams(short)
    assert rows.num_rows == 5_000
    first, last = pc.min_max(rows["stream_timestamp"]).values()
    assert first.as_py() >= datetime(2026, 3, 25) and last.as_py() < datetime(2026, 4, 1)
    for days in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="history_days"):
            shape_for(1, days)  # type: ignore[arg-type]


def test_tiny_scale_still_has_rows_of_every_table() -> None:
    tiny = generate(0.001, SEED, END)
    assert all(tiny.dims[name].num_rows >= 1 for name in DIMS)
    assert all_streams(tiny).num_rows == 5_000


def test_counts_follow_the_shape(data: InitialData, streams: pa.Table) -> None:
    shape = data.shape
    assert shape == shape_for(SCALE)
    assert data.start == END - timedelta(days=90) and data.end == END
    assert data.dims["DimUser"].num_rows == shape.users
    assert data.dims["DimArtist"].num_rows == shape.artists
    assert data.dims["DimTrack"].num_rows == shape.tracks
    assert data.dims["DimDate"].num_rows == shape.history_days + 1
    assert streams.num_rows == shape.streams


# --- determinism ---------------------------------------------------------------------------------


def test_same_seed_gives_identical_tables(data: InitialData, streams: pa.Table) -> None:
    again = generate(SCALE, SEED, END)
    assert data.dims.keys() == again.dims.keys()
    for name, table in data.dims.items():
        assert table.equals(again.dims[name]), name
    assert streams.equals(all_streams(again))


def test_another_seed_gives_other_data(data: InitialData, streams: pa.Table) -> None:
    other = generate(SCALE, SEED + 1, END)
    for name in DIMS:
        assert not data.dims[name].equals(other.dims[name]), name
    assert not streams.equals(all_streams(other))


@pytest.mark.parametrize("batch_rows", [1_000, 7_777, 10**9])
def test_stream_batches_do_not_depend_on_batch_rows(
    data: InitialData, streams: pa.Table, batch_rows: int
) -> None:
    batches = list(data.stream_batches(batch_rows))
    assert all(b.num_rows == batch_rows for b in batches[:-1])
    assert 1 <= batches[-1].num_rows <= batch_rows
    assert pa.concat_tables(batches).combine_chunks().equals(streams)


@pytest.mark.parametrize("batch_rows", [0, -5])
def test_stream_batches_reject_a_non_positive_size(data: InitialData, batch_rows: int) -> None:
    with pytest.raises(ValueError, match="batch_rows"):
        next(data.stream_batches(batch_rows))


# --- schema, keys, references ---------------------------------------------------------------


def test_every_table_has_exactly_the_catalog_schema(data: InitialData) -> None:
    assert set(data.dims) == {"DimUser", "DimArtist", "DimTrack", "DimDate"}
    for name, table in data.dims.items():
        assert table.schema == CATALOG[name].arrow_schema, name
    for batch in data.stream_batches(20_000):
        assert batch.schema == CATALOG["FactStream"].arrow_schema


def test_keys_are_dense_and_unique(data: InitialData, streams: pa.Table) -> None:
    for name in DIMS:
        keys = data.dims[name].column(CATALOG[name].key[0]).to_numpy()
        np.testing.assert_array_equal(keys, np.arange(1, len(keys) + 1))
    stream_ids = streams.column("stream_id").to_numpy()
    np.testing.assert_array_equal(stream_ids, np.arange(1, data.shape.streams + 1))


def test_references_point_at_existing_rows(data: InitialData, streams: pa.Table) -> None:
    shape = data.shape
    for column, count in (("user_id", shape.users), ("track_id", shape.tracks)):
        ids = streams.column(column)
        assert ids.null_count == 0
        assert pc.min(ids).as_py() >= 1 and pc.max(ids).as_py() <= count
    artist_ids = data.dims["DimTrack"].column("artist_id")
    assert artist_ids.null_count == 0
    assert pc.min(artist_ids).as_py() >= 1 and pc.max(artist_ids).as_py() <= shape.artists
    calendar = data.dims["DimDate"].column("date_key")
    assert pc.all(pc.is_in(streams.column("date_key"), value_set=calendar)).as_py()


# --- clean values ------------------------------------------------------------------------------


def test_initial_data_is_clean(data: InitialData, streams: pa.Table) -> None:
    users, artists, tracks = (data.dims[name] for name in DIMS)
    allowed = [
        (users, "country", COUNTRY_CODES),
        (users, "subscription_type", SUBSCRIPTIONS),
        (artists, "country", COUNTRY_CODES),
        (artists, "genre", GENRES),
        (streams, "device_type", DEVICES),
    ]
    for table, column, values in allowed:
        assert pc.all(pc.is_in(table.column(column), value_set=pa.array(values))).as_py(), column
    for table in (users, artists, tracks, data.dims["DimDate"], streams):
        for column in table.column_names:
            if column != "end_date":
                assert table.column(column).null_count == 0, column
            if pa.types.is_string(table.schema.field(column).type):
                values = table.column(column)
                assert pc.all(pc.equal(values, pc.utf8_trim_whitespace(values))).as_py(), column
    durations = tracks.column("duration_sec")
    assert pc.min(durations).as_py() >= 90 and pc.max(durations).as_py() <= 600


def test_listen_durations_fit_the_track_and_many_are_skips(
    data: InitialData, streams: pa.Table
) -> None:
    listened = streams.column("listen_duration").to_numpy()
    track_seconds = data.dims["DimTrack"].column("duration_sec").to_numpy()
    played = track_seconds[streams.column("track_id").to_numpy() - 1]
    assert (listened >= 1).all() and (listened <= played).all()
    assert 0.15 < (listened < 30).mean() < 0.35
    assert 0.3 < (listened == played).mean() < 0.7


def test_names_look_like_names(data: InitialData) -> None:
    for name, column in (("DimUser", "user_name"), ("DimArtist", "artist_name")):
        names = data.dims[name].column(column)
        assert pc.count_distinct(names).as_py() > 0.9 * len(names), column
        assert pc.all(pc.match_substring_regex(names, r"^[A-Z][A-Za-z ]+[a-z]$")).as_py(), column
    tracks = data.dims["DimTrack"]
    assert pc.any(pc.match_substring(tracks.column("track_name"), "-")).as_py()
    assert pc.all(pc.greater(pc.utf8_length(tracks.column("album_name")), 2)).as_py()


# --- dates and times ---------------------------------------------------------------------------


def test_dimension_dates_and_change_times_lie_in_history(data: InitialData) -> None:
    start, end = midnight(data.start), midnight(data.end)
    users, artists, tracks = (data.dims[name].to_pylist() for name in DIMS)
    for row in users:
        assert row["start_date"] < data.end
        assert start <= row["updated_at"] < end
        assert row["updated_at"] >= midnight(max(row["start_date"], data.start))
        if row["end_date"] is not None:
            assert row["start_date"] <= row["end_date"] < data.end
            assert row["updated_at"] >= midnight(row["end_date"])
    churned = sum(row["end_date"] is not None for row in users) / len(users)
    assert 0 < churned < 0.1
    assert any(row["start_date"] >= data.start for row in users), "some users joined lately"
    assert all(start <= row["updated_at"] < end for row in artists)
    for row in tracks:
        assert row["release_date"] < data.end
        assert start <= row["updated_at"] < end
        assert row["updated_at"] >= midnight(row["release_date"])


def test_dim_date_is_the_calendar_of_the_history(data: InitialData) -> None:
    rows = data.dims["DimDate"].to_pylist()
    assert [row["date"] for row in rows] == [
        data.start + timedelta(days=i) for i in range((data.end - data.start).days + 1)
    ]
    for row in rows:
        day = row["date"]
        assert row["date_key"] == int(day.strftime("%Y%m%d"))
        assert (row["day"], row["month"], row["year"]) == (day.day, day.month, day.year)
        assert row["weekday"] == day.strftime("%A")


def test_streams_lie_in_history_in_id_order_with_matching_date_key(
    data: InitialData, streams: pa.Table
) -> None:
    stamps = streams.column("stream_timestamp")
    assert pc.min(stamps).as_py() >= midnight(data.start)
    assert pc.max(stamps).as_py() < midnight(data.end)
    seconds = stamps.to_numpy().astype(np.int64)
    assert (np.diff(seconds) >= 0).all(), "stream_id grows with stream_timestamp"
    expected = pc.add(
        pc.add(pc.multiply(pc.year(stamps), 10_000), pc.multiply(pc.month(stamps), 100)),
        pc.day(stamps),
    )
    assert pc.all(pc.equal(pc.cast(expected, pa.int32()), streams.column("date_key"))).as_py()
    days_with_streams = pc.count_distinct(streams.column("date_key")).as_py()
    assert days_with_streams == data.shape.history_days


# --- distributions -----------------------------------------------------------------------------


def test_track_popularity_is_zipf_like(streams: pa.Table, data: InitialData) -> None:
    plays = np.bincount(streams.column("track_id").to_numpy(), minlength=data.shape.tracks + 1)
    ranked = np.sort(plays[1:])[::-1]
    top_share = ranked[: max(1, len(ranked) // 100)].sum() / ranked.sum()
    assert top_share > 0.2
    # Zipf with exponent ~1.1: the 10th most played track gets roughly 1/10^1.1 of the first.
    assert 0.03 < ranked[9] / ranked[0] < 0.2


def test_user_activity_is_skewed(streams: pa.Table, data: InitialData) -> None:
    plays = np.bincount(streams.column("user_id").to_numpy(), minlength=data.shape.users + 1)
    ranked = np.sort(plays[1:])[::-1]
    top_tenth = ranked[: len(ranked) // 10].sum() / ranked.sum()
    assert 0.25 < top_tenth < 0.6


def test_subscription_country_and_genre_mixes(data: InitialData) -> None:
    users = data.dims["DimUser"]
    for plan, target in zip(SUBSCRIPTIONS, SUBSCRIPTION_WEIGHTS, strict=True):
        assert abs(share(users.column("subscription_type"), plan) - target) < 0.05, plan
    us_target = COUNTRY_WEIGHTS[COUNTRY_CODES.index("US")] / COUNTRY_WEIGHTS.sum()
    assert abs(share(users.column("country"), "US") - us_target) < 0.05
    assert pc.count_distinct(users.column("country")).as_py() >= 15
    genres = data.dims["DimArtist"].column("genre")
    assert share(genres, "pop") > share(genres, "ambient")


def test_device_mix(streams: pa.Table) -> None:
    for device, target in zip(DEVICES, DEVICE_WEIGHTS, strict=True):
        assert abs(share(streams.column("device_type"), device) - target) < 0.01, device


def test_evenings_are_busier_than_early_mornings(streams: pa.Table) -> None:
    by_hour = np.bincount(pc.hour(streams.column("stream_timestamp")).to_numpy(), minlength=24)
    evening, night = by_hour[19:22].sum(), by_hour[3:6].sum()
    assert evening > 5 * night
    assert by_hour.argmax() in range(17, 23)
