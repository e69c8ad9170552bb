"""The lake on ADLS Gen2 (`abfss://`), against Azurite: adlfs for files, delta-rs and Sail for
Delta, credentials from the environment only.

The pipeline runs in a subprocess, `spotify-lakehouse run`, as a user runs it: Sail's server reads
its Azure settings from the environment when it starts, once per process, and the test process
already runs a Sail without them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from azure.core.credentials import AccessToken
from dagster import AssetKey, DagsterInstance

from resources.bronze_store import BronzeStore
from resources.delta_tables import delta_table, exists, read_delta
from resources.lake import (
    DELTA_CLIENT_LIMITS,
    EMULATOR_ACCOUNT,
    EMULATOR_KEY,
    AzureAccount,
    LakeConfigError,
    LakeConflictError,
    LakeStorage,
)
from spotify_assets.catalog.gold_spec import Scd2Dimension
from spotify_assets.catalog.tables import CATALOG, CaptureMode
from spotify_assets.cli.commands import source_init, source_simulate
from spotify_assets.orchestration.settings import Settings
from tests.helpers.gold_reference import assert_gold_equals_source, keep_initial_dimensions
from tests.helpers.paths import REPO
from tests.helpers.servers import Azurite
from tests.helpers.source import DIRTY, SEED

pytestmark = pytest.mark.azurite

# A few days of history: every layer and table is exercised, and each run stays short.
HISTORY_DAYS = 3

# Every Azure variable the lake, adlfs or object_store would read: each test sets its own.
AZURE_VARIABLES = [
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_USE_EMULATOR",
    "AZURITE_BLOB_STORAGE_URL",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ENDPOINT",
    "AZURE_ALLOW_HTTP",
    "AZURE_STORAGE_SAS_TOKEN",
]


def abfss(container: str, account: str = EMULATOR_ACCOUNT) -> str:
    return f"abfss://{container}@{account}.dfs.core.windows.net/spotify"


@pytest.fixture
def azure_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in AZURE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_lake_verbs_on_azurite(azurite: Azurite, azure_env: pytest.MonkeyPatch) -> None:
    azure_env.setenv("AZURE_STORAGE_USE_EMULATOR", "true")
    azure_env.setenv("AZURITE_BLOB_STORAGE_URL", azurite.url)
    url = abfss(azurite.create_container())
    lake = LakeStorage(url=url)

    rows = pa.table({"id": [1, 2, 3], "name": ["a", "b", "c"]})
    size = lake.write_parquet("bronze/T/date=2026-01-01/x.parquet", rows)
    assert size > 0
    assert lake.read_parquet(["bronze/T/date=2026-01-01/x.parquet"]).equals(rows)
    assert lake.file_sizes("bronze/T/date=2026-01-01") == {"x.parquet": size}
    assert lake.file_sizes("bronze/nothing") == {}
    assert lake.path("bronze/T") == lake.uri("bronze/T") == f"{url}/bronze/T"

    lake.create_json("bronze/T/_manifests/v0000000001.json", {"version": 1})
    with pytest.raises(LakeConflictError, match=r"v0000000001\.json already exists"):
        lake.create_json("bronze/T/_manifests/v0000000001.json", {"version": "other"})
    assert lake.read_json("bronze/T/_manifests/v0000000001.json") == {"version": 1}
    assert lake.list_names("bronze/T") == ["_manifests", "date=2026-01-01"]
    assert lake.list_names("bronze/nothing") == []
    assert lake.files_below("bronze/T") == {
        "bronze/T/date=2026-01-01/x.parquet",
        "bronze/T/_manifests/v0000000001.json",
    }

    # Racing writers: the store's conditional write lets exactly one of them create the name.
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def create(writer: int) -> None:
        barrier.wait()
        try:
            lake.create_json("bronze/T/_manifests/v0000000002.json", {"writer": writer})
            outcomes.append("created")
        except LakeConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=create, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict"] * 5 + ["created"]


def test_connection_string_and_emulator_variables_reach_the_same_account() -> None:
    azurite = Azurite(port=10000)  # Azurite's default port; nothing connects here
    url = abfss("lake")
    emulator = {"AZURE_STORAGE_USE_EMULATOR": "true", "AZURITE_BLOB_STORAGE_URL": azurite.url}
    by_emulator = AzureAccount.from_env(url, emulator)
    by_string = AzureAccount.from_env(
        url, {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    )
    by_key = AzureAccount.from_env(
        "az://lake/spotify",
        {
            "AZURE_STORAGE_ACCOUNT_NAME": EMULATOR_ACCOUNT,
            "AZURE_STORAGE_ACCOUNT_KEY": EMULATOR_KEY,
            "AZURE_STORAGE_ENDPOINT": f"{azurite.url}/{EMULATOR_ACCOUNT}",
        },
    )
    assert by_emulator == by_string == by_key
    assert by_emulator.delta_options() == {
        "account_name": EMULATOR_ACCOUNT,
        "account_key": EMULATOR_KEY,
        "endpoint": f"{azurite.url}/{EMULATOR_ACCOUNT}",
        "allow_http": "true",
    }
    assert EMULATOR_KEY not in repr(by_emulator)
    development = {"AZURE_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true"}
    assert AzureAccount.from_env(url, development) == by_emulator
    sovereign = "AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.chinacloudapi.cn"
    account = AzureAccount.from_env("az://lake", {"AZURE_STORAGE_CONNECTION_STRING": sovereign})
    assert account.endpoint == "https://acct.blob.core.chinacloudapi.cn"

    with pytest.raises(LakeConfigError, match="account 'other'"):
        AzureAccount.from_env(
            abfss("lake", "other"), {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
        )
    with pytest.raises(LakeConfigError, match="names no storage account"):
        AzureAccount.from_env("az://lake/spotify", {})
    with pytest.raises(LakeConfigError, match="must not carry credentials"):
        _ = LakeStorage(url=f"{url}?sig=secret").azure


def test_without_a_key_files_and_delta_sign_in_with_default_azure_credential(
    azure_env: pytest.MonkeyPatch,
) -> None:
    """No key in the environment: adlfs resolves DefaultAzureCredential itself (anon=False);
    delta-rs gets a bearer token from it, renewed before it expires. Only verifiable against
    real Azure for a real identity: here the credential is a stand-in."""
    issued: list[str] = []

    class Credential:
        def get_token(self, scope: str) -> AccessToken:
            assert scope == "https://storage.azure.com/.default"
            issued.append(f"token-{len(issued)}")
            return AccessToken(issued[-1], int(time.time()) + (60 if len(issued) == 1 else 3600))

    azure_env.setattr("azure.identity.DefaultAzureCredential", Credential)
    lake = LakeStorage(url=abfss("lake", "prodaccount"))
    assert lake.azure.fsspec_options() == {
        "use_listings_cache": False,
        "account_name": "prodaccount",
        "anon": False,
    }
    assert (
        lake.delta_storage_options()
        == {
            "account_name": "prodaccount",
            "bearer_token": "token-0",
        }
        | DELTA_CLIENT_LIMITS
    )
    assert lake.delta_storage_options()["bearer_token"] == "token-1"  # the first one expired
    assert lake.delta_storage_options()["bearer_token"] == "token-1"


# A table's first write, in a process whose Sail starts with the Azure settings of its environment.
FIRST_WRITE = """
import sys
from datetime import date
from resources.delta_writes import replace_partitions
from resources.lake import LakeStorage
from resources.spark import SparkResource
lake, day = LakeStorage(url=sys.argv[1]), date.fromisoformat(sys.argv[2])
rows = SparkResource().session().createDataFrame([(day, 1), (day, 2)], "day date, n long")
replace_partitions(lake, rows, lake.path("silver/t"), "day", (day, day))
"""


def test_a_first_commit_cut_short_leaves_no_table_and_the_next_write_creates_it(
    azurite: Azurite, azure_env: pytest.MonkeyPatch
) -> None:
    """In a container a log is only its files: a first write cut short leaves its data file and
    maybe its commit's temporary file, and no table."""
    azure_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    url = abfss(azurite.create_container())
    lake, day = LakeStorage(url=url), "2026-11-02"
    lake.write_parquet(f"silver/t/day={day}/part-00000-leftover.parquet", pa.table({"n": [99]}))
    lake.fs.pipe_file(lake.path("silver/t/_delta_log/_commit_0b6c8f3e.json.tmp"), b"{}\n")
    assert not exists(lake, lake.path("silver/t"))

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", FIRST_WRITE, url, day], env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert delta_table(lake, "silver/t").version() == 0
    assert sorted(read_delta(lake, "silver/t")["n"].to_pylist()) == [1, 2]


