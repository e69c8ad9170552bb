"""The Dagster code location as tests check it: gold's part of the asset graph, and the workspace
loaded by `dagster` itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dagster import AssetKey, Definitions

from spotify_assets.catalog.gold_spec import PointInTimeFact, Scd2Dimension
from spotify_assets.catalog.tables import CATALOG
from spotify_assets.gold.transform import SCD2_INVARIANTS
from spotify_assets.orchestration.assets.gold import MEMBERS_ARRIVED
from tests.helpers.paths import REPO


def assert_gold_graph(defs: Definitions) -> None:
    """Dimensions unpartitioned with blocking SCD2 checks; fact and aggregates on the fact
    path's partitions, the fact after its lookups and the calendar (checking that their members
    arrived, and that the calendar holds its days); a check per expectation everywhere."""
    graph = defs.resolve_asset_graph()

    def checks_of(key: AssetKey) -> dict[str, bool]:
        return {k.name: graph.get_check_spec(k).blocking for k in graph.asset_check_keys
                if k.asset_key == key}  # fmt: skip

    fact = CATALOG.fact
    fact_partitions = graph.get(AssetKey(["silver", fact.lake_name])).partitions_def
    for table in CATALOG:
        node = graph.get(AssetKey(["gold", table.lake_name]))
        assert node.group_name == "gold"
        assert AssetKey(["silver", table.lake_name]) in node.parent_keys
        expectations = {r.name: False for r in table.gold.expectations}
        if isinstance(table.gold, Scd2Dimension):
            assert node.partitions_def is None
            assert checks_of(node.key) == expectations | dict.fromkeys(SCD2_INVARIANTS, True)
        elif isinstance(table.gold, PointInTimeFact):
            dates_checked = {"date_key_in_dim_date": False}
            assert checks_of(node.key) == expectations | {MEMBERS_ARRIVED: False} | dates_checked
        else:
            assert checks_of(node.key) == expectations
    node = graph.get(AssetKey(["gold", fact.lake_name]))
    assert node.partitions_def == fact_partitions
    assert node.parent_keys == {
        AssetKey(["silver", fact.lake_name]),
        *(AssetKey(["gold", CATALOG[lookup.dimension].lake_name]) for lookup in fact.gold.lookups),
        AssetKey(["gold", "dim_date"]),
    }
    for aggregate in CATALOG.aggregates:
        node = graph.get(AssetKey(["gold", aggregate.name]))
        assert node.parent_keys == {AssetKey(["gold", fact.lake_name])}
        assert node.partitions_def == fact_partitions
        assert checks_of(node.key) == {r.name: False for r in aggregate.expectations}


def validate_workspace(env: dict[str, str]) -> str:
    """`dagster definitions validate -w workspace.yaml` in `env`; its output, once it passed."""
    dagster = Path(sys.executable).with_name("dagster")
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr
