"""A lake whose storage account cannot be reached (nothing listening, or a server that never
answers) fails a command in bounded time, in one line naming the lake; the clients of the lake
get the retry and timeout limits that bound it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from resources.lake import (
    BLOB_CLIENT_LIMITS,
    DELTA_CLIENT_LIMITS,
    EMULATOR_ACCOUNT,
    LakeStorage,
)
from tests.helpers.processes import CLI, CLI_MEMORY_GIB, run_bounded
from tests.helpers.servers import free_port

LAKE = f"abfss://lake@{EMULATOR_ACCOUNT}.dfs.core.windows.net/spotify"
# A hang guard, not a timing test: the SDKs' defaults took minutes per request.
HANG_GUARD_SECONDS = 120


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers on them."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)  # the kernel completes the handshakes; nobody ever reads
        yield server.getsockname()[1]


def emulator_env(home: Path, port: int) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("SPOTIFY_", "AZURE"))}
    return keep | {
        "SPOTIFY_HOME": str(home),
        "SPOTIFY_LAKE_URL": LAKE,
        "AZURE_STORAGE_USE_EMULATOR": "true",
        "AZURITE_BLOB_STORAGE_URL": f"http://127.0.0.1:{port}",
    }


@pytest.mark.parametrize("endpoint", ["refusing", "silent"])
def test_run_on_an_unreachable_lake_fails_in_one_line(
    endpoint: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    port = free_port() if endpoint == "refusing" else request.getfixturevalue("silent_port")
    result = run_bounded(
        [CLI, "run"], CLI_MEMORY_GIB, env=emulator_env(tmp_path, port), timeout=HANG_GUARD_SECONDS
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: lake {LAKE} cannot be reached: ")


def test_lake_clients_get_bounded_retries_and_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_USE_EMULATOR", "true")
    monkeypatch.setenv("AZURITE_BLOB_STORAGE_URL", f"http://127.0.0.1:{free_port()}")
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_NAME"):
        monkeypatch.delenv(name, raising=False)
    lake = LakeStorage(url=LAKE)
    client = lake.fs.service_client
    retry = client._config.retry_policy
    assert (retry.total_retries, retry.connect_retries, retry.read_retries) == (
        BLOB_CLIENT_LIMITS["retry_total"],
        BLOB_CLIENT_LIMITS["retry_connect"],
        BLOB_CLIENT_LIMITS["retry_read"],
    )
    assert retry.initial_backoff == BLOB_CLIENT_LIMITS["initial_backoff"]
    connection = client._pipeline._transport.connection_config
    assert connection.timeout == BLOB_CLIENT_LIMITS["connection_timeout"]
    assert connection.read_timeout == BLOB_CLIENT_LIMITS["read_timeout"]
    # A second lake on the same account shares fsspec's filesystem, and its bounded client.
    assert LakeStorage(url=LAKE).fs.service_client is client
    options = lake.delta_storage_options()
    assert options is not None
    assert DELTA_CLIENT_LIMITS.items() <= options.items()