def _delta_versions(lake: LakeStorage) -> dict[str, int]:
    """Versions of every silver and gold table but the calendar's: a snapshot table is copied
    whole by every run (as on a local lake), so its tables get new versions of the same rows."""
    tables = [t for t in CATALOG if t.mode is not CaptureMode.SNAPSHOT]
    names = [f"silver/{t.lake_name}" for t in tables]
    names += [f"gold/{t.lake_name}" for t in tables if t.gold]
    names += [f"gold/{a.name}" for a in CATALOG.aggregates]
    return {name: delta_table(lake, name).version() for name in names}


def _calendar(lake: LakeStorage) -> pa.Table:
    return delta_table(lake, "gold/dim_date").to_pyarrow_table().sort_by("date_key")


@pytest.mark.timeout(600)  # two runs to gold over HTTP: minutes when the machine is busy
def test_pipeline_bronze_to_gold_on_azurite(
    azurite: Azurite, azure_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`spotify-lakehouse run` on an abfss:// lake, signed in by a connection string: bronze
    manifests and files in the container, silver and gold Delta tables that delta-rs opens, gold
    equal to plain SQL on the source after the initial load and after a day of changes, then a
    run that writes nothing, and the key nowhere in the output or in Dagster's storage."""
    azure_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    url = abfss(azurite.create_container())
    settings = Settings.from_env({"SPOTIFY_HOME": str(tmp_path), "SPOTIFY_LAKE_URL": url})
    end = datetime.now(UTC).date() - timedelta(days=4)
    source_init(settings, 0.002, SEED, end, history_days=HISTORY_DAYS)
    keep_initial_dimensions(settings)
    (tmp_path / "dagster").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in AZURE_VARIABLES} | {
        "SPOTIFY_HOME": str(tmp_path),
        "SPOTIFY_LAKE_URL": url,
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
    }
    cli = str(Path(sys.executable).with_name("spotify-lakehouse"))

    def run() -> str:
        done = subprocess.run([cli, "run"], env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-4000:]
        return done.stdout + done.stderr

    output = run()
    lake = LakeStorage(url=url)
    for table in CATALOG:
        manifest = BronzeStore(lake, table).current()
        assert manifest.version >= 1 and manifest.files, table.name
        assert all(lake.fs.exists(lake.path(f.path)) for f in manifest.files), table.name
    assert_gold_equals_source(settings)

    # A day of changes: the dimensions' changed keys are found through the silver log's file
    # URIs (abfss://, checked with adlfs) and only their versions recomputed (no full rebuild);
    # fact partitions replaced.
    source_simulate(settings, 1, SEED, DIRTY)
    output += run()
    assert_gold_equals_source(settings)
    azure_env.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    with DagsterInstance.get() as instance:
        for table in CATALOG:
            if isinstance(table.gold, Scd2Dimension):
                key = AssetKey(["gold", table.lake_name])
                event = instance.get_latest_materialization_event(key)
                assert event and event.asset_materialization, key
                assert event.asset_materialization.metadata["full_rebuild"].value is False, key
    versions, calendar = _delta_versions(lake), _calendar(lake)

    output += run()
    assert _delta_versions(lake) == versions
    assert _calendar(lake).equals(calendar)
    # The key reached neither the run's output nor anything Dagster stored (metadata, logs).
    assert EMULATOR_KEY not in output
    for path in (tmp_path / "dagster").rglob("*"):
        assert not path.is_file() or EMULATOR_KEY.encode() not in path.read_bytes(), path
