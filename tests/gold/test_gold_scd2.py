"""SCD2 dimensions: the gold runner against an independent reference model.

The model is the AUTO CDC contract of README: Gold written as a plain loop over each key's
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

from resources import gold_runner
from resources.delta_writes import replace_partitions
from resources.gold_runner import GoldRunner
from resources.lake import LakeStorage
from spotify_assets.catalog.gold_spec import END_AT, START_AT
from spotify_assets.catalog.tables import (
    CATALOG,
    CHANGE_DATE,
    CHANGE_OP,
    CHANGE_SEQ,
    VERSION_AT,
    Table,
)
from spotify_assets.gold import transform as gold
from spotify_assets.gold.transform import scd2
from tests.helpers.spark_requests import naming, record_requests

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
    seq: int | None  # the source's change sequence; None: an image of the current row
    # An image: the sequence point it was read at (every change record after it follows it).
    taken: int = 0
    # A change record's change time, its silver partition; None: its business time (`at`).
    changed: datetime | None = None

    @property
    def change_date(self) -> date:
        return (self.changed or self.at).date()

    def silver_row(self) -> tuple[Any, ...]:
        op = "D" if self.delete else "S" if self.seq is None else "U"
        # A delete's image still carries the row's last values and an older updated_at.
        updated = self.at - timedelta(minutes=1) if self.delete else self.at
        return (self.user_id, self.name, "SE", self.subscription, date(2025, 1, 1), None,
                updated, op, self.seq, self.at, self.change_date)  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_key_bucket() -> Iterator[None]:
    """All keys in one window partition: each key's neighbours are other keys, as at scale."""
    with mock.patch("spotify_assets.silver.transform.KEY_BUCKETS", 1):
        yield


def effective_times(changes: list[Change]) -> dict[Change, datetime]:
    """When each change of one key takes effect: its business time, but never before a change
    that precedes it in the source's sequence (a restore keeps its old updated_at): a change
    record, or an image read before it (a backdated update after the first load)."""
    records = [c for c in changes if c.seq is not None]
    images = [c for c in changes if c.seq is None]

    def at_the_earliest(record: Change) -> datetime:
        return max([record.at, *(i.at for i in images if i.taken < record.seq)])  # type: ignore[operator]

    def effective(c: Change) -> datetime:
        return max(at_the_earliest(o) for o in records if o.seq <= c.seq)  # type: ignore[operator]

    return {c: c.at if c.seq is None else effective(c) for c in changes}


def reference(changes: list[Change]) -> list[tuple[Any, ...]]:
    """AUTO CDC SCD2, one change at a time per key, in gold's order: business time,
    then change sequence (an image, which has none, first), then an upsert before a delete.
    Versions that last no time are then invisible."""
    rows: list[dict[str, Any]] = []
    for user in sorted({c.user_id for c in changes}):
        mine = [c for c in changes if c.user_id == user]
        when = effective_times(mine)
        in_order = sorted(mine, key=lambda c: (when[c], c.seq is not None, c.seq or 0, c.delete))
        open_version: dict[str, Any] | None = None
        for c in in_order:
            if c.delete:
                if open_version is not None:
                    open_version[END_AT] = when[c]
                open_version = None
                continue
            if open_version and (open_version["user_name"], open_version["subscription_type"]) == (
                c.name,
                c.subscription,
            ):
                open_version["updated_at"] = c.at  # untracked: in place
                continue
            if open_version is not None:
                open_version[END_AT] = when[c]
            open_version = {
                "user_id": user,
                "user_name": c.name,
                "country": "SE",
                "subscription_type": c.subscription,
                "start_date": date(2025, 1, 1),
                "end_date": None,
                "updated_at": c.at,
                START_AT: when[c],
                END_AT: None,
            }
            rows.append(open_version)
    visible = [r for r in rows if r[END_AT] != r[START_AT]]
    return sorted(tuple(r[c] for c in GOLD_COLUMNS) for r in visible)


EVENTS = ("upsert", "delete", "reinsert", "restore", "unbumped", "rekey", "image", "tie",
          "backdate")  # fmt: skip


