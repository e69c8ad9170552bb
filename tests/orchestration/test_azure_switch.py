"""`SPOTIFY_ENV=azure` selects the Azure resources, loads with placeholder values and no network,
and keeps the asset graph of the embedded default; bronze copies through the same Data Factory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from resources.adf import DataFactoryResource
from resources.azure_copy import AzureCopyRunner
from resources.dagster_resources import LakeWriter
from resources.databricks_engines import DatabricksSilverRunner, DltPipelineRunner
from resources.engines import LocalGold, LocalSilver
from spotify_assets.orchestration.definitions import build_definitions
from spotify_assets.orchestration.run_resources import build_resources
from spotify_assets.orchestration.settings import Environment, Settings
from tests.helpers.code_location import assert_gold_graph, validate_workspace

# Placeholders only: every host is this machine, nothing is reachable, nothing is secret.
AZURE = {
    "SPOTIFY_ENV": "azure",
    "SPOTIFY_SOURCE_ODBC": "Driver={ODBC Driver 18 for SQL Server};Server=tcp:127.0.0.1,1433;"
    "Database=spotify;Uid=placeholder;Pwd=placeholder;Encrypt=yes",
    "SPOTIFY_LAKE_URL": "abfss://lake@placeholder.dfs.core.windows.net/spotify",
    "SPOTIFY_ADF_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000",
    "SPOTIFY_ADF_RESOURCE_GROUP": "placeholder",
    "SPOTIFY_ADF_FACTORY": "placeholder",
    "SPOTIFY_ADF_KEY_VAULT_URL": "https://127.0.0.1/",
    "DATABRICKS_HOST": "https://127.0.0.1",
    "DATABRICKS_TOKEN": "placeholder",
    "SPOTIFY_DATABRICKS_FILES": "/Workspace/placeholder/.bundle/spotify-lakehouse/dev/files",
    "SPOTIFY_DLT_PIPELINE_ID": "00000000-0000-0000-0000-000000000000",
}
PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def azure_settings(tmp_path: Path, **overrides: str) -> Settings:
    return Settings.from_env({"SPOTIFY_HOME": str(tmp_path), **AZURE, **overrides})


def test_the_azure_environment_selects_the_azure_resources(tmp_path: Path) -> None:
    resources = build_resources(azure_settings(tmp_path))
    assert {name: type(r) for name, r in resources.items()} == {
        "source_db": type(resources["source_db"]),
        "copy_runner": AzureCopyRunner,
        "data_factory": DataFactoryResource,
        "silver_engine": DatabricksSilverRunner,
        "gold_engine": DltPipelineRunner,
        "lake_writer": LakeWriter,
    }
    silver = resources["silver_engine"]
    assert isinstance(silver, DatabricksSilverRunner)
    assert silver.lake.url == AZURE["SPOTIFY_LAKE_URL"]
    assert silver.cluster_id == ""  # a new job cluster per run unless one is named
    named = build_resources(
        azure_settings(tmp_path, SPOTIFY_DATABRICKS_SILVER_CLUSTER_ID="0301-123456-abcdefgh")
    )
    assert named["silver_engine"].cluster_id == "0301-123456-abcdefgh"  # type: ignore[attr-defined]
    local_settings = Settings.from_env({"SPOTIFY_HOME": str(tmp_path)})
    local = build_resources(local_settings)
    assert (type(local["silver_engine"]), type(local["gold_engine"])) == (LocalSilver, LocalGold)
    # The idle `run`'s decision knows where gold is from the settings, without the engines.
    for settings, engines in ((azure_settings(tmp_path), resources), (local_settings, local)):
        assert settings.gold_on_lake == engines["gold_engine"].tables_on_lake  # type: ignore[attr-defined]


def test_both_environments_have_the_same_asset_graph(tmp_path: Path) -> None:
    azure = build_definitions(azure_settings(tmp_path))
    local = build_definitions(Settings.from_env({"SPOTIFY_HOME": str(tmp_path)}))
    assert (
        azure.resolve_asset_graph().get_all_asset_keys()
        == local.resolve_asset_graph().get_all_asset_keys()
    )
    assert_gold_graph(azure)


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ({"SPOTIFY_SOURCE_ODBC": ""}, "SPOTIFY_ENV=azure needs SPOTIFY_SOURCE_ODBC"),
        ({"SPOTIFY_LAKE_URL": ""}, "SPOTIFY_ENV=azure needs SPOTIFY_LAKE_URL=abfss://"),
        ({"SPOTIFY_LAKE_URL": "/data/lake"}, "got '/data/lake'"),
    ],
)
def test_the_azure_environment_names_what_it_lacks(
    tmp_path: Path, missing: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        azure_settings(tmp_path, **missing)
    assert Settings.from_env({"SPOTIFY_HOME": str(tmp_path)}).env is Environment.LOCAL


def test_loading_the_azure_definitions_touches_no_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from databricks.sdk import WorkspaceClient

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a workspace client was created while loading definitions")

    monkeypatch.setattr(WorkspaceClient, "__init__", refuse)
    defs = build_definitions(azure_settings(tmp_path))
    defs.resolve_asset_graph()
    defs.resolve_all_job_defs()


def test_bronze_on_azure_copies_with_the_data_factory_resource(tmp_path: Path) -> None:
    resources = build_resources(azure_settings(tmp_path))
    runner = resources["copy_runner"]
    assert isinstance(runner, AzureCopyRunner)
    # The factory bronze runs is the one `data_factory` deploys (tests/bronze/test_adf_bronze.py:
    # the copy and the commit of its landed file).
    assert runner.data_factory == resources["data_factory"]


def test_dagster_validates_the_azure_workspace_without_network(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in PROXIES and not k.startswith("SPOTIFY_")}
    env.update(AZURE)
    env.update({"SPOTIFY_HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path)})
    # Anything that tried to connect would find only this machine's closed ports.
    env.update({"NO_PROXY": "*", "no_proxy": "*"})
    output = validate_workspace(env)
    assert "Validation successful" in output
