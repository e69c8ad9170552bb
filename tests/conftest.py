"""Shared fixtures: an embedded SQLite source, and throwaway PostgreSQL and Azurite (Blob
storage emulator) servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import glob
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pyodbc
import pytest

from resources.lake import EMULATOR_ACCOUNT, EMULATOR_KEY, LakeStorage
from resources.lease import LakeWriter
from resources.source_db import SourceDatabase, sqlite_connection_string
from spotify_assets.catalog.tables import CATALOG
from spotify_assets.orchestration.resources import copy_runner
from spotify_assets.orchestration.settings import Settings
from spotify_assets.source.generator import BASE_SHAPE

PG_DRIVER = "PostgreSQL Unicode"
PG_PASSWORD = "s3cr3t-Pa55;word"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pg_bindir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    found = candidates[-1] if candidates else shutil.which("initdb")
    if not found:
        pytest.fail("PostgreSQL server binaries not found: run `make test`, which installs them")
    return Path(found).parent


@dataclass(frozen=True)
class PostgresServer:
    port: int
    user: str
    password: str

    def connection_string(self, database: str, password: str | None = None) -> str:
        pwd = self.password if password is None else password
        return (
            f"Driver={{{PG_DRIVER}}};Server=127.0.0.1;Port={self.port};Database={database};"
            f"Uid={self.user};Pwd={{{pwd}}}"
        )


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


# The generated history of the fixtures' sources (the generator's default length), whose first
# day is the partition start they are configured with.
HISTORY_END = date(2026, 4, 1)
HISTORY_START = HISTORY_END - timedelta(days=BASE_SHAPE.history_days)


@pytest.fixture(scope="session")
def sail_spark():
    """One Sail session for the whole test run (Sail starts in ~0.5 s, but once is enough)."""
    from resources.spark import SparkResource

    return SparkResource().session()


# `make test` installs Azurite here (npm, project-local); one on the PATH also does.
AZURITE_LOCAL = Path(__file__).resolve().parent.parent / ".azurite/node_modules/.bin/azurite-blob"


@dataclass(frozen=True)
class Azurite:
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={EMULATOR_ACCOUNT};"
            f"AccountKey={EMULATOR_KEY};BlobEndpoint={self.url}/{EMULATOR_ACCOUNT};"
        )

    def create_container(self) -> str:
        """A new, empty container (Azurite, like a storage account, needs it created first)."""
        from azure.storage.blob import BlobServiceClient

        name = f"lake-{uuid.uuid4().hex[:12]}"
        with BlobServiceClient.from_connection_string(self.connection_string) as service:
            service.create_container(name)
        return name


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


@dataclass(frozen=True)
class BoundedRun:
    """A command run under a memory bound: its exit code, output and the peak RSS of its tree."""

    returncode: int
    stdout: str
    stderr: str
    peak_bytes: int
    killed_for_memory: bool

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / 2**30


def _tree_rss(root: int) -> int:
    """Resident memory of a process and all its descendants, from /proc (bytes)."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(Path(stat).parent.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf(
                "SC_PAGE_SIZE"
            )
    return total


def run_bounded(
    args: list[str], limit_gib: float, env: dict[str, str] | None = None, timeout: float = 600
) -> BoundedRun:
    """Run `args` in a new session, polling the RSS of its whole process tree every 50 ms; over
    `limit_gib` the tree is SIGKILLed (the machine stays safe) and the result says so."""
    import signal

    limit = int(limit_gib * 2**30)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=err, start_new_session=True)
        peak, killed, deadline = 0, False, time.monotonic() + timeout
        try:
            while process.poll() is None:
                peak = max(peak, _tree_rss(process.pid))
                if peak > limit:
                    killed = True
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"{' '.join(args)} ran longer than {timeout} s")
                time.sleep(0.05)
        finally:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        out.seek(0)
        err.seek(0)
        return BoundedRun(process.returncode, out.read().decode(errors="replace"),
                          err.read().decode(errors="replace"), peak, killed)  # fmt: skip


