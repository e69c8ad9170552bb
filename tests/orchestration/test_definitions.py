"""The Dagster code location: the asset graph, the source observation, and `dagster` loading it."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from pathlib import Path

from dagster import AssetKey, DagsterEventType, DagsterInstance
from hypothesis import given, settings
from hypothesis import strategies as st

from resources.source_db import SourceDatabase
from spotify_assets.catalog.gold_spec import Scd2Dimension
from spotify_assets.catalog.tables import (
    AUDIT_COLUMNS,
    CATALOG,
    CHANGE_OP,
    CHANGE_SEQ,
    VERSION_AT,
    configured_catalog,
)
from spotify_assets.consistency.reconcile import Layer
from spotify_assets.orchestration.assets.source import source_key
from spotify_assets.orchestration.definitions import OBSERVE_SOURCE_JOB, build_definitions
from spotify_assets.orchestration.ingest import PlannedRun
from spotify_assets.orchestration.resources import source_database
from spotify_assets.orchestration.settings import Settings
from tests.helpers.code_location import assert_gold_graph, validate_workspace
from tests.helpers.paths import REPO
from tests.helpers.source import initialise


def test_asset_graph_snapshot(tmp_path: Path) -> None:
    environ = {"SPOTIFY_HOME": str(tmp_path), "SPOTIFY_PARTITION_START": "2024-02-29"}
    defs = build_definitions(Settings.from_env(environ))
    graph = defs.resolve_asset_graph()
    assert sorted(k.to_user_string() for k in graph.get_all_asset_keys()) == [
        "bronze/DimArtist",
        "bronze/DimDate",
        "bronze/DimTrack",
        "bronze/DimUser",
        "bronze/FactStream",
        "gold/agg_daily_artist",
        "gold/agg_daily_country_device",
        "gold/agg_daily_track",
        "gold/agg_daily_user",
        "gold/dim_artist",
        "gold/dim_date",
        "gold/dim_track",
        "gold/dim_user",
        "gold/fact_stream",
        "silver/dim_artist",
        "silver/dim_date",
        "silver/dim_track",
        "silver/dim_user",
        "silver/fact_stream",
        "source/DimArtist",
        "source/DimDate",
        "source/DimTrack",
        "source/DimUser",
        "source/FactStream",
    ]
    for table in CATALOG:
        node = graph.get(AssetKey(["bronze", table.name]))
        assert node.parent_keys == {AssetKey(["source", table.name])}
        assert node.group_name == "bronze"
        if table.name == "DimDate":
            assert node.partitions_def is None
        else:
            assert node.partitions_def.start.date() == date(2024, 2, 29)
            assert node.backfill_policy.max_partitions_per_run is None  # single run
        silver = graph.get(AssetKey(["silver", table.lake_name]))
        assert silver.parent_keys == {node.key}
        assert silver.partitions_def == node.partitions_def
        checks = {k.name: graph.get_check_spec(k) for k in graph.asset_check_keys
                  if k.asset_key == silver.key}  # fmt: skip
        assert set(checks) == {r.name for r in table.silver.rules}
        # Quarantine is the answer to every rule: the rows that pass go on to gold.
        assert not any(c.blocking for c in checks.values())
        # A fresh demo shows red checks: each says its data is dirty on purpose.
        assert all("on purpose" in (c.description or "") for c in checks.values())
    assert_gold_graph(defs)
    for table in CATALOG:
        spec = graph.get(AssetKey(["source", table.name]))
        columns = spec.metadata["dagster/column_schema"].columns
        assert [c.name for c in columns] == list(table.column_names)
        assert spec.metadata["capture_mode"] == table.mode.value
        assert spec.group_name == "source"


def test_every_asset_describes_each_of_its_columns_and_each_audit_column_alike(
    tmp_path: Path,
) -> None:
    defs = build_definitions(Settings.from_env({"SPOTIFY_HOME": str(tmp_path)}))
    graph = defs.resolve_asset_graph()
    schemas = {
        key.to_user_string(): graph.get(key).metadata["dagster/column_schema"].columns
        for key in graph.get_all_asset_keys()
    }
    audit_texts: dict[str, set[str]] = {}
    for key, columns in schemas.items():
        assert columns, key
        for column in columns:
            assert column.description, f"{key}: {column.name} has no description"
            if column.name in AUDIT_COLUMNS:
                audit_texts.setdefault(column.name, set()).add(column.description)
    assert set(audit_texts) == set(AUDIT_COLUMNS)
    assert all(len(texts) == 1 for texts in audit_texts.values()), audit_texts
    calendar = {c.name for c in schemas[f"gold/{CATALOG['DimDate'].lake_name}"]}
    assert not {CHANGE_OP, CHANGE_SEQ, VERSION_AT} & calendar


def test_observation_reports_row_counts_and_a_version(
    sqlite_source: SourceDatabase, tmp_path: Path
) -> None:
    initialise(sqlite_source)
    defs = build_definitions(Settings.from_env({"SPOTIFY_HOME": str(tmp_path)}))
    job = defs.resolve_job_def(OBSERVE_SOURCE_JOB)
    result = job.execute_in_process(resources={"source_db": sqlite_source})
    observations = {
        e.asset_key.path[-1]: e.event_specific_data.asset_observation
        for e in result.all_events
        if e.event_type is DagsterEventType.ASSET_OBSERVATION
    }
    assert set(observations) == {t.name for t in CATALOG}
    with sqlite_source.session() as session:
        for table in CATALOG:
            observation = observations[table.name]
            expected = session.scalar(session.sql.count(table.name))
            assert observation.metadata["rows"].value == expected
            assert observation.tags["dagster/data_version"]


def test_loading_the_code_location_warns_of_no_beta_api(tmp_path: Path) -> None:
    """`dg dev` loads it: Beta APIs the project relies on knowingly are not user news."""
    env = {**os.environ, "SPOTIFY_HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path)}
    env.pop("SPOTIFY_SOURCE_ODBC", None)
    result = subprocess.run(
        [sys.executable, "-W", "default", "-c", "import spotify_assets.orchestration.definitions"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert "BetaWarning" not in result.stderr


def test_dagster_cli_validates_the_workspace(tmp_path: Path) -> None:
    env = {**os.environ, "SPOTIFY_HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path)}
    env.pop("SPOTIFY_SOURCE_ODBC", None)
    validate_workspace(env)


def test_a_run_observes_the_source_tables_it_copies(loaded_lakehouse: Settings) -> None:
    """The lineage starts with live numbers: the initial load recorded each source table's row
    count and change-feed position, as the observation job does."""
    with DagsterInstance.get() as instance, source_database(loaded_lakehouse).session() as session:
        loads = {r.run_id for r in instance.get_runs() if r.tags.get("spotify/run")}
        for table in CATALOG:
            (record,) = instance.fetch_observations(source_key(table), limit=1).records
            assert record.run_id in loads, table.name
            observed = record.asset_observation
            stats = session.table_stats(table)
            # Values as the observation job records them (an empty change feed: no position).
            assert {n: observed.metadata[n].value for n in stats} == {
                n: "" if v is None else v for n, v in stats.items()
            }, table.name
            assert observed.tags["dagster/data_version"]


@settings(max_examples=25, deadline=None)
@given(
    tables=st.sets(st.sampled_from([t.name for t in CATALOG]), min_size=1),
    start=st.sampled_from(Layer),
    from_watermark=st.booleans(),
)
def test_a_planned_run_knows_its_keys_and_ops_without_building_its_assets(
    tables: set[str], start: Layer, from_watermark: bool
) -> None:
    """Sensors request runs by key and op config, computed from the catalog: they must name
    exactly the assets the run executes."""
    catalog = configured_catalog("", date(2026, 3, 1))
    run = PlannedRun(tuple(sorted(tables)), (date(2026, 3, 1), date(2026, 3, 2)), from_watermark,
                     start=start)  # fmt: skip
    assets = run.assets(catalog)
    # A run that copies observes exactly the source tables it copies, first.
    observed = [source_key(catalog[n]) for n in sorted(tables)] if start is Layer.BRONZE else []
    assert run.asset_keys(catalog) == observed + [key for a in assets for key in a.keys]
    configured = run.run_config(catalog)["ops"]
    assert set(configured) <= {a.op.name for a in assets}
    extracted = len(tables) if start is Layer.BRONZE else 0
    rebuilt = [n for n in tables if isinstance(catalog[n].gold, Scd2Dimension)]
    # An incremental run's silver rebuilds only the days its bronze changed.
    partitioned = [n for n in tables if catalog[n].change_time_column]
    behind_only = len(partitioned) if from_watermark and start <= Layer.SILVER else 0
    assert len(configured) == extracted + behind_only + (len(rebuilt) if start is Layer.GOLD else 0)