@st.composite
def change_sets(draw: st.DrawFn) -> list[Change]:
    """Changes of a few keys as a source makes them, over four days so silver has several
    partitions: updates, deletes, a delete and a re-insert in one tick, restores with their
    original time, updates keeping their time, key changes (a delete and an insert), images of
    the current row, an upsert and a delete with equal time and sequence, and updates backdated
    before the day the first load's images (rows no change record describes) were updated.
    Times often repeat and values are few, so unchanged tracked columns happen often."""
    changes: list[Change] = []
    minutes, seq = 0, 0
    live: dict[int, tuple[str, str, datetime]] = {}  # values and updated_at of each live key
    upserted: dict[int, list[datetime]] = {}
    images: set[tuple[int, datetime]] = set()

    def emit(
        user: int,
        at: datetime,
        delete: bool,
        values: tuple[str, str],
        s: int | None,
        changed: datetime | None = None,
    ) -> None:
        changes.append(Change(user, at, delete, *values, seq=s, taken=seq, changed=changed))
        if delete:
            live.pop(user, None)
        elif s is not None:
            live[user] = (*values, at)
            upserted.setdefault(user, []).append(at)

    # The first load: images of rows created before capture began, a day or two before T0.
    for user in draw(st.sets(st.integers(1, 3), max_size=3)):
        values = (draw(st.sampled_from(["ANA", "BO"])), draw(st.sampled_from(["Free", "Premium"])))
        created = T0 - timedelta(days=draw(st.integers(1, 2)), minutes=draw(st.integers(1, 600)))
        emit(user, created, False, values, None)
        live[user] = (*values, created)
        images.add((user, created))

    for event in draw(st.lists(st.sampled_from(EVENTS), min_size=1, max_size=14)):
        minutes += draw(st.sampled_from([0, 0, 10, 70, 600, 1500]))
        now, seq = T0 + timedelta(minutes=minutes), seq + 1
        user = draw(st.integers(1, 3))
        values = (draw(st.sampled_from(["ANA", "BO"])), draw(st.sampled_from(["Free", "Premium"])))
        old = live.get(user)
        if event == "delete" and old:
            emit(user, now, True, old[:2], seq)
        elif event == "reinsert" and old:
            emit(user, now, True, old[:2], seq)
            seq += 1
            emit(user, now, False, values, seq)
        elif event == "restore" and not old and user in upserted:
            emit(user, draw(st.sampled_from(upserted[user])), False, values, seq)
        elif event == "unbumped" and old:
            emit(user, old[2], False, values, seq)
        elif event == "rekey" and old and user + 3 not in live:
            emit(user, now, True, old[:2], seq)
            seq += 1
            emit(user + 3, now, False, old[:2], seq)
        elif event == "image" and old and (user, old[2]) not in images:
            images.add((user, old[2]))
            emit(user, old[2], False, old[:2], None)
        elif event == "tie" and old:
            emit(user, now, False, values, seq)
            emit(user, now, True, values, seq)
        elif event == "backdate" and old:
            emit(user, T0 - timedelta(days=3), False, values, seq, changed=now)
        else:
            emit(user, now, False, values, seq)
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
        for day in sorted({c.change_date for c in batch}):
            rows = [c for c in self.delivered if c.change_date == day]
            frame = silver_frame(self.spark, rows)
            replace_partitions(self.lake, frame, self.path, CHANGE_DATE, (day, day))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=change_sets())
def test_scd2_equals_the_reference_model(sail_spark: SparkSession, changes: list[Change]) -> None:
    shuffled = sorted(changes, key=lambda c: -(c.seq or 0))  # arrival order must not matter
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


def change(
    user: int,
    minutes: int,
    name: str = "ANA",
    sub: str = "Free",
    delete: bool = False,
    seq: int | None = -1,
) -> Change:
    """A change at `minutes`; its sequence, unless given, follows its time."""
    return Change(user, at(minutes), delete, name, sub, seq=minutes if seq == -1 else seq)


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


