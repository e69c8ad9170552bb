"""Deterministic, vectorized source data for the Spotify lakehouse (README: The source system).

Pure functions: numpy and pyarrow in, Arrow tables in the catalog's schemas out; no database and
no I/O. Rows are never built one at a time: every column is an array operation, so scale 1
(5M streams) takes seconds. The building blocks (vocabularies, weighted sampling, the diurnal
clock, popularity weights) are shared with the change simulator.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spotify_assets.catalog.reference import (
    COUNTRY_CODES,
    COUNTRY_WEIGHTS,
    DEVICE_WEIGHTS,
    DEVICES,
    GENRE_WEIGHTS,
    GENRES,
    SUBSCRIPTION_WEIGHTS,
    SUBSCRIPTIONS,
)
from spotify_assets.catalog.tables import CATALOG

SECONDS_PER_DAY = 86_400
_EPOCH = date(1970, 1, 1)


@dataclass(frozen=True)
class SourceShape:
    users: int
    artists: int
    tracks: int
    streams: int
    history_days: int


BASE_SHAPE = SourceShape(
    users=100_000, artists=20_000, tracks=200_000, streams=5_000_000, history_days=90
)

WEEKDAYS: tuple[str, ...] = (
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday",
)  # fmt: skip

# Relative listening activity per UTC hour: quiet at night, commute bumps, evening peak.
HOUR_WEIGHTS = np.array([
    2.0, 1.2, 0.8, 0.6, 0.6, 0.9, 1.8, 3.2, 4.2, 4.0, 3.8, 4.0,
    4.6, 4.4, 4.2, 4.4, 5.0, 5.8, 6.4, 6.8, 7.0, 6.4, 5.0, 3.4,
])  # fmt: skip

TRACK_ZIPF_EXPONENT = 1.1
USER_ACTIVITY_EXPONENT = 0.6
ARTIST_OUTPUT_EXPONENT = 0.8
TRACK_SALT = 0x7A3C
USER_SALT = 0x51E7
ARTIST_SALT = 0x2B9D
MIN_TRACK_SECONDS = 90
MAX_TRACK_SECONDS = 600
SKIP_SECONDS = 30
# weighted_choice: a cdf this short stays in the CPU's cache whatever the order of the draws;
# longer ones are searched in order of the draws' 16-bit bucket.
_CACHED_CDF = 4096
_BUCKETS = 65535

# Plain tuples, made arrays where drawn from: any pyarrow array built from Python values imports
# pandas (~0.5 s), which every process importing this module (the whole CLI) would pay.
_SYLLABLES = (
    "ka", "lu", "mi", "ra", "no", "ve", "ta", "si", "do", "re", "an", "el", "or", "is", "ba", "co",
    "da", "fi", "ga", "ha", "jo", "ke", "li", "ma", "ne", "pa", "ro", "sa", "tu", "vi", "wa", "ze",
    "yo", "bel", "dan", "mar", "len", "tor", "ash", "kin",
)  # fmt: skip
_ADJECTIVES = (
    "Midnight", "Golden", "Electric", "Broken", "Neon", "Summer", "Lonely", "Wild", "Silent",
    "Velvet", "Crystal", "Burning", "Endless", "Hollow", "Sweet", "Cold", "Blue", "Faded", "Lost",
    "Paper", "Silver", "Young", "Restless", "Northern", "Secret", "Dancing", "Falling", "Holy",
    "Violet", "Wicked",
)  # fmt: skip
_NOUNS = (
    "Heart", "Dream", "City", "Fire", "Rain", "Love", "Road", "Sky", "Echo", "Light", "Ocean",
    "Shadow", "Storm", "River", "Star", "Night", "Garden", "Mirror", "Ghost", "Wave", "Horizon",
    "Flame", "Season", "Signal", "Kingdom", "Memory", "Thunder", "Moon", "Highway", "Paradise",
)  # fmt: skip
_TRACK_SUFFIXES = ("", "", "", "", "", "", " - Remix", " - Live", " - Acoustic", " - Radio Edit")
_ALBUM_SUFFIXES = ("", "", "", "", " (Deluxe)", " EP", " Vol. 2", " (Remastered)")

# Independent random streams per table; streams additionally per day of history.
_TAG_USERS, _TAG_ARTISTS, _TAG_TRACKS, _TAG_STREAMS = 1, 2, 3, 4


def shape_for(scale: float, history_days: int | None = None) -> SourceShape:
    """Row counts for a scale factor (1 = BASE_SHAPE); at least one row of each table. The
    streams spread over `history_days` (default BASE_SHAPE's)."""
    if isinstance(scale, bool) or not isinstance(scale, int | float):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    days = BASE_SHAPE.history_days if history_days is None else history_days
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ValueError(f"history_days must be a whole number >= 1, got {history_days!r}")

    def scaled(base: int) -> int:
        return max(1, round(base * scale))

    return SourceShape(
        users=scaled(BASE_SHAPE.users),
        artists=scaled(BASE_SHAPE.artists),
        tracks=scaled(BASE_SHAPE.tracks),
        streams=scaled(BASE_SHAPE.streams),
        history_days=days,
    )


# --- shared building blocks -------------------------------------------------------------------


def rng_for(*entropy: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(entropy)))


