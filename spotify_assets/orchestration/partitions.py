"""Partitions shared along the fact path: daily, UTC, over the change time."""

from datetime import UTC, date
from functools import cache

from dagster import AssetExecutionContext, DailyPartitionsDefinition

from spotify_assets.bronze.windows import DAY, Window


@cache
def daily_partitions(start: date) -> DailyPartitionsDefinition:
    # end_offset=1: today's partition exists and is loaded as it fills (the open partition).
    return DailyPartitionsDefinition(
        start_date=start.isoformat(), timezone="UTC", end_offset=1, fmt="%Y-%m-%d"
    )


# Run tags that make one run cover a partition range (needs BackfillPolicy.single_run()).
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"


def partition_range_tags(first: date, last: date) -> dict[str, str]:
    return {PARTITION_RANGE_START_TAG: first.isoformat(), PARTITION_RANGE_END_TAG: last.isoformat()}


def partition_window(context: AssetExecutionContext) -> Window:
    """The run's partition range (one partition or a single-run range) as a naive-UTC window."""
    span = context.partition_time_window
    return Window(
        span.start.astimezone(UTC).replace(tzinfo=None),
        span.end.astimezone(UTC).replace(tzinfo=None),
    )


def partition_days(context: AssetExecutionContext) -> tuple[date, date]:
    """The run's partition range as first and last day (inclusive)."""
    window = partition_window(context)
    return window.start.date(), (window.end - DAY).date()
