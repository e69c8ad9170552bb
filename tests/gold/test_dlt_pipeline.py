"""The Databricks gold pipeline source (`dlt/gold_pipeline.py`) declares the catalog's gold specs.

Registration only: the source runs inside a recording graph registry, with open-source
`pyspark.pipelines` (the SCD type 1 / no-expectations fallback) and with a fake module exposing
the Databricks signatures. No query function runs here (that needs Delta and a pipeline update);
one helper of the fact's query does, on a plain DataFrame.
"""

from __future__ import annotations

import ast
import logging
import runpy
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyspark
import pytest
from pyspark.pipelines.flow import AutoCdcFlow, Flow
from pyspark.pipelines.graph_element_registry import (
    GraphElementRegistry,
    graph_element_registration_context,
)
from pyspark.pipelines.output import MaterializedView, Output, StreamingTable, TemporaryView
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.connect.functions import col, expr

from spotify_assets.catalog.gold_spec import (
    END_AT,
    START_AT,
    Calendar,
    PointInTimeFact,
    Scd2Dimension,
)
from spotify_assets.catalog.rules import Rule
from spotify_assets.catalog.tables import CATALOG, CHANGE_SEQ, EFFECTIVE_AT, Table
from spotify_assets.gold.transform import SILVER_VERSION_COLUMNS
from tests.helpers.paths import REPO

PIPELINE = REPO / "dlt" / "gold_pipeline.py"
LOGGER = "spotify.gold_pipeline"

DIMENSIONS = [t for t in CATALOG if isinstance(t.gold, Scd2Dimension)]
CALENDARS = [t for t in CATALOG if isinstance(t.gold, Calendar)]
FACT = CATALOG.fact
FACT_SPEC = FACT.gold
assert isinstance(FACT_SPEC, PointInTimeFact)


def _expectations(rules: tuple[Rule, ...]) -> dict[str, str]:
    return {rule.name: rule.predicate for rule in rules}


def _scd2(table: Table) -> Scd2Dimension:
    assert isinstance(table.gold, Scd2Dimension)
    return table.gold


def test_no_catalog_name_or_predicate_written_by_hand() -> None:
    """Tables, columns, rules and predicates come from the catalog, never from literals."""
    tree = ast.parse(PIPELINE.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    literals = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    }
    specs = [t.gold for t in CATALOG] + list(CATALOG.aggregates)
    rules = [r for spec in specs for r in getattr(spec, "expectations", ())]
    catalog_text = {t.name for t in CATALOG} | {t.lake_name for t in CATALOG}
    catalog_text |= {
        c for t in CATALOG for c in (*t.column_names, *(d.name for d in t.silver.derived))
    }
    catalog_text |= {a.name for a in CATALOG.aggregates} | {FACT_SPEC.date_column}
    catalog_text |= {r.name for r in rules} | {r.predicate for r in rules}
    catalog_text |= {s.delete_when for s in specs if isinstance(s, Scd2Dimension)}
    catalog_text |= set(SILVER_VERSION_COLUMNS)
    assert literals.isdisjoint(catalog_text), literals & catalog_text


# --- open-source pyspark.pipelines ---


class RecordingRegistry(GraphElementRegistry):
    def __init__(self) -> None:
        self.outputs: dict[str, Output] = {}
        self.flows: dict[str, Flow] = {}
        self.cdc_flows: dict[str, AutoCdcFlow] = {}

    def register_output(self, output: Output) -> None:
        assert output.name not in self.outputs, f"{output.name} registered twice"
        self.outputs[output.name] = output

    def register_flow(self, flow: Flow) -> None:
        assert flow.name not in self.flows, f"flow {flow.name} registered twice"
        self.flows[flow.name] = flow

    def register_auto_cdc_flow(self, flow: AutoCdcFlow) -> None:
        assert flow.target not in self.cdc_flows, f"two AUTO CDC flows into {flow.target}"
        self.cdc_flows[flow.target] = flow

    def register_sql(self, sql_text: str, file_path: Path) -> None:
        raise AssertionError(f"the gold pipeline registers no SQL (got {file_path})")


@pytest.fixture(scope="module")
def open_source() -> tuple[RecordingRegistry, list[str]]:
    """The graph the source registers with open-source pyspark, and the warnings it logs."""
    registry = RecordingRegistry()
    warnings: list[str] = []
    handler = _Collect(warnings)
    logging.getLogger(LOGGER).addHandler(handler)
    try:
        with graph_element_registration_context(registry):
            runpy.run_path(str(PIPELINE))
    finally:
        logging.getLogger(LOGGER).removeHandler(handler)
    return registry, warnings


class _Collect(logging.Handler):
    def __init__(self, messages: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_one_output_per_gold_table_of_the_catalog(
    open_source: tuple[RecordingRegistry, list[str]],
) -> None:
    registry, _ = open_source
    gold = {t.lake_name for t in CATALOG} | {a.name for a in CATALOG.aggregates}
    published = {n for n, o in registry.outputs.items() if not isinstance(o, TemporaryView)}
    assert published == gold
    views = {n for n, o in registry.outputs.items() if isinstance(o, TemporaryView)}
    assert views == {f"silver_{t.lake_name}" for t in [*DIMENSIONS, FACT]}


def test_kinds_of_outputs(open_source: tuple[RecordingRegistry, list[str]]) -> None:
    registry, _ = open_source
    outputs = registry.outputs
    for table in DIMENSIONS:
        assert type(outputs[table.lake_name]) is StreamingTable
    for name in [*(t.lake_name for t in CALENDARS), FACT.lake_name]:
        assert type(outputs[name]) is MaterializedView
    for spec in CATALOG.aggregates:
        assert type(outputs[spec.name]) is MaterializedView


def test_one_auto_cdc_flow_per_scd2_dimension_following_its_spec(
    open_source: tuple[RecordingRegistry, list[str]],
) -> None:
    registry, _ = open_source
    assert set(registry.cdc_flows) == {t.lake_name for t in DIMENSIONS}
    for table in DIMENSIONS:
        spec, flow = _scd2(table), registry.cdc_flows[table.lake_name]
        assert isinstance(registry.outputs[flow.source], TemporaryView)
        assert callable(registry.flows[flow.source].func)  # the change feed's query
        assert [str(k) for k in flow.keys] == [str(col(k)) for k in table.key]
        assert str(flow.sequence_by) == str(expr(spec.sequence_by))
        assert str(flow.apply_as_deletes) == str(expr(spec.delete_when))
        assert flow.except_column_list is not None
        assert [str(c) for c in flow.except_column_list] == [
            str(col(c)) for c in SILVER_VERSION_COLUMNS
        ]
        assert flow.column_list is None


def test_open_source_fallback_is_scd1_and_says_so(
    open_source: tuple[RecordingRegistry, list[str]],
) -> None:
    registry, warnings = open_source
    assert {f.stored_as_scd_type for f in registry.cdc_flows.values()} == {1}
    assert any("SCD type 1" in w for w in warnings)
    assert any("expect_all_or_drop" in w for w in warnings)


def test_fact_and_aggregates_partitioned_by_the_date_column_with_queries(
    open_source: tuple[RecordingRegistry, list[str]],
) -> None:
    registry, _ = open_source
    for name in [FACT.lake_name, *(a.name for a in CATALOG.aggregates)]:
        output = registry.outputs[name]
        assert isinstance(output, MaterializedView)
        assert list(output.partition_cols or []) == [FACT_SPEC.date_column]
        assert registry.flows[name].target == name
        assert callable(registry.flows[name].func)
    for table in CALENDARS:
        assert callable(registry.flows[table.lake_name].func)


# --- the Databricks API (signatures as documented), faked ---


@dataclass
class Dataset:
    kind: str  # "temporary_view" | "materialized_view" | "streaming_table"
    options: dict[str, Any]
    expectations: dict[str, str] = field(default_factory=dict)


class FakeDatabricksPipelines:
    """Records calls made with the Databricks `pyspark.pipelines` signatures."""

    __name__ = "pyspark.pipelines"  # the source names the API in its fallback warnings

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {}  # the source's globals once it has run
        self.datasets: dict[str, Dataset] = {}
        self.cdc_flows: dict[str, dict[str, Any]] = {}
        self._expected: dict[int, dict[str, str]] = {}  # by id() of a query not yet declared

    def expect_all_or_drop(
        self, expectations: dict[str, str]
    ) -> Callable[[Callable[[], DataFrame]], Callable[[], DataFrame]]:
        def decorate(query: Callable[[], DataFrame]) -> Callable[[], DataFrame]:
            self._expected[id(query)] = dict(expectations)
            return query

        return decorate

    def temporary_view(self, **options: Any) -> Callable[[Callable[[], DataFrame]], None]:
        return self._dataset("temporary_view", options)

    def materialized_view(self, **options: Any) -> Callable[[Callable[[], DataFrame]], None]:
        return self._dataset("materialized_view", options)

    def _dataset(
        self, kind: str, options: dict[str, Any]
    ) -> Callable[[Callable[[], DataFrame]], None]:
        def register(query: Callable[[], DataFrame]) -> None:
            expectations = self._expected.pop(id(query), {})
            self._add(options["name"], Dataset(kind, options, expectations))

        return register

    def create_streaming_table(self, name: str, **options: Any) -> None:
        self._add(name, Dataset("streaming_table", options))

    def _add(self, name: str, dataset: Dataset) -> None:
        assert name not in self.datasets, f"{name} declared twice"
        self.datasets[name] = dataset

    def create_auto_cdc_flow(
        self,
        target: str,
        source: str,
        keys: list[Any],
        sequence_by: Any,
        ignore_null_updates: bool = False,
        apply_as_deletes: Any = None,
        apply_as_truncates: Any = None,
        column_list: list[Any] | None = None,
        except_column_list: list[Any] | None = None,
        stored_as_scd_type: int | str = 1,
        track_history_column_list: list[Any] | None = None,
        track_history_except_column_list: list[Any] | None = None,
        name: str | None = None,
        once: bool = False,
    ) -> None:
        assert target not in self.cdc_flows, f"two AUTO CDC flows into {target}"
        self.cdc_flows[target] = {
            "source": source,
            "keys": keys,
            "sequence_by": sequence_by,
            "apply_as_deletes": apply_as_deletes,
            "except_column_list": except_column_list,
            "stored_as_scd_type": stored_as_scd_type,
            "track_history_column_list": track_history_column_list,
        }


@pytest.fixture
def databricks(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> FakeDatabricksPipelines:
    """The source run against the fake, as `from pyspark import pipelines` sees it on Databricks."""
    fake = FakeDatabricksPipelines()
    monkeypatch.setitem(sys.modules, "pyspark.pipelines", fake)
    monkeypatch.setattr(pyspark, "pipelines", fake, raising=False)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        fake.namespace = runpy.run_path(str(PIPELINE))
    return fake


def test_databricks_needs_no_fallback(
    databricks: FakeDatabricksPipelines, caplog: pytest.LogCaptureFixture
) -> None:
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == []


def test_databricks_dimensions_are_scd2_with_tracked_columns(
    databricks: FakeDatabricksPipelines,
) -> None:
    assert set(databricks.cdc_flows) == {t.lake_name for t in DIMENSIONS}
    for table in DIMENSIONS:
        spec, flow = _scd2(table), databricks.cdc_flows[table.lake_name]
        assert flow == {
            "source": f"silver_{table.lake_name}",
            "keys": list(table.key),
            "sequence_by": spec.sequence_by,
            "apply_as_deletes": spec.delete_when,
            "except_column_list": list(SILVER_VERSION_COLUMNS),
            "stored_as_scd_type": 2,
            "track_history_column_list": list(spec.tracked),
        }
        assert databricks.datasets[table.lake_name].kind == "streaming_table"
        # Effective time, then the source's change sequence: one value, as AUTO CDC takes it.
        assert (spec.effective_time, spec.change_sequence) == (EFFECTIVE_AT, CHANGE_SEQ)
        assert flow["sequence_by"] == f"struct({EFFECTIVE_AT}, {CHANGE_SEQ})"


def test_the_fact_reads_dimension_versions_by_effective_time(
    databricks: FakeDatabricksPipelines, sail_spark: SparkSession
) -> None:
    """AUTO CDC stores `__START_AT`/`__END_AT` as the struct it sequences by; the fact's lookups
    read them as effective time, without versions superseded within their instant, as the
    local runner stores them."""
    t0, t5 = datetime(2026, 3, 1), datetime(2026, 3, 1, 5)
    sequence = f"struct<{EFFECTIVE_AT}: timestamp_ntz, {CHANGE_SEQ}: bigint>"
    versions = sail_spark.createDataFrame(
        [
            (1, "Free", (t0, 1), (t5, 2)),
            (1, "Premium", (t5, 2), (t5, 3)),  # superseded by an update that kept updated_at
            (1, "Family", (t5, 3), None),
        ],
        f"user_id int, subscription_type string, {START_AT} {sequence}, {END_AT} {sequence}",
    )
    by_time = databricks.namespace["_by_effective_time"](CATALOG, "DimUser", versions)
    assert sorted(tuple(r) for r in by_time.collect()) == [
        (1, "Family", t5, None),
        (1, "Free", t0, t5),
    ]


def test_databricks_expectations_come_from_the_specs(
    databricks: FakeDatabricksPipelines,
) -> None:
    datasets = databricks.datasets
    for table in DIMENSIONS:
        view = datasets[f"silver_{table.lake_name}"]
        assert view.kind == "temporary_view"
        assert view.expectations == _expectations(_scd2(table).expectations)
    for table in CALENDARS:
        assert isinstance(table.gold, Calendar)
        assert datasets[table.lake_name].expectations == _expectations(table.gold.expectations)
    silver_fact = datasets[f"silver_{FACT.lake_name}"]
    assert silver_fact.kind == "temporary_view"
    assert silver_fact.expectations == _expectations(FACT_SPEC.expectations)
    for spec in CATALOG.aggregates:
        dataset = datasets[spec.name]
        assert dataset.kind == "materialized_view"
        assert dataset.expectations == _expectations(spec.expectations)
        assert dataset.options["partition_cols"] == [FACT_SPEC.date_column]
