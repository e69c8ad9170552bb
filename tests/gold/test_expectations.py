"""Gold expectations (README: Gold): rows failing one are dropped and counted per rule, except
under a rule the catalog says no row can fail by construction (a count of a group's rows is
positive): it is applied, costs no query to count, and no aggregate row can fail it."""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from spotify_assets.catalog.rules import Rule
from spotify_assets.catalog.tables import CATALOG
from spotify_assets.gold.transform import aggregate, expect
from spotify_assets.silver.transform import FAILED_RULES, flag_failures

# The fact's columns the aggregates group and measure, as gold's fact types them.
FACT_DDL = (
    "stream_date date, user_id int, track_id int, artist_id int, country string, "
    "device_type string, subscription_type string, listen_duration int"
)
GUARANTEED = [(a, r) for a in CATALOG.aggregates for r in a.expectations if r.guaranteed_by]

small = st.one_of(st.none(), st.integers(min_value=1, max_value=3))
text = st.one_of(st.none(), st.sampled_from(["US", "mobile", "Free", ""]))
facts = st.lists(
    st.tuples(
        st.one_of(st.none(), st.integers(0, 2).map(lambda d: date(2026, 1, 1) + timedelta(d))),
        small,
        small,
        small,
        text,
        text,
        text,
        st.one_of(st.none(), st.integers(min_value=-5, max_value=5)),
    ),
    max_size=12,
)

# Few examples, always the same ones: each runs Sail queries on a shared session.
EXAMPLES = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def test_the_catalog_declares_guaranteed_rules_on_aggregates() -> None:
    # The property below would pass vacuously if no rule were declared guaranteed.
    assert {r.name for _, r in GUARANTEED} == {"streams_positive"}


@pytest.mark.parametrize(("spec", "rule"), GUARANTEED, ids=[f"{a.name}" for a, _ in GUARANTEED])
@EXAMPLES
@given(rows=facts)
def test_no_aggregate_row_fails_a_guaranteed_rule(sail_spark: SparkSession, spec, rule, rows):
    grouped = aggregate(spec, sail_spark.createDataFrame(rows, FACT_DDL))
    assert grouped.where(~F.coalesce(F.expr(rule.predicate), F.lit(False))).count() == 0


@EXAMPLES
@given(rows=facts)
def test_the_rows_kept_are_those_failing_no_rule(sail_spark: SparkSession, rows) -> None:
    """The fact's rules, on rows whose predicates are true, false or NULL: the rows kept are
    exactly those the failures' count finds failing none (a NULL predicate fails)."""
    rules = CATALOG.fact.gold.expectations  # type: ignore[union-attr]
    frame = sail_spark.createDataFrame(rows, FACT_DDL)
    passing = flag_failures(rules, frame).where(F.col(FAILED_RULES) == "").drop(FAILED_RULES)
    assert Counter(map(tuple, expect(rules, frame).kept.collect())) == Counter(
        map(tuple, passing.collect())
    )


def test_a_guaranteed_rule_is_applied_but_not_counted(sail_spark: SparkSession) -> None:
    positive = Rule("positive", "n > 0", guaranteed_by="a test's claim")
    rows = sail_spark.createDataFrame([(1,), (0,)], "n int")
    expected = expect((positive,), rows)
    assert expected.failures is None  # no query counts it
    assert [r.n for r in expected.kept.collect()] == [1]  # still applied, as DLT does


def test_a_rule_that_can_fail_is_counted_beside_a_guaranteed_one(sail_spark) -> None:
    positive = Rule("positive", "n > 0", guaranteed_by="a test's claim")
    even = Rule("even", "n % 2 = 0")
    rows = sail_spark.createDataFrame([(1,), (2,), (3,)], "n int")
    expected = expect((positive, even), rows)
    assert expected.failures is not None
    assert expected.failures.collect()[0].asDict() == {"even": 2}
    assert [r.n for r in expected.kept.collect()] == [2]
