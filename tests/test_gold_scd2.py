"""SCD2 dimensions: the gold runner against an independent reference model.

The model is the AUTO CDC contract of DESIGN.md §6 written as a plain loop over each key's
changes in business-time order. Hypothesis feeds random change sequences (inserts, updates of
tracked and untracked columns, deletes, re-inserts), delivered out of order, re-delivered and
split across random batches; after every batch silver is rewritten the way silver refreshes do
(whole partitions replaced) and the runner applies it incrementally with MERGE.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import DataFrame, SparkSession

from resources.delta_tables import replace_partitions
from resources.gold_runner import GoldRunner
from resources.lake import LakeStorage
from spotify_assets import gold
from spotify_assets.catalog import CATALOG, CHANGE_DATE, CHANGE_OP, CHANGE_SEQ, VERSION_AT
from spotify_assets.gold import scd2
from spotify_assets.gold_spec import END_AT, START_AT

DIM_USER = CATALOG["DimUser"]
T0 = datetime(2026, 3, 1)
SILVER_DDL = (
    "user_id int, user_name string, country string, subscription_type string, start_date date, "
    "end_date date, updated_at timestamp_ntz, _op string, _seq bigint, "
    "_version_at timestamp_ntz, _change_date date"
)
GOLD_COLUMNS = [
    "user_id",
    "user_name",
    "country",
    "subscription_type",
    "start_date",
    "end_date",
    "updated_at",
    START_AT,
    END_AT,
]


@dataclass(frozen=True)
class Change:
    """One silver version of a DimUser row: an upsert (insert, update, image) or a delete."""

    user_id: int
    at: datetime  # business time: updated_at of an upsert, change time of a delete
    delete: bool
    name: str  # tracked
    subscription: str  # tracked
    seq: int

    def silver_row(self) -> tuple[Any, ...]:
        op = "D" if self.delete else "U"
        # A delete's image still carries the row's last values and an older updated_at.
        updated = self.at - timedelta(minutes=1) if self.delete else self.at
        return (self.user_id, self.name, "SE", self.subscription, date(2025, 1, 1), None,
                updated, op, self.seq, self.at, self.at.date())  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_key_bucket() -> Iterator[None]:
    """All keys in one window partition: each key's neighbours are other keys, as at scale."""
    with mock.patch.object(gold, "KEY_BUCKETS", 1):
        yield


def reference(changes: list[Change]) -> list[tuple[Any, ...]]:
    """AUTO CDC SCD2, one change at a time in (time, upsert-before-delete) order per key."""
    rows: list[dict[str, Any]] = []
    for user in sorted({c.user_id for c in changes}):
        open_version: dict[str, Any] | None = None
        for c in sorted((c for c in changes if c.user_id == user), key=lambda c: (c.at, c.delete)):
            if c.delete:
                if open_version is not None:
                    open_version[END_AT] = c.at
                open_version = None
                continue
            if open_version and (open_version["user_name"], open_version["subscription_type"]) == (
                c.name,
                c.subscription,
            ):
                open_version["updated_at"] = c.at  # untracked: in place
                continue
            if open_version is not None:
                open_version[END_AT] = c.at
            open_version = {
                "user_id": user,
                "user_name": c.name,
                "country": "SE",
                "subscription_type": c.subscription,
                "start_date": date(2025, 1, 1),
                "end_date": None,
                "updated_at": c.at,
                START_AT: c.at,
                END_AT: None,
            }
            rows.append(open_version)
    return sorted(tuple(r[c] for c in GOLD_COLUMNS) for r in rows)


@st.composite
def change_sets(draw: st.DrawFn) -> list[Change]:
    """Distinct (key, time, delete) versions over a few keys, times spread over four days so
    silver has several partitions; few values, so unchanged tracked columns happen often. As in
    a change feed, a delete carries the values of the row it deletes."""
    slots = draw(
        st.lists(
            st.tuples(st.integers(1, 3), st.integers(0, 4 * 24 * 6), st.booleans()),
            min_size=1,
            max_size=24,
            unique=True,
        )
    )
    changes: list[Change] = []
    last: dict[int, tuple[str, str]] = {}
    for n, (user, step, delete) in enumerate(sorted(slots, key=lambda s: (s[1], s[2])), 1):
        values = (draw(st.sampled_from(["ANA", "BO"])), draw(st.sampled_from(["Free", "Premium"])))
        name, subscription = last.get(user, values) if delete else values
        last[user] = (name, subscription)
        at = T0 + timedelta(minutes=10 * step)
        changes.append(Change(user, at, delete, name, subscription, seq=n))
    return changes


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[Change], list[list[Change]]]:
    """A change set and the batches it arrives in: any order, some changes more than once."""
    changes = draw(change_sets())
    batch_count = draw(st.integers(1, 4))
    batches: list[list[Change]] = [[] for _ in range(batch_count)]
    for change in draw(st.permutations(changes)):
        for b in draw(st.sets(st.integers(0, batch_count - 1), min_size=1, max_size=2)):
            batches[b].append(change)
    return changes, batches


