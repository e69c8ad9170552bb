"""Data Factory: the generated JSON (committed, T-SQL that parses, the copy contract's rules) and
the ADF resource at its SDK boundary (a fake HTTP transport playing back documented responses).

No factory exists here: the pipeline's expressions run on a small evaluator of the ADF
expression language below (eager `if`, like the real one is assumed to be, so both branches
must be safe), which renders the SQL each iteration would send.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.pipeline.transport import RequestsTransport
from dagster import DagsterExecutionInterruptedError, Definitions

from resources.adf import (
    ARM_ENDPOINT,
    AdfError,
    AdfRunError,
    DataFactoryResource,
    data_factory_resource,
)
from spotify_assets.bronze import adf_pipeline as adf
from spotify_assets.bronze.manifest import Manifest
from spotify_assets.bronze.windows import Window, midnight
from spotify_assets.catalog.tables import CATALOG, CaptureMode, Table
from spotify_assets.cli import main
from tests.helpers.fake_arm import (
    FACTORY,
    FACTORY_PATH,
    GROUP,
    RUN_ID,
    SUBSCRIPTION,
    FakeArm,
    client_for,
    copy_run,
)
from tests.helpers.paths import REPO
from tests.helpers.tsql import TSQL, parse_tsql

DOCUMENTS = adf.build()
PIPELINE = DOCUMENTS[f"pipeline/{adf.PIPELINE_NAME}.json"]["properties"]
FOR_EACH = PIPELINE["activities"][0]
ITERATION = {a["name"]: a for a in FOR_EACH["typeProperties"]["activities"]}
TOP = {a["name"]: a for a in PIPELINE["activities"]}
DEFAULTS = {name: p.get("defaultValue") for name, p in PIPELINE["parameters"].items()}
PARTITION_START = date(2026, 1, 1)
COPY_QUERY = ITERATION[adf.COPY]["typeProperties"]["source"]["sqlReaderQuery"]
# What a run passes: the defaults, and the partition start (it has none).
PARAMETERS = DEFAULTS | {"partition_start": adf.timestamp_text(midnight(PARTITION_START))}


# --- a small evaluator of the ADF expression language ---


def ts(value: str) -> datetime:
    """An ADF timestamp string as naive UTC (7 fractional digits and 'Z' allowed)."""
    assert isinstance(value, str), f"not a timestamp: {value!r}"
    moment = datetime.fromisoformat(value)
    return moment.replace(tzinfo=None)


def _format(value: str, fmt: str) -> str:
    assert fmt == adf.ADF_TIMESTAMP, f"format {fmt!r} not modelled"
    return ts(value).isoformat(timespec="milliseconds")


def _strings(*values: object) -> bool:
    return all(isinstance(v, str) for v in values)


def _checked(name: str, ok: Callable[..., bool], fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        assert ok(*args), f"{name}{args!r}: wrong argument types"
        return fn(*args)

    return call


_NUMBERS = (lambda a, b: all(isinstance(v, int) and not isinstance(v, bool) for v in (a, b)),)
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "replace": _checked("replace", _strings, lambda s, old, new: s.replace(old, new)),
    "concat": _checked("concat", _strings, lambda *parts: "".join(parts)),
    "coalesce": lambda *values: next((v for v in values if v is not None), None),
    "formatDateTime": _checked("formatDateTime", _strings, _format),
    "ticks": lambda value: (ts(value) - datetime(1, 1, 1)) // timedelta(microseconds=1) * 10,
    "less": _checked("less", *_NUMBERS, lambda a, b: a < b),
    "lessOrEquals": _checked("lessOrEquals", *_NUMBERS, lambda a, b: a <= b),
    "equals": lambda a, b: a == b,
    "and": _checked("and", lambda a, b: {type(a), type(b)} == {bool}, lambda a, b: a and b),
    "if": _checked("if", lambda c, a, b: isinstance(c, bool), lambda c, a, b: a if c else b),
    "empty": lambda value: value is None or len(value) == 0,
    "json": _checked("json", _strings, json.loads),
    "utcNow": lambda: "2026-03-04T05:06:07.1234567Z",
}

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+)|(?P<name>[A-Za-z_]\w*)|(?P<op>\?\.|[().,\[\]]))"
)


class Evaluator:
    """Evaluates pipeline values for one iteration: `item()`, `pipeline()`, `activity(name)`."""

    def __init__(self, item: dict | None, activities: dict[str, dict], parameters: dict) -> None:
        self.item = item
        self.activities = activities
        self.pipeline = {
            "parameters": parameters,
            "RunId": "adf-run-1",
            "Pipeline": adf.PIPELINE_NAME,
            "DataFactory": "factory",
        }

    def value(self, value: Any) -> Any:
        """A JSON value as ADF resolves it at run time."""
        if isinstance(value, dict) and value.get("type") == "Expression":
            return self.string(value["value"])
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return self.string(value) if isinstance(value, str) else value

    def string(self, text: str) -> Any:
        if text.startswith("@@"):
            return text[1:]
        if text.startswith("@") and not text.startswith("@{"):
            result, rest = self._parse(text[1:])
            assert not rest.strip(), f"trailing text {rest!r} in {text!r}"
            return result
        out = []
        while (start := text.find("@{")) >= 0:
            out.append(text[:start])
            result, text = self._parse(text[start + 2 :])
            assert text.startswith("}"), f"unclosed interpolation before {text!r}"
            out.append("" if result is None else str(result))
            text = text[1:]
        return "".join(out) + text

    def _parse(self, text: str) -> tuple[Any, str]:
        """One expression at the start of `text`; returns its value and the text after it."""
        self._text, self._pos = text, 0
        value = self._postfix()
        return value, text[self._pos :]

    def _peek(self) -> tuple[str, str]:
        match = _TOKEN.match(self._text, self._pos)
        if not match:
            return "end", ""
        kind = match.lastgroup
        assert kind
        return kind, match.group(kind)

    def _take(self) -> tuple[str, str]:
        kind, token = self._peek()
        assert kind != "end", f"unexpected end of {self._text!r}"
        self._pos = _TOKEN.match(self._text, self._pos).end()  # type: ignore[union-attr]
        return kind, token

    def _expect(self, token: str) -> None:
        assert self._take()[1] == token, f"expected {token!r} in {self._text!r}"

    def _postfix(self) -> Any:
        value = self._primary()
        while (op := self._peek()[1]) in (".", "?.", "["):
            self._take()
            if op == "[":
                key = self._postfix()
                self._expect("]")
            else:
                key = self._take()[1]
            if op == "?." and (value is None or key not in value):
                value = None
                continue
            assert isinstance(value, dict) and key in value, f"no property {key!r} in {value!r}"
            value = value[key]
        return value

    def _primary(self) -> Any:
        kind, token = self._take()
        if kind == "str":
            return token[1:-1].replace("''", "'")
        if kind == "num":
            return int(token)
        assert kind == "name", f"unexpected {token!r} in {self._text!r}"
        self._expect("(")
        args = []
        while self._peek()[1] != ")":
            args.append(self._postfix())
            if self._peek()[1] == ",":
                self._take()
        self._expect(")")
        if token == "item":
            assert self.item is not None, "item() outside a ForEach"
            return self.item
        if token == "pipeline":
            return self.pipeline
        if token == "activity":
            (name,) = args
            assert name in self.activities, f"activity {name!r} is not an ancestor here"
            return self.activities[name]
        assert token in FUNCTIONS, f"function {token!r} not modelled (a typo?)"
        return FUNCTIONS[token](*args)


def iteration(
    table: Table,
    low: str | None = None,
    high: str | None = None,
    state: str | None = None,
    captured: str = "2026-03-04T05:06:07.089Z",
    rows: int = 7,
    item: dict | None = None,
) -> Evaluator:
    """One ForEach iteration with the outputs its activities would have produced; `item`: the
    table's entry of a run's parameters (default: a standalone run's, with `low` and `high`)."""
    return Evaluator(
        item or {"name": table.name, "low": low, "high": high, "query": None},
        {
            adf.STATE_EXISTS: {"output": {"exists": state is not None}},
            adf.LOOKUP_STATE: {"output": {"firstRow": {"table": table.name, "watermark": state}}},
            adf.CAPTURE_HIGH: {"output": {"firstRow": {"high": captured}}},
            adf.COPY: {"output": {"rowsRead": rows, "rowsCopied": rows}},
        },
        PARAMETERS,
    )


def walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v)


