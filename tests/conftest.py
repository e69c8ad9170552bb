"""Shared fixtures: an embedded SQLite source, a loaded lakehouse to copy, and throwaway
PostgreSQL and Azurite (Blob storage emulator) servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import glob
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pyodbc
import pytest

from resources.dagster_resources import LakeResource, LakeWriter
from resources.source_db import SourceDatabase, sqlite_connection_string
from spotify_assets.cli.commands import instance_config, run
from spotify_assets.orchestration.settings import Settings
from tests.helpers.gold_reference import small_source
from tests.helpers.paths import REPO
from tests.helpers.processes import BoundedRun, Lakehouse, run_bounded, run_killed_after_bronze
from tests.helpers.servers import PG_PASSWORD, Azurite, PostgresServer, free_port
from tests.helpers.source import HISTORY_START


def _declared_timeout(item: pytest.Item, default: float) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is None:
        return default
    return float(marker.args[0] if marker.args else marker.kwargs.get("timeout", default))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with a test declaring a longer timeout than the default (its author knows it is
    long) run first, longest first: the workers (`--dist loadscope`, whole modules in this
    order) then end together instead of one running a long module alone at the end. A module's
    own order is kept (the sort is stable)."""
    default = float(config.getini("timeout") or 0)
    longest: dict[str, float] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        longest[module] = max(longest.get(module, 0.0), _declared_timeout(item, default))
    items.sort(key=lambda item: -longest[item.nodeid.split("::")[0]])


def _pg_bindir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    found = candidates[-1] if candidates else shutil.which("initdb")
    if not found:
        pytest.fail("PostgreSQL server binaries not found: run `make test`, which installs them")
    return Path(found).parent


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster in a temp dir; as root it runs as `postgres` (it refuses root)."""
    bindir = _pg_bindir()
    workdir = Path(tempfile.mkdtemp(prefix="spotify-pg-"))
    datadir, pwfile = workdir / "data", workdir / "pw"
    pwfile.write_text(PG_PASSWORD + "\n")
    run_as: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")
        shutil.chown(pwfile, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    port = free_port()

    def pg(*args: str) -> None:
        subprocess.run([*run_as, *args], check=True, capture_output=True, text=True)

    pg(
        str(bindir / "initdb"),
        "-D",
        str(datadir),
        "-U",
        "spotify",
        f"--pwfile={pwfile}",
        "--auth=scram-sha-256",
        "-E",
        "UTF8",
        "--no-sync",
    )
    options = f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg(
        str(bindir / "pg_ctl"),
        "-D",
        str(datadir),
        "-o",
        options,
        "-l",
        str(workdir / "log"),
        "-w",
        "start",
    )
    try:
        yield PostgresServer(port=port, user="spotify", password=PG_PASSWORD)
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w", "stop")
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def postgres_source(postgres_server: PostgresServer) -> Iterator[SourceDatabase]:
    """A fresh, empty database on the throwaway server for each test."""
    name = f"src_{uuid.uuid4().hex[:12]}"
    admin = pyodbc.connect(postgres_server.connection_string("postgres"), autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield SourceDatabase(
            connection_string=postgres_server.connection_string(name),
            partition_start=HISTORY_START.isoformat(),
        )
    finally:
        with contextlib.suppress(pyodbc.Error):
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def sqlite_source(tmp_path: Path) -> SourceDatabase:
    return SourceDatabase(
        connection_string=sqlite_connection_string(tmp_path / "source.db"),
        partition_start=HISTORY_START.isoformat(),
    )


@pytest.fixture(scope="session")
def sail_spark():
    """One Sail session for the whole test run (Sail starts in ~0.5 s, but once is enough)."""
    from resources.spark import SparkResource

    return SparkResource().session()


# `make test` installs Azurite here (npm, project-local); one on the PATH also does.
AZURITE_LOCAL = REPO / ".azurite/node_modules/.bin/azurite-blob"


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Azurite's Blob service in a temp dir, on a free port of 127.0.0.1, for the session."""
    found = str(AZURITE_LOCAL) if AZURITE_LOCAL.exists() else shutil.which("azurite-blob")
    if not found or not shutil.which("node"):
        pytest.skip("Azurite (npm) or node is not installed: `make test` installs both")
    workdir = Path(tempfile.mkdtemp(prefix="spotify-azurite-"))
    port = free_port()
    # --skipApiVersionCheck: the Python SDK may speak a newer API version than Azurite knows.
    command = [found, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location",
               str(workdir), "--skipApiVersionCheck", "--disableTelemetry", "--silent"]  # fmt: skip
    log = (workdir / "azurite.log").open("wb")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Azurite did not start: {(workdir / 'azurite.log').read_text()}")
            time.sleep(0.2)
        yield Azurite(port)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def loaded_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The home of `small_source` loaded through gold by one in-process `run` on the CLI's
    Dagster instance, built once per session (a first load costs tens of seconds): tests work
    on a copy of it (`loaded_lakehouse`)."""
    home = tmp_path_factory.mktemp("loaded") / "home"
    settings = small_source(home)
    settings.dagster_home.mkdir()
    (settings.dagster_home / "dagster.yaml").write_text(instance_config())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSTER_HOME", str(settings.dagster_home))
        run(settings)
    return home


@pytest.fixture
def loaded_lakehouse(
    loaded_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """A copy of `loaded_home` of this test's own, and the process's environment naming it
    alone (no other SPOTIFY_* setting), as the CLI run in process reads it."""
    home = tmp_path / "loaded"
    shutil.copytree(loaded_home, home)
    for name in [n for n in os.environ if n.startswith("SPOTIFY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SPOTIFY_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    return Settings.from_env({"SPOTIFY_HOME": str(home)})


@pytest.fixture
def lake_writer(tmp_path: Path) -> LakeWriter:
    """The writer lease every lake-writing asset requires, of a local lake: for tests whose
    engines' lake is one no test can reach (a stand-in Azure account)."""
    return LakeWriter(lake=LakeResource(url=str(tmp_path / "lease")))


@pytest.fixture
def bounded() -> Callable[..., BoundedRun]:
    """`bounded(args, limit_gib, env=…)` -> BoundedRun: a subprocess under a memory bound."""
    return run_bounded


@pytest.fixture(params=["sqlite", "postgresql"])
def lakehouse_cli(request: pytest.FixtureRequest, tmp_path: Path) -> Lakehouse:
    """The CLI on a source named by SPOTIFY_SOURCE_ODBC: the SQLite file by its ODBC string, or
    a fresh database on the throwaway PostgreSQL server."""
    home = tmp_path / "home"
    if request.param == "postgresql":
        source: SourceDatabase = request.getfixturevalue("postgres_source")
        return Lakehouse(home, source.connection_string)
    return Lakehouse(home, f"Driver=SQLite3;Database={home / 'source.db'}")


@pytest.fixture
def killed_run() -> Callable[[Lakehouse, random.Random], None]:
    """`killed_run(cli, rng)`: a CLI `run` SIGKILLed at a random moment after bronze committed
    (see `run_killed_after_bronze`)."""
    return run_killed_after_bronze