def applied(tmp_path: Path, spark: SparkSession, *batches: list[Change]) -> list[tuple[Any, ...]]:
    """The versions after applying `batches` one after the other, which must equal those after
    applying all of them at once."""
    whole = apply(LakeStorage(url=str(tmp_path / "whole")), spark, [c for b in batches for c in b])
    one_by_one = apply(LakeStorage(url=str(tmp_path / "batches")), spark, *batches)
    assert versions(one_by_one) == versions(whole)
    return versions(whole)


def test_a_delete_and_a_reinsert_in_one_tick_follow_the_change_sequence(
    tmp_path: Path, sail_spark: SparkSession
) -> None:
    reinsert = [change(1, 60, delete=True, seq=61), change(1, 60, sub="Premium", seq=62)]
    assert applied(tmp_path, sail_spark, [change(1, 0)], reinsert) == [
        (1, "Free", at(0), at(0), at(60)),
        (1, "Premium", at(60), at(60), None),
    ]


def test_an_upsert_and_a_delete_with_equal_time_and_sequence_the_delete_wins(
    tmp_path: Path, sail_spark: SparkSession
) -> None:
    tie = [change(1, 60, sub="Premium", seq=60), change(1, 60, delete=True, seq=60)]
    assert applied(tmp_path, sail_spark, [change(1, 0)], tie) == [
        (1, "Free", at(0), at(0), at(60)),  # and no Premium version lasting no time
    ]


def test_a_restore_with_its_original_time_takes_effect_after_the_delete(
    tmp_path: Path, sail_spark: SparkSession
) -> None:
    restore = change(1, 0, seq=120)  # the row as it was, updated_at included
    assert applied(
        tmp_path, sail_spark, [change(1, 0)], [change(1, 60, delete=True)], [restore]
    ) == [
        (1, "Free", at(0), at(0), at(60)),
        (1, "Free", at(0), at(60), None),
    ]


def test_updates_keeping_their_time_follow_the_change_sequence(
    tmp_path: Path, sail_spark: SparkSession
) -> None:
    kept_time = [[change(1, 0, sub="Premium", seq=2)], [change(1, 0, sub="Family", seq=3)]]
    assert applied(tmp_path, sail_spark, [change(1, 0, seq=1)], *kept_time) == [
        (1, "Family", at(0), at(0), None),
    ]


def test_an_image_comes_before_the_change_records_of_its_time(
    tmp_path: Path, sail_spark: SparkSession
) -> None:
    """An image is read with, or after, the change records it reflects; a change record of the
    same time committed later still wins."""
    records = [change(1, 0, seq=1), change(1, 0, sub="Premium", seq=2)]
    image = change(1, 0, sub="Premium", seq=None)
    later = change(1, 0, sub="Family", seq=3)
    assert applied(tmp_path, sail_spark, records, [image, later]) == [
        (1, "Family", at(0), at(0), None),
    ]


def test_a_backdated_update_after_the_first_load_is_current(
    tmp_path: Path, sail_spark: SparkSession
) -> None:
    """The first load's image (no change record describes it) was read before every change
    record after it: one older by its business time still supersedes it, at the image's time."""
    loaded = change(1, 600, seq=None)
    backdated = Change(1, at(0), False, "ANA", "Premium", seq=1, changed=at(3 * 24 * 60))
    assert applied(tmp_path, sail_spark, [loaded], [backdated]) == [
        (1, "Premium", at(0), at(600), None),
    ]