def silver_frame(spark: SparkSession, changes: list[Change]) -> DataFrame:
    return spark.createDataFrame([c.silver_row() for c in changes], SILVER_DDL)


def gold_rows(df: DataFrame) -> list[tuple[Any, ...]]:
    return sorted(tuple(r[c] for c in GOLD_COLUMNS) for r in df.select(*GOLD_COLUMNS).collect())


class Silver:
    """dim_user's silver table, refreshed as SilverStore does: every partition a batch touches
    is replaced by all versions delivered so far in it (re-deliveries collapse)."""

    def __init__(self, lake: LakeStorage, spark: SparkSession) -> None:
        self.lake, self.spark = lake, spark
        self.path = lake.path(f"silver/{DIM_USER.lake_name}")
        self.delivered: set[Change] = set()

    def deliver(self, batch: list[Change]) -> None:
        self.delivered |= set(batch)
        for day in sorted({c.at.date() for c in batch}):
            rows = [c for c in self.delivered if c.at.date() == day]
            frame = silver_frame(self.spark, rows)
            replace_partitions(self.lake, frame, self.path, CHANGE_DATE, (day, day))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=change_sets())
def test_scd2_equals_the_reference_model(sail_spark: SparkSession, changes: list[Change]) -> None:
    shuffled = sorted(changes, key=lambda c: -c.seq)  # arrival order must not matter
    assert gold_rows(scd2(DIM_USER, silver_frame(sail_spark, shuffled))) == reference(changes)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(delivery=deliveries())
def test_incremental_apply_equals_the_reference_model(
    sail_spark: SparkSession,
    tmp_path_factory: pytest.TempPathFactory,
    delivery: tuple[list[Change], list[list[Change]]],
) -> None:
    changes, batches = delivery
    lake = LakeStorage(url=str(tmp_path_factory.mktemp("lake")))
    silver, runner = Silver(lake, sail_spark), GoldRunner(lake, sail_spark, CATALOG)
    for batch in batches:
        if not batch:
            continue
        silver.deliver(batch)
        result = runner.apply_dimension(DIM_USER)
        assert gold_rows(runner.read(DIM_USER.lake_name)) == reference(list(silver.delivered))
        assert set(result.problems.values()) == {0}
    assert silver.delivered == set(changes)


# --- the contract, case by case ----------------------------------------------------------------


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def change(user: int, minutes: int, name: str = "ANA", sub: str = "Free", delete: bool = False):
    return Change(user, at(minutes), delete, name, sub, seq=minutes)


@pytest.fixture
def lake(tmp_path: Path) -> LakeStorage:
    return LakeStorage(url=str(tmp_path / "lake"))


def apply(lake: LakeStorage, spark: SparkSession, *batches: list[Change]) -> GoldRunner:
    silver, runner = Silver(lake, spark), GoldRunner(lake, spark, CATALOG)
    for batch in batches:
        silver.deliver(batch)
        runner.apply_dimension(DIM_USER)
    return runner


def versions(runner: GoldRunner) -> list[tuple[Any, ...]]:
    rows = runner.read(DIM_USER.lake_name).select(
        "user_id", "subscription_type", "updated_at", START_AT, END_AT
    )
    return sorted((tuple(r) for r in rows.collect()), key=lambda r: (r[0], r[3]))


def test_tracked_change_starts_a_version_and_closes_the_previous(
    lake: LakeStorage, sail_spark: SparkSession
) -> None:
    runner = apply(lake, sail_spark, [change(1, 0)], [change(1, 60, sub="Premium")])
    assert versions(runner) == [
        (1, "Free", at(0), at(0), at(60)),
        (1, "Premium", at(60), at(60), None),
    ]