def strings(value: Any) -> list[str]:
    return [v for v in walk(value) if isinstance(v, str)]


def objects(value: Any) -> list[dict]:
    return [v for v in walk(value) if isinstance(v, dict)]


# --- the generated documents ---


def test_committed_json_equals_a_fresh_build() -> None:
    committed = {
        p.relative_to(REPO / "adf").as_posix(): p.read_text(encoding="utf-8")
        for p in (REPO / "adf").rglob("*.json")
    }
    assert committed == {path: adf.dumps(doc) for path, doc in DOCUMENTS.items()}, (
        "adf/ is stale: run `spotify-lakehouse adf build`"
    )


def test_cli_builds_the_documents_and_removes_stale_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "retired.json").write_text("{}")
    assert main(["adf", "build", "--out", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out) == sorted(DOCUMENTS)
    assert not (tmp_path / "pipeline" / "retired.json").exists()
    for path, document in DOCUMENTS.items():
        assert json.loads((tmp_path / path).read_text()) == document


def test_query_templates_are_the_dialects_queries() -> None:
    for table in CATALOG:
        template = DEFAULTS["catalog"][table.name]["query"]
        # ADF would read a leading '@' or '@{' in a parameter value as an expression.
        assert not template.startswith("@") and "@{" not in template
        if table.mode is CaptureMode.SNAPSHOT:
            assert template == TSQL.extract_query(table, None)
            continue
        window = Window(datetime(2026, 3, 1), datetime(2026, 3, 2))
        rendered = template.replace(adf.LOW_TOKEN, "2026-03-01T00:00:00.000").replace(
            adf.HIGH_TOKEN, "2026-03-02T00:00:00.000"
        )
        assert rendered == TSQL.extract_query(table, window)
    assert "cdc.fn_cdc_get_all_changes_dbo_DimUser" in DEFAULTS["catalog"]["DimUser"]["query"]


def test_a_run_copies_with_the_query_it_passes_for_a_table() -> None:
    """Dagster passes the query reading the source's new columns; the copy runs it."""
    table = CATALOG["DimUser"]
    item = {
        "name": table.name,
        "low": "2026-03-01T00:00:00.000",
        "high": "2026-03-02T00:00:00.000",
        "query": adf.query_template(table, carried=("rating",)),
    }
    sent = iteration(table, item=item).value(COPY_QUERY)
    window = Window(datetime(2026, 3, 1), datetime(2026, 3, 2))
    assert sent == TSQL.extract_query(table, window, ("rating",))
    union = parse_tsql(sent)[-1]
    assert "rating" in [e.alias_or_name for e in union.left.expressions]  # type: ignore[attr-defined]
    assert "rating" in [e.alias_or_name for e in union.right.expressions]  # type: ignore[attr-defined]


SCENARIOS = {
    # Dagster passes the partition's window; the source's clock is past it.
    "dagster window": (
        {"low": "2026-03-01T00:00:00.000", "high": "2026-03-02T00:00:00.000"},
        Window(datetime(2026, 3, 1), datetime(2026, 3, 2)),
    ),
    # Dagster asks past the clock: the end is capped at `high`, as LocalCopyRunner.plan caps it.
    "capped at high": (
        {"low": "2026-03-03T00:00:00.000", "high": "2026-03-05T00:00:00.000"},
        Window(datetime(2026, 3, 3), datetime(2026, 3, 4, 5, 6, 7, 89000)),
    ),
    # A standalone trigger: from the state's watermark to `high`.
    "standalone": (
        {"state": "2026-03-02T10:00:00.000"},
        Window(datetime(2026, 3, 2, 10), datetime(2026, 3, 4, 5, 6, 7, 89000)),
    ),
    # The first standalone run: everything up to `high`.
    "first run": ({}, Window(midnight(PARTITION_START), datetime(2026, 3, 4, 5, 6, 7, 89000))),
    # The clock has not passed the watermark: an empty window, never an inverted one.
    "clock behind": (
        {"state": "2026-03-05T00:00:00.000"},
        Window(datetime(2026, 3, 5), datetime(2026, 3, 5)),
    ),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("table", list(CATALOG), ids=lambda t: t.name)
def test_every_rendered_sql_string_parses_as_tsql_and_is_the_dialects_query(
    table: Table, scenario: str
) -> None:
    given, window = SCENARIOS[scenario]
    run = iteration(table, **given)
    copy_query = run.value(ITERATION[adf.COPY]["typeProperties"]["source"]["sqlReaderQuery"])
    high_query = run.value(
        ITERATION[adf.CAPTURE_HIGH]["typeProperties"]["source"]["sqlReaderQuery"]
    )
    for sql in (copy_query, high_query):
        parse_tsql(sql)
    snapshot = table.mode is CaptureMode.SNAPSHOT
    assert copy_query == TSQL.extract_query(table, None if snapshot else window)
    assert high_query == adf.high_query("300")
    assert TSQL.source_now() in high_query


def test_every_sql_string_in_the_pipeline_is_one_the_tests_render() -> None:
    copy = ITERATION[adf.COPY]["typeProperties"]["source"]["sqlReaderQuery"]["value"]
    high = ITERATION[adf.CAPTURE_HIGH]["typeProperties"]["source"]["sqlReaderQuery"]["value"]
    readers = [n["sqlReaderQuery"]["value"] for n in objects(PIPELINE) if "sqlReaderQuery" in n]
    assert sorted(readers) == sorted([copy, high])
    templates = {entry["query"] for entry in DEFAULTS["catalog"].values()}
    assert {s for s in strings(PIPELINE) if re.search(r"\bSELECT\b", s)} <= {high, *templates}


def test_audit_columns_and_user_properties_carry_the_copied_window() -> None:
    table = CATALOG["FactStream"]
    run = iteration(table, low="2026-03-01T00:00:00.000", high="2026-03-02T00:00:00.000")
    copy = ITERATION[adf.COPY]
    audit = {
        c["name"]: run.value(c["value"])
        for c in copy["typeProperties"]["source"]["additionalColumns"]
    }
    assert audit == {
        "_extracted_at": "2026-03-04T05:06:07.1234567Z",
        "_window_start": "2026-03-01T00:00:00.000",
        "_window_end": "2026-03-02T00:00:00.000",
        "_run_id": "adf-run-1",
    }
    properties = {p["name"]: run.value(p["value"]) for p in copy["userProperties"]}
    assert properties == {
        "table": "FactStream",
        "window_start": "2026-03-01T00:00:00.000",
        "window_end": "2026-03-02T00:00:00.000",
        "file": "bronze/FactStream/_adf/landing/adf-run-1.parquet",
    }
    sink = run.value(copy["outputs"][0]["parameters"])
    assert sink == {
        "folder": "{{lake_root}}bronze/FactStream/_adf/landing",
        "file": "adf-run-1.parquet",
    }
    snapshot = iteration(CATALOG["DimDate"])
    assert snapshot.value(copy["userProperties"][1]["value"]) == ""


STATE_CASES = [
    # (state watermark, requested window, expected as the bronze manifest would advance it)
    (None, ("1900-01-01", "2026-03-02")),
    (None, ("2026-01-01", "2026-01-03")),
    (None, ("2026-03-05", "2026-03-06")),
    ("2026-03-02", ("2026-03-02", "2026-03-03")),
    ("2026-03-02", ("2026-03-01", "2026-03-03")),
    ("2026-03-02", ("2026-03-03", "2026-03-04")),
    ("2026-03-05", ("2026-03-01", "2026-03-02")),
    ("2026-03-05", ("2026-03-01", "2026-03-07")),
    ("2026-03-02", ("2026-03-02", "2026-03-10")),  # capped at high: 2026-03-04 05:06:07.089
]


@pytest.mark.parametrize(("state", "requested"), STATE_CASES)
def test_state_advances_exactly_like_the_bronze_manifest_watermark(
    state: str | None, requested: tuple[str, str]
) -> None:
    table = CATALOG["FactStream"]
    low, high = (f"{day}T00:00:00.000" for day in requested)
    watermark = f"{state}T00:00:00.000" if state else None
    run = iteration(table, low=low, high=high, state=watermark)
    written = run.value(ITERATION[adf.WRITE_STATE]["typeProperties"]["body"])
    copied = Window(ts(written["window_start"]), ts(written["window_end"]))
    manifest = Manifest(table.name, version=1, watermark=ts(watermark) if watermark else None)
    expected = manifest.with_extraction(copied, [], midnight(PARTITION_START)).watermark
    assert (ts(written["watermark"]) if written["watermark"] else None) == expected
    assert written["rows"] == 7 and written["file"].endswith("/_adf/landing/adf-run-1.parquet")


def test_snapshot_state_keeps_no_watermark_and_empty_copies_record_no_file() -> None:
    run = iteration(CATALOG["DimDate"], state=None, rows=0)
    written = run.value(ITERATION[adf.WRITE_STATE]["typeProperties"]["body"])
    assert written["watermark"] is None and written["window_start"] == ""
    assert written["file"] is None
    assert run.value(ITERATION[adf.DROP_EMPTY]["typeProperties"]["expression"]) is True
    busy = iteration(CATALOG["DimDate"], rows=3)
    assert busy.value(ITERATION[adf.DROP_EMPTY]["typeProperties"]["expression"]) is False


def test_state_lives_beside_the_bronze_manifests_and_is_created_on_first_use() -> None:
    run = iteration(CATALOG["DimUser"])
    url = run.value(ITERATION[adf.WRITE_STATE]["typeProperties"]["url"])
    assert url == (
        "https://{{lake_account}}.blob.core.windows.net/{{lake_filesystem}}/"
        "{{lake_root}}bronze/DimUser/_adf/state.json"
    )
    init = ITERATION[adf.INIT_STATE]["typeProperties"]
    assert run.value(init["expression"]) is False  # no state yet: create it
    (create,) = init["ifFalseActivities"]
    assert create["typeProperties"]["headers"]["If-None-Match"] == "*"
    assert run.value(create["typeProperties"]["body"])["watermark"] is None
    lookup = ITERATION[adf.LOOKUP_STATE]["typeProperties"]["dataset"]
    assert run.value(lookup["parameters"]) == {
        "folder": "{{lake_root}}bronze/DimUser/_adf",
        "file": "state.json",
    }


def ancestors(activities: dict[str, dict], name: str) -> set[str]:
    found: set[str] = set()
    for dependency in activities[name].get("dependsOn", []):
        found |= {dependency["activity"], *ancestors(activities, dependency["activity"])}
    return found


def test_high_is_captured_before_the_copy_and_state_written_only_after_it_succeeded() -> None:
    assert adf.CAPTURE_HIGH in ancestors(ITERATION, adf.COPY)
    assert adf.LOOKUP_STATE in ancestors(ITERATION, adf.COPY)
    assert adf.COPY in ancestors(ITERATION, adf.WRITE_STATE)
    # Succeeded on every edge from the copy to the state write: a failed copy writes nothing.
    chain = [adf.WRITE_STATE, adf.DROP_EMPTY, adf.COPY]
    for later, earlier in itertools.pairwise(chain):
        assert ITERATION[later]["dependsOn"] == [
            {"activity": earlier, "dependencyConditions": ["Succeeded"]}
        ]


def test_iterations_share_no_variable_and_reference_only_their_own_ancestors() -> None:
    assert "variables" not in PIPELINE
    kinds = {a.get("type") for a in objects(PIPELINE)}
    assert not kinds & {"SetVariable", "AppendVariable"}
    assert not any("variables(" in s for s in strings(PIPELINE))
    assert FOR_EACH["typeProperties"]["isSequential"] is False
    for name, activity in ITERATION.items():
        for text in strings(activity):
            for referenced in re.findall(r"activity\('(\w+)'\)", text):
                assert referenced in ancestors(ITERATION, name), (name, referenced)
    # ForEach inside a ForEach is not allowed by ADF: only If conditions nest here.
    nested = objects(FOR_EACH["typeProperties"]["activities"])
    assert "ForEach" not in {a.get("type") for a in nested}


def test_failure_posts_the_alert_json_and_still_fails_the_run() -> None:
    failed = [{"activity": adf.FOR_EACH, "dependencyConditions": ["Failed"]}]
    post, fail = TOP["PostAlert"], TOP["FailRun"]
    assert TOP["GetAlertWebhook"]["dependsOn"] == failed and fail["dependsOn"] == failed
    assert post["type"] == "WebActivity" and post["typeProperties"]["method"] == "POST"
    error = "Operation on target CopyTable failed: Invalid object name 'dbo.FactStream'."
    run = Evaluator(
        None,
        {
            adf.FOR_EACH: {"error": {"message": error}},
            "GetAlertWebhook": {"output": {"value": "https://alerts.example/hook"}},
        },
        PARAMETERS,
    )
    assert run.value(post["typeProperties"]["body"]) == {
        "pipeline_name": adf.PIPELINE_NAME,
        "run_id": "adf-run-1",
        "error": error,
    }
    assert run.value(post["typeProperties"]["url"]) == "https://alerts.example/hook"
    assert post["policy"]["secureInput"] and TOP["GetAlertWebhook"]["policy"]["secureOutput"]
    assert fail["type"] == "Fail" and run.value(fail["typeProperties"]["message"]) == error


SECRET_KEYS = {
    "password",
    "connectionString",
    "accountKey",
    "sasUri",
    "sasToken",
    "servicePrincipalKey",
}
SECRET_TEXT = re.compile(
    r"(?i)(password|pwd|accountkey|sharedaccesssignature|sig=|secret=|client_secret)\s*[=:]"
    r"|[A-Za-z0-9+/]{40,}={0,2}"
)


def test_no_secrets_only_key_vault_references_and_managed_identity() -> None:
    for path, document in DOCUMENTS.items():
        for text in strings(document):
            assert not SECRET_TEXT.search(text), f"{path}: secret-looking {text[:60]!r}"
        for node in objects(document):
            for key in SECRET_KEYS & set(node):
                assert node[key]["type"] == "AzureKeyVaultSecret", f"{path}: {key}"
            if "authentication" in node:
                assert node["authentication"]["type"] == "MSI", path
    lake = DOCUMENTS["linkedService/Lake.json"]["properties"]["typeProperties"]
    assert set(lake) == {"url"}  # no key, no service principal: the factory's identity


def test_placeholders_are_filled_at_deploy_and_bad_urls_refused() -> None:
    settings = adf.DeploySettings.of(
        "https://spotify-kv.vault.azure.net", "abfss://lake@spotifydata.dfs.core.windows.net/prod"
    )
    assert settings == adf.DeploySettings(
        "https://spotify-kv.vault.azure.net/", "spotifydata", "lake", "prod/"
    )
    rendered = [adf.render(d, settings) for d in DOCUMENTS.values()]
    assert not [s for d in rendered for s in strings(d) if "{{" in s]
    assert adf.render(DOCUMENTS["linkedService/Lake.json"], settings)["properties"][
        "typeProperties"
    ] == {"url": "https://spotifydata.dfs.core.windows.net/"}
    root = adf.DeploySettings.of("https://kv.vault.azure.net/", "abfss://c@a.dfs.core.windows.net")
    assert root.lake_root == ""
    for vault, lake in [
        ("http://kv.vault.azure.net", "abfss://c@a.dfs.core.windows.net/x"),
        ("https://kv.vault.azure.net", "/local/lake"),
        ("https://kv.vault.azure.net", "abfss://c@a.dfs.core.windows.net/it's"),
    ]:
        with pytest.raises(ValueError):
            adf.DeploySettings.of(vault, lake)


# --- the resource at the SDK boundary ---


def test_deploy_puts_raw_json_with_the_copy_type_intact() -> None:
    arm = FakeArm(["Succeeded"], [])
    settings = adf.DeploySettings.of(
        "https://kv.vault.azure.net/", "abfss://lake@acct.dfs.core.windows.net/"
    )
    deployed = client_for(arm).deploy(DOCUMENTS, settings)
    assert deployed == list(DOCUMENTS)
    assert [(s.method, s.path) for s in arm.sent] == [
        ("PUT", "/linkedservices/KeyVault"),
        ("PUT", "/linkedservices/Lake"),
        ("PUT", "/linkedservices/SourceSql"),
        ("PUT", "/datasets/SourceQuery"),
        ("PUT", "/datasets/LakeParquet"),
        ("PUT", "/datasets/LakeJson"),
        ("PUT", f"/pipelines/{adf.PIPELINE_NAME}"),
    ]
    assert all(s.query == {"api-version": ["2018-06-01"]} for s in arm.sent)
    assert all(s.headers["Authorization"] == "Bearer fake-token" for s in arm.sent)
    pipeline = arm.sent[-1].body["properties"]
    copy = next(a for a in objects(pipeline) if a.get("name") == adf.COPY)
    assert copy["type"] == "Copy"  # the typed SDK model would have sent "Execution"
    assert (
        pipeline
        == adf.render(DOCUMENTS[f"pipeline/{adf.PIPELINE_NAME}.json"], settings)["properties"]
    )


def test_a_partition_run_sends_its_windows_polls_with_backoff_and_reports_rows() -> None:
    arm = FakeArm(
        ["Queued", "InProgress", "InProgress", "Succeeded"],
        [
            copy_run("FactStream", "Failed", 0, ("", ""), "transient"),  # a retried attempt
            copy_run(
                "FactStream",
                "Succeeded",
                1200,
                ("2026-03-01T00:00:00.000", "2026-03-02T00:00:00.000"),
            ),
            copy_run("DimDate", "Succeeded", 365, ("", "")),
        ],
    )
    sleeps: list[float] = []
    windows = {"FactStream": Window(datetime(2026, 3, 1), datetime(2026, 3, 2)), "DimDate": None}
    log: list[str] = []
    template = adf.query_template(CATALOG["FactStream"], carried=("rating",))
    run = client_for(arm, sleeps.append).ingest(
        windows, "dagster-run-42", PARTITION_START, log.append, {"FactStream": template}
    )

    create = arm.sent[0]
    assert (create.method, create.path) == ("POST", f"/pipelines/{adf.PIPELINE_NAME}/createRun")
    assert create.body == {
        "tables": [
            {
                "name": "FactStream",
                "low": "2026-03-01T00:00:00.000",
                "high": "2026-03-02T00:00:00.000",
                "query": template,
            },
            {"name": "DimDate", "low": None, "high": None, "query": None},
        ],
        "run_id": "dagster-run-42",
        "partition_start": "2026-01-01T00:00:00.000",
    }
    polls = [s for s in arm.sent if s.method == "GET"]
    assert len(polls) == 4 and sleeps == [5.0, 10.0, 20.0]
    query = arm.sent[-1]
    assert query.path == f"/pipelineruns/{RUN_ID}/queryActivityruns"
    assert query.body["filters"] == [
        {"operand": "ActivityName", "operator": "Equals", "values": [adf.COPY]}
    ]
    assert query.body["lastUpdatedAfter"] < "2026-03-04T05:06:07" < "2026-03-04T05:09:13"
    assert query.body["lastUpdatedBefore"] > "2026-03-04T05:09:12"
    assert run.status == "Succeeded" and set(run.tables) == {"FactStream", "DimDate"}
    stream = run.tables["FactStream"]
    assert (stream.rows_read, stream.rows_copied) == (1200, 1200)
    assert stream.window == Window(datetime(2026, 3, 1), datetime(2026, 3, 2))
    assert stream.file == f"bronze/FactStream/_adf/landing/{RUN_ID}.parquet"
    assert run.tables["DimDate"].window is None and run.tables["DimDate"].rows_copied == 365
    assert log[-1] == f"ADF run {RUN_ID}: Succeeded"


def test_backoff_is_capped() -> None:
    arm = FakeArm(["InProgress"] * 8 + ["Succeeded"], [])
    sleeps: list[float] = []
    client_for(arm, sleeps.append).wait(RUN_ID)
    assert sleeps == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0, 60.0, 60.0]


def test_a_failed_run_surfaces_adfs_message_verbatim() -> None:
    message = (
        "Operation on target IngestTables failed: Activity failed because an inner activity "
        "failed; Inner activity name: CopyTable, Error: Failure happened on 'Source' side. "
        "ErrorCode=SqlOperationFailed,'Invalid object name "
        "'cdc.fn_cdc_get_all_changes_dbo_DimUser'.'"
    )
    inner = "Failure happened on 'Source' side. ErrorCode=SqlOperationFailed"
    arm = FakeArm(
        ["InProgress", "Failed"], [copy_run("DimUser", "Failed", 0, ("", ""), inner)], message
    )
    with pytest.raises(AdfRunError) as failure:
        client_for(arm).ingest(
            {"DimUser": Window(datetime(2026, 3, 1), datetime(2026, 3, 2))}, "r", PARTITION_START
        )
    assert str(failure.value) == message
    assert failure.value.metadata["failed_copies"].value == [f"{adf.COPY} (DimUser): {inner}"]
    assert not [s for s in arm.sent if s.path.endswith("/cancel")]


def test_management_api_errors_surface_verbatim() -> None:
    arm = FakeArm(["Succeeded"], [])
    arm.errors[("POST", f"/pipelines/{adf.PIPELINE_NAME}/createRun")] = [
        (
            400,
            {"error": {"code": "BadRequest", "message": "The parameter 'tables' is not defined."}},
        )
    ]
    with pytest.raises(AdfError, match=r"BadRequest: The parameter 'tables' is not defined\.$"):
        client_for(arm).create_run({"tables": []})


def test_create_run_is_sent_once_on_a_server_error_while_polls_are_retried() -> None:
    arm = FakeArm(["Succeeded"], [])
    busy = (503, {"error": {"code": "ServiceUnavailable", "message": "Try again later."}})
    arm.errors[("POST", f"/pipelines/{adf.PIPELINE_NAME}/createRun")] = [busy]
    arm.errors[("GET", f"/pipelineruns/{RUN_ID}")] = [busy]
    client = client_for(arm)
    with pytest.raises(AdfError, match=r"ServiceUnavailable: Try again later\.$"):
        client.create_run({"tables": []})
    assert len(arm.sent) == 1  # a retry could have started a second run
    assert client.wait(RUN_ID)["status"] == "Succeeded"
    assert [s.method for s in arm.sent] == ["POST", "GET", "GET"]


@pytest.mark.parametrize("interruption", [DagsterExecutionInterruptedError, KeyboardInterrupt])
def test_terminating_the_dagster_run_cancels_the_adf_run(interruption: type[BaseException]) -> None:
    arm = FakeArm(["Queued", "InProgress"], [])
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:  # Dagster delivers a termination as an exception in the op
            raise interruption()

    client = client_for(arm, sleep)
    with pytest.raises(interruption):
        client.ingest({"FactStream": None}, "dagster-run-7", PARTITION_START)
    cancel = arm.sent[-1]
    assert (cancel.method, cancel.path) == ("POST", f"/pipelineruns/{RUN_ID}/cancel")
    assert cancel.query == {"api-version": ["2018-06-01"]}


def test_a_run_that_outlives_the_timeout_is_cancelled() -> None:
    arm = FakeArm(["InProgress"], [])
    client = client_for(arm, timeout_seconds=30)
    with pytest.raises(AdfRunError, match="did not finish within 30 s"):
        client.wait(RUN_ID)
    assert arm.sent[-1].path == f"/pipelineruns/{RUN_ID}/cancel"


def test_the_resource_loads_without_azure_or_network(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "SPOTIFY_ADF_SUBSCRIPTION_ID",
        "SPOTIFY_ADF_RESOURCE_GROUP",
        "SPOTIFY_ADF_FACTORY",
    ):
        monkeypatch.delenv(name, raising=False)
    Definitions.validate_loadable(Definitions(resources={"adf": data_factory_resource()}))
    arm = FakeArm(["Succeeded"], [])
    session = requests.Session()
    session.mount(ARM_ENDPOINT, arm)
    resource = DataFactoryResource(
        subscription_id=SUBSCRIPTION, resource_group=GROUP, factory_name=FACTORY
    )
    client = resource.client(transport=RequestsTransport(session=session))  # DefaultAzureCredential
    assert client.factory == FACTORY_PATH and arm.sent == []