def test_a_broken_result_is_never_written(
    lake: LakeStorage, sail_spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SCD2 invariants are checked before the commit: a table breaking them stays unwritten
    and the next apply retries the same changes."""
    runner = apply(lake, sail_spark, [change(1, 0)])
    before = (versions(runner), runner.applied_version(DIM_USER))

    def every_version_twice(table: Table, changes: DataFrame) -> DataFrame:
        return scd2(table, changes).unionByName(scd2(table, changes))

    monkeypatch.setattr(gold_runner, "scd2", every_version_twice)
    silver = Silver(lake, sail_spark)
    silver.delivered = {change(1, 0)}
    silver.deliver([change(1, 60, sub="Premium")])
    with pytest.raises(gold_runner.Scd2InvariantError, match=r"dim_user.*one_row_per_version"):
        runner.apply_dimension(DIM_USER)
    assert (versions(runner), runner.applied_version(DIM_USER)) == before


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


def test_changes_past_the_local_bound_are_applied_alike(
    tmp_path: Path, sail_spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An apply holds the changed keys' versions as a local relation up to `LOCAL_ROWS` (a first
    apply, silver's versions up to `FEW_ROWS`); past it, it reads them from silver in each query
    instead: the same table either way."""
    first = [change(u, u) for u in range(1, 6)]
    later = [change(2, 60, sub="Premium"), change(3, 70, delete=True), change(6, 80)]
    next_day = [change(4, 24 * 60, sub="Family")]  # a partition of its own: one key changed

    def applied_with(bound: int, name: str) -> tuple[list[tuple[Any, ...]], tuple[int, int]]:
        monkeypatch.setattr(gold_runner, "LOCAL_ROWS", bound)
        monkeypatch.setattr(gold_runner, "FEW_ROWS", bound)
        lake = LakeStorage(url=str(tmp_path / name))
        runner = apply(lake, sail_spark, first, later)
        silver = Silver(lake, sail_spark)
        silver.delivered = {*first, *later}
        silver.deliver(next_day)
        last = runner.apply_dimension(DIM_USER)
        return versions(runner), (last.changed_keys, last.versions_read)

    held = applied_with(gold_runner.LOCAL_ROWS, "held")
    assert held == applied_with(1, "read_again")
    assert held[1] == (1, 2)


def test_a_first_apply_reads_silver_once(
    lake: LakeStorage, sail_spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first apply reads every silver version (a file per day after a first load); checked,
    written and counted, they would be read again by each query: analysed once, read once."""
    silver = Silver(lake, sail_spark)
    silver.deliver([change(u, u * 24 * 60) for u in range(1, 6)])  # a partition each
    requests = record_requests(monkeypatch)
    result = GoldRunner(lake, sail_spark, CATALOG).apply_dimension(DIM_USER)
    assert result.full and result.rows == 5
    assert len(naming(requests, [silver.path])) == 2


def test_versions_in_silver_as_versions_of_the_table(sail_spark: SparkSession) -> None:
    """Silver's bookkeeping columns stay out of gold, as DLT's except_column_list leaves them."""
    gold = scd2(DIM_USER, silver_frame(sail_spark, [change(1, 0)]))
    assert not {CHANGE_OP, CHANGE_SEQ, VERSION_AT, CHANGE_DATE} & set(gold.columns)
    assert gold.columns[-2:] == [START_AT, END_AT]


def test_invariant_checks_find_each_kind_of_broken_table(sail_spark: SparkSession) -> None:
    ddl = "user_id int, __START_AT timestamp_ntz, __END_AT timestamp_ntz"
    good = [(1, at(0), at(60)), (1, at(60), None), (2, at(0), at(5))]
    broken = [
        (3, at(0), None), (3, at(0), None),  # one version twice, and two current rows
        (4, at(0), at(90)), (4, at(60), None),  # the first version outlives the second's start
        (5, at(30), at(10)),  # ends before it starts (and 5 is live: no current row either)
        (6, at(5), at(5)),  # lasts no time: never visible
    ]  # fmt: skip
    gold_rows = sail_spark.createDataFrame(good + broken, ddl)
    live = sail_spark.createDataFrame([(1,), (3,), (4,), (5,)], "user_id int")
    assert gold.scd2_problems(DIM_USER, gold_rows, live) == {
        "one_row_per_version": 1,
        "one_current_version_per_live_key": 2,
        "no_overlapping_versions": 4,
    }
    assert set(
        gold.scd2_problems(DIM_USER, sail_spark.createDataFrame(good, ddl), live.limit(1)).values()
    ) == {0}