def day_number(day: date) -> int:
    """Days since 1970-01-01 (the numpy/Arrow date32 value)."""
    return (day - _EPOCH).days


def epoch_seconds(moment: datetime) -> int:
    """Whole seconds since the epoch of a naive UTC datetime, rounded up."""
    delta = moment - datetime(1970, 1, 1)
    return delta.days * SECONDS_PER_DAY + delta.seconds + (1 if delta.microseconds else 0)


def weighted_choice(rng: np.random.Generator, n: int, weights: np.ndarray) -> np.ndarray:
    """n indices into `weights`, each drawn with probability proportional to its weight."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    cdf = np.cumsum(weights, dtype=np.float64)
    draws = rng.random(n) * cdf[-1]
    if len(cdf) <= _CACHED_CDF:
        return np.searchsorted(cdf, draws, side="right").astype(np.int64, copy=False)
    # A large cdf is searched several times faster (cache-friendly) draw bucket by draw bucket,
    # with the same result; a stable sort of 16-bit buckets is a linear radix sort, where
    # sorting the draws themselves took n log n (most of a scale-10 generation).
    buckets = (draws * (_BUCKETS / cdf[-1])).astype(np.uint16)
    order = np.argsort(buckets, kind="stable")
    chosen = np.empty(n, dtype=np.int64)
    chosen[order] = np.searchsorted(cdf, draws[order], side="right")
    return chosen


def rank_weights(keys: np.ndarray, salt: int, exponent: float) -> np.ndarray:
    """Zipf weights 1/rank^exponent, ranking keys by a hash of the key.

    Seed-independent on purpose: a hit track of the initial data stays a hit in the simulator,
    and a key keeps its relative rank as other keys come and go.
    """
    ranks = np.empty(len(keys), dtype=np.float64)
    ranks[np.argsort(_unit_hash(keys, salt))] = np.arange(1, len(keys) + 1)
    return ranks**-exponent


def _unit_hash(keys: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of (key, salt) mapped to [0, 1)."""
    x = keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def uniform_seconds(
    rng: np.random.Generator, low: np.ndarray, high: int | np.ndarray
) -> np.ndarray:
    """Whole epoch seconds uniform in [low, high), one per element of `low`."""
    span = np.maximum(np.asarray(high, dtype=np.int64) - low, 1)
    return low + np.floor(rng.random(len(low)) * span).astype(np.int64)