def test_untracked_change_updates_in_place(lake: LakeStorage, sail_spark: SparkSession) -> None:
    runner = apply(lake, sail_spark, [change(1, 0)], [change(1, 60)])
    assert versions(runner) == [(1, "Free", at(60), at(0), None)]


def test_late_change_lands_between_existing_versions(
    lake: LakeStorage, sail_spark: SparkSession
) -> None:
    runner = apply(
        lake,
        sail_spark,
        [change(1, 0), change(1, 120, sub="Family")],
        [change(1, 60, sub="Premium")],
    )
    assert versions(runner) == [
        (1, "Free", at(0), at(0), at(60)),
        (1, "Premium", at(60), at(60), at(120)),
        (1, "Family", at(120), at(120), None),
    ]


def test_delete_closes_the_current_version_and_a_reinsert_opens_one(
    lake: LakeStorage, sail_spark: SparkSession
) -> None:
    runner = apply(lake, sail_spark, [change(1, 0)], [change(1, 60, delete=True)], [change(1, 120)])
    assert versions(runner) == [
        (1, "Free", at(0), at(0), at(60)),
        (1, "Free", at(120), at(120), None),
    ]
    result = runner.apply_dimension(DIM_USER)
    assert result.current == 1 and set(result.problems.values()) == {0}


def test_reapplying_changes_nothing(lake: LakeStorage, sail_spark: SparkSession) -> None:
    batch = [change(1, 0), change(2, 5), change(1, 60, sub="Premium")]
    runner = apply(lake, sail_spark, batch)
    before = versions(runner)
    again = runner.apply_dimension(DIM_USER)  # same silver version: nothing to read
    assert (again.changed_keys, again.versions_read) == (0, 0)
    Silver(lake, sail_spark).deliver(batch)  # the same versions re-delivered: a new silver version
    redelivered = runner.apply_dimension(DIM_USER)
    assert redelivered.changed_keys == 2 and not redelivered.full
    assert versions(runner) == before


def test_only_changed_keys_are_recomputed(lake: LakeStorage, sail_spark: SparkSession) -> None:
    runner = apply(lake, sail_spark, [change(u, u) for u in range(1, 40)])
    silver = Silver(lake, sail_spark)
    silver.delivered = {change(u, u) for u in range(1, 40)}
    silver.deliver([change(7, 3 * 24 * 60, sub="Premium")])  # a partition of its own
    result = runner.apply_dimension(DIM_USER)
    assert (result.changed_keys, result.versions_read, result.full) == (1, 2, False)
    assert len(versions(runner)) == 40


def test_versions_in_silver_as_versions_of_the_table(sail_spark: SparkSession) -> None:
    """Silver's bookkeeping columns stay out of gold, as DLT's except_column_list leaves them."""
    gold = scd2(DIM_USER, silver_frame(sail_spark, [change(1, 0)]))
    assert not {CHANGE_OP, CHANGE_SEQ, VERSION_AT, CHANGE_DATE} & set(gold.columns)
    assert gold.columns[-2:] == [START_AT, END_AT]


def test_invariant_checks_find_each_kind_of_broken_table(sail_spark: SparkSession) -> None:
    ddl = "user_id int, __START_AT timestamp_ntz, __END_AT timestamp_ntz"
    good = [(1, at(0), at(60)), (1, at(60), None), (2, at(0), at(5)), (2, at(5), at(5))]
    broken = [
        (3, at(0), None), (3, at(0), None),  # one version twice, and two current rows
        (4, at(0), at(90)), (4, at(60), None),  # the first version outlives the second's start
        (5, at(30), at(10)),  # ends before it starts (and 5 is live: no current row either)
    ]  # fmt: skip
    gold_rows = sail_spark.createDataFrame(good + broken, ddl)
    live = sail_spark.createDataFrame([(1,), (3,), (4,), (5,)], "user_id int")
    assert gold.scd2_problems(DIM_USER, gold_rows, live) == {
        "one_row_per_version": 1,
        "one_current_version_per_live_key": 2,
        "no_overlapping_versions": 3,
    }
    assert set(
        gold.scd2_problems(DIM_USER, sail_spark.createDataFrame(good, ddl), live.limit(1)).values()
    ) == {0}