@pytest.fixture
def lake_writer(tmp_path: Path) -> LakeWriter:
    """The writer lease every lake-writing asset requires, of a local lake: for tests whose
    engines' lake is one no test can reach (a stand-in Azure account)."""
    return LakeWriter(lake=LakeStorage(url=str(tmp_path / "lease")))


@pytest.fixture
def bounded() -> Callable[..., BoundedRun]:
    """`bounded(args, limit_gib, env=…)` -> BoundedRun: a subprocess under a memory bound."""
    return run_bounded


CLI = str(Path(sys.executable).with_name("spotify-lakehouse"))
CLI_MEMORY_GIB = 3.0


@dataclass(frozen=True)
class Lakehouse:
    """`spotify-lakehouse` as a user runs it: a subprocess with `SPOTIFY_HOME` and, when given,
    `SPOTIFY_SOURCE_ODBC` (nothing else of the caller's SPOTIFY_* or DAGSTER_HOME), under a
    memory bound."""

    home: Path
    source_odbc: str | None = None

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SPOTIFY_") and k != "DAGSTER_HOME"}  # fmt: skip
        env["SPOTIFY_HOME"] = str(self.home)
        if self.source_odbc:
            env["SPOTIFY_SOURCE_ODBC"] = self.source_odbc
        return env

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    def __call__(self, *args: str) -> str:
        """Run one command; it must exit 0 within the bound, print no traceback and never the
        source's password. Returns its standard output."""
        result = run_bounded([CLI, *args], CLI_MEMORY_GIB, env=self.env)
        output = result.stdout + result.stderr
        assert not result.killed_for_memory, f"{args}: passed {CLI_MEMORY_GIB} GiB"
        assert "Traceback" not in output, f"{args}:\n{result.stderr[-4000:]}"
        assert PG_PASSWORD not in output, f"{args}: the password is in the output"
        assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stderr[-4000:]}"
        return result.stdout


@pytest.fixture(params=["sqlite", "postgresql"])
def lakehouse_cli(request: pytest.FixtureRequest, tmp_path: Path) -> Lakehouse:
    """The CLI on a source named by SPOTIFY_SOURCE_ODBC: the SQLite file by its ODBC string, or
    a fresh database on the throwaway PostgreSQL server."""
    home = tmp_path / "home"
    if request.param == "postgresql":
        source: SourceDatabase = request.getfixturevalue("postgres_source")
        return Lakehouse(home, source.connection_string)
    return Lakehouse(home, f"Driver=SQLite3;Database={home / 'source.db'}")


def run_killed_after_bronze(cli: Lakehouse, rng: random.Random) -> None:
    """`spotify-lakehouse run` in a subprocess, SIGKILLed 0-3 s after bronze committed new fact
    rows (silver and gold not yet, or partly, rebuilt)."""
    store = copy_runner(cli.settings).store(CATALOG.fact)
    before = store.current().watermark
    process = subprocess.Popen(
        [CLI, "run"], env=cli.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while store.current().watermark == before:
            assert process.poll() is None, "the run ended before bronze committed"
            assert time.monotonic() < deadline, "bronze never committed"
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 3.0))  # somewhere in silver or gold
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture
def killed_run() -> Callable[[Lakehouse, random.Random], None]:
    """`killed_run(cli, rng)`: a CLI `run` SIGKILLed at a random moment after bronze committed
    (see `run_killed_after_bronze`)."""
    return run_killed_after_bronze


@dataclass(frozen=True)
class GoldReference:
    """Gold as plain SQL on the source (tests/test_gold.py): keep the dimensions as created
    right after `source init`, then assert gold equals the reference."""

    keep_initial_dimensions: Callable[[Settings], None]
    assert_gold_equals_source: Callable[[Settings], None]


@pytest.fixture(scope="session")
def gold_reference() -> GoldReference:
    from tests.test_gold import assert_gold_equals_source, keep_initial_dimensions

    return GoldReference(keep_initial_dimensions, assert_gold_equals_source)
