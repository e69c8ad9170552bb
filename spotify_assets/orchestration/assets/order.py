"""The order of a run's steps: first what gold's fact waits for.

A run executes its steps one at a time (`in_process_executor`), each after its upstream and,
among those ready, the highest priority first. New streams are in gold once the fact is built,
so the fact's own bronze and silver and the dimensions it looks up or references (the
calendar) come first; the other dimensions and the aggregates follow.
"""

from spotify_assets.catalog.tables import Catalog, Table

PRIORITY_TAG = "dagster/priority"  # read by Dagster's executors
FACT_FIRST = {PRIORITY_TAG: "1"}


def step_tags(catalog: Catalog, table: Table) -> dict[str, str]:
    """The op tags of a bronze, silver or gold asset built from `table`."""
    return FACT_FIRST if table in catalog.fact_inputs() else {}