def hour_segments(low: int, high: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The clock hours overlapping [low, high) (epoch seconds): bounds and diurnal mass."""
    inner = np.arange((low // 3600 + 1) * 3600, high, 3600, dtype=np.int64)
    edges = np.concatenate(([low], inner, [high])).astype(np.int64)
    seg_low, seg_high = edges[:-1], edges[1:]
    mass = HOUR_WEIGHTS[(seg_low // 3600) % 24] * (seg_high - seg_low)
    return seg_low, seg_high, mass


def diurnal_mass(low: int, high: int) -> float:
    """Share of a full day's listening that happens in [low, high)."""
    return float(hour_segments(low, high)[2].sum() / (HOUR_WEIGHTS.sum() * 3600))


def diurnal_seconds(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    """n whole epoch seconds in [low, high) following the diurnal listening curve."""
    seg_low, seg_high, mass = hour_segments(low, high)
    segment = weighted_choice(rng, n, mass)
    span = seg_high[segment] - seg_low[segment]
    return seg_low[segment] + np.floor(rng.random(n) * span).astype(np.int64)


def date_keys(seconds: np.ndarray) -> np.ndarray:
    """yyyymmdd (int32) of epoch seconds."""
    days = (seconds // SECONDS_PER_DAY).astype("datetime64[D]")
    months = days.astype("datetime64[M]")
    year = days.astype("datetime64[Y]").astype(np.int64) + 1970
    month = months.astype(np.int64) % 12 + 1
    day = (days - months).astype(np.int64) + 1
    return (year * 10_000 + month * 100 + day).astype(np.int32)


def timestamp_array(seconds: np.ndarray) -> pa.Array:
    return pa.array((seconds * 1_000_000).astype("datetime64[us]"))


def date_array(days: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    return pa.array(days.astype("datetime64[D]"), mask=null)


def int32_array(values: np.ndarray) -> pa.Array:
    return pa.array(values.astype(np.int32), type=pa.int32())


def pick(rng: np.random.Generator, values: tuple[str, ...], n: int) -> pa.Array:
    return pa.array(values).take(rng.integers(0, len(values), n))


def pick_weighted(
    rng: np.random.Generator, values: tuple[str, ...], weights: np.ndarray, n: int
) -> pa.Array:
    return pa.array(values).take(weighted_choice(rng, n, weights))


def _coined_words(rng: np.random.Generator, n: int) -> pa.Array:
    """Capitalized made-up words of two or three syllables ("Kalu", "Marisen")."""
    third = pc.if_else(pa.array(rng.random(n) < 0.5), pick(rng, _SYLLABLES, n), "")
    word = pc.binary_join_element_wise(
        pick(rng, _SYLLABLES, n), pick(rng, _SYLLABLES, n), third, ""
    )
    return pc.utf8_capitalize(word)


def person_names(rng: np.random.Generator, n: int) -> pa.Array:
    return pc.binary_join_element_wise(_coined_words(rng, n), _coined_words(rng, n), " ")


def artist_names(rng: np.random.Generator, n: int) -> pa.Array:
    band = pc.binary_join_element_wise(
        "The",
        pick(rng, _ADJECTIVES, n),
        pc.binary_join_element_wise(pick(rng, _NOUNS, n), "s", ""),
        " ",
    )
    pattern = pa.array(weighted_choice(rng, n, np.array([0.5, 0.25, 0.25])).astype(np.int8))
    return pc.choose(pattern, person_names(rng, n), _coined_words(rng, n), band)


def track_names(rng: np.random.Generator, n: int) -> pa.Array:
    adjective, noun, other = pick(rng, _ADJECTIVES, n), pick(rng, _NOUNS, n), pick(rng, _NOUNS, n)
    # Hyphenated names exercise silver's regexp_replace(track_name, '-', ' ').
    pattern = pa.array(weighted_choice(rng, n, np.array([0.5, 0.3, 0.2])).astype(np.int8))
    base = pc.choose(
        pattern,
        pc.binary_join_element_wise(adjective, noun, " "),
        pc.binary_join_element_wise(noun, "of", other, " "),
        pc.binary_join_element_wise(adjective, noun, "-"),
    )
    return pc.binary_join_element_wise(base, pick(rng, _TRACK_SUFFIXES, n), "")


def album_names(rng: np.random.Generator, n: int) -> pa.Array:
    title = pc.if_else(
        pa.array(rng.random(n) < 0.4),
        pick(rng, _NOUNS, n),
        pc.binary_join_element_wise(pick(rng, _ADJECTIVES, n), pick(rng, _NOUNS, n), " "),
    )
    return pc.binary_join_element_wise(title, pick(rng, _ALBUM_SUFFIXES, n), "")


def track_durations(rng: np.random.Generator, n: int) -> np.ndarray:
    """Seconds, log-normal around 3.5 minutes, within [90, 600]."""
    seconds = np.round(rng.lognormal(np.log(210.0), 0.3, n))
    return np.clip(seconds, MIN_TRACK_SECONDS, MAX_TRACK_SECONDS).astype(np.int32)


def listen_durations(rng: np.random.Generator, track_seconds: np.ndarray) -> np.ndarray:
    """Seconds listened per stream: a quarter skipped (< 30 s), half complete, the rest partial."""
    length = np.maximum(track_seconds.astype(np.int64), 1)
    kind, share = rng.random(len(length)), rng.random(len(length))
    skipped = 1 + np.floor(share * np.minimum(SKIP_SECONDS - 1, length)).astype(np.int64)
    partial = np.where(
        length > SKIP_SECONDS,
        SKIP_SECONDS + np.floor(share * (length - SKIP_SECONDS + 1)).astype(np.int64),
        length,
    )
    return np.where(kind < 0.25, skipped, np.where(kind < 0.75, length, partial)).astype(np.int32)


def dim_date_table(first: date, last: date) -> pa.Table:
    """DimDate rows for every day from `first` to `last` inclusive."""
    days = np.arange(day_number(first), day_number(last) + 1, dtype=np.int64)
    keys = date_keys(days * SECONDS_PER_DAY)
    weekday = pa.array(WEEKDAYS).take((days + 3) % 7)  # 1970-01-01 was a Thursday
    return pa.Table.from_arrays(
        [
            pa.array(keys),
            date_array(days),
            pa.array((keys % 100).astype(np.int32)),
            pa.array((keys // 100 % 100).astype(np.int32)),
            pa.array((keys // 10_000).astype(np.int32)),
            weekday,
        ],
        schema=CATALOG["DimDate"].arrow_schema,
    )


# --- initial data -----------------------------------------------------------------------------


@dataclass(frozen=True)
class InitialData:
    shape: SourceShape
    start: date  # first day of history
    end: date  # exclusive; the simulated clock after init is midnight of `end`
    dims: dict[str, pa.Table]  # DimUser, DimArtist, DimTrack, DimDate
    seed: int

    def stream_batches(self, batch_rows: int = 500_000) -> Iterator[pa.Table]:
        """FactStream in batches of `batch_rows` (the last one shorter), generated lazily.

        Rows are generated per day of history from that day's own random stream, so the
        concatenated output does not depend on `batch_rows`; stream_id grows with time.
        """
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be at least 1, got {batch_rows!r}")
        pending: list[pa.Table] = []
        pending_rows = 0
        for chunk in self._stream_days():
            pending.append(chunk)
            pending_rows += chunk.num_rows
            while pending_rows >= batch_rows:
                buffered = pa.concat_tables(pending)
                yield buffered.slice(0, batch_rows).combine_chunks()
                pending = [buffered.slice(batch_rows)]
                pending_rows -= batch_rows
        if pending_rows:
            yield pa.concat_tables(pending).combine_chunks()

    def _stream_days(self) -> Iterator[pa.Table]:
        user_weights = rank_weights(
            np.arange(1, self.shape.users + 1), USER_SALT, USER_ACTIVITY_EXPONENT
        )
        track_weights = rank_weights(
            np.arange(1, self.shape.tracks + 1), TRACK_SALT, TRACK_ZIPF_EXPONENT
        )
        durations = self.dims["DimTrack"].column("duration_sec").to_numpy()
        counts = _streams_per_day(self.shape.streams, self.shape.history_days, self.start)
        first_ids = 1 + np.concatenate(([0], np.cumsum(counts)[:-1]))
        for index, (count, first_id) in enumerate(zip(counts, first_ids, strict=True)):
            rng = rng_for(self.seed, _TAG_STREAMS, index)
            low = (day_number(self.start) + index) * SECONDS_PER_DAY
            seconds = np.sort(diurnal_seconds(rng, int(count), low, low + SECONDS_PER_DAY))
            users = weighted_choice(rng, int(count), user_weights) + 1
            tracks = weighted_choice(rng, int(count), track_weights) + 1
            yield stream_table(
                stream_ids=np.arange(first_id, first_id + count, dtype=np.int64),
                user_ids=users,
                track_ids=tracks,
                listen=listen_durations(rng, durations[tracks - 1]),
                devices=pick_weighted(rng, DEVICES, DEVICE_WEIGHTS, int(count)),
                seconds=seconds,
            )


def stream_table(
    *,
    stream_ids: np.ndarray,
    user_ids: np.ndarray,
    track_ids: np.ndarray,
    listen: np.ndarray,
    devices: pa.Array,
    seconds: np.ndarray,
) -> pa.Table:
    return pa.Table.from_arrays(
        [
            pa.array(stream_ids, type=pa.int64()),
            int32_array(user_ids),
            int32_array(track_ids),
            pa.array(date_keys(seconds)),
            pa.array(listen, type=pa.int32()),
            devices,
            timestamp_array(seconds),
        ],
        schema=CATALOG["FactStream"].arrow_schema,
    )


def generate(scale: float, seed: int, end: date, history_days: int | None = None) -> InitialData:
    """Clean initial source data for `history_days` days before `end` (exclusive)."""
    shape = shape_for(scale, history_days)
    end = date(end.year, end.month, end.day)  # a datetime counts as its day
    start = date.fromordinal(end.toordinal() - shape.history_days)
    first, last = day_number(start), day_number(end)
    dims = {
        "DimUser": _users(rng_for(seed, _TAG_USERS), shape.users, first, last),
        "DimArtist": _artists(rng_for(seed, _TAG_ARTISTS), shape.artists, first, last),
        "DimTrack": _tracks(rng_for(seed, _TAG_TRACKS), shape, first, last),
        "DimDate": dim_date_table(start, end),
    }
    return InitialData(shape=shape, start=start, end=end, dims=dims, seed=seed)


def _users(rng: np.random.Generator, n: int, first: int, last: int) -> pa.Table:
    """Most users joined before the history window, some during it; a few churned in it."""
    joined_in_history = rng.random(n) < 0.15
    tenure = np.minimum(np.floor(rng.exponential(500.0, n)), 3650).astype(np.int64)
    start_date = np.where(
        joined_in_history, rng.integers(first, last, n), first - 1 - tenure
    ).astype(np.int64)
    churned = rng.random(n) < 0.04
    active_from = np.maximum(start_date, first)
    end_date = active_from + np.floor(rng.random(n) * (last - active_from)).astype(np.int64)
    changed_from = np.where(churned, end_date, active_from) * SECONDS_PER_DAY
    return pa.Table.from_arrays(
        [
            int32_array(np.arange(1, n + 1)),
            person_names(rng, n),
            pick_weighted(rng, COUNTRY_CODES, COUNTRY_WEIGHTS, n),
            pick_weighted(rng, SUBSCRIPTIONS, SUBSCRIPTION_WEIGHTS, n),
            date_array(start_date),
            date_array(end_date, null=~churned),
            timestamp_array(uniform_seconds(rng, changed_from, last * SECONDS_PER_DAY)),
        ],
        schema=CATALOG["DimUser"].arrow_schema,
    )


def _artists(rng: np.random.Generator, n: int, first: int, last: int) -> pa.Table:
    return pa.Table.from_arrays(
        [
            int32_array(np.arange(1, n + 1)),
            artist_names(rng, n),
            pick_weighted(rng, GENRES, GENRE_WEIGHTS, n),
            pick_weighted(rng, COUNTRY_CODES, COUNTRY_WEIGHTS, n),
            timestamp_array(
                uniform_seconds(rng, np.full(n, first * SECONDS_PER_DAY), last * SECONDS_PER_DAY)
            ),
        ],
        schema=CATALOG["DimArtist"].arrow_schema,
    )


def _tracks(rng: np.random.Generator, shape: SourceShape, first: int, last: int) -> pa.Table:
    """Prolific artists own many tracks; a few tracks are new releases of the window."""
    n = shape.tracks
    artist_weights = rank_weights(
        np.arange(1, shape.artists + 1), ARTIST_SALT, ARTIST_OUTPUT_EXPONENT
    )
    new_release = rng.random(n) < 0.08
    catalog_age = np.minimum(
        np.floor(rng.exponential(1500.0, n)), first - day_number(date(1960, 1, 1))
    )
    release = np.where(new_release, rng.integers(first, last, n), first - 1 - catalog_age).astype(
        np.int64
    )
    changed_from = np.maximum(release, first) * SECONDS_PER_DAY
    return pa.Table.from_arrays(
        [
            int32_array(np.arange(1, n + 1)),
            track_names(rng, n),
            int32_array(weighted_choice(rng, n, artist_weights) + 1),
            album_names(rng, n),
            pa.array(track_durations(rng, n)),
            date_array(release),
            timestamp_array(uniform_seconds(rng, changed_from, last * SECONDS_PER_DAY)),
        ],
        schema=CATALOG["DimTrack"].arrow_schema,
    )


def _streams_per_day(total: int, days: int, start: date) -> np.ndarray:
    """Split `total` streams over the days: weekends busier, slow growth over the window."""
    weekday = (np.arange(days) + start.weekday()) % 7
    weights = np.where(weekday >= 4, 1.06, 0.97) * (1.0 + 0.1 * np.arange(days) / days)
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    # Largest remainders get the leftover rows, so the counts add up to `total` exactly.
    counts[np.argsort(counts - exact, kind="stable")[: total - counts.sum()]] += 1
    return counts
