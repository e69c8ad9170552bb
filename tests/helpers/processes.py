"""Subprocesses as the tests run them: under a memory bound, and `spotify-lakehouse` as a user
runs it."""

from __future__ import annotations

import ast
import contextlib
import glob
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from resources.spark_memory import sail_memory_env
from spotify_assets.catalog.tables import CATALOG
from spotify_assets.orchestration.resources import copy_runner
from spotify_assets.orchestration.settings import Settings
from tests.helpers.servers import PG_PASSWORD, free_port


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


def tree_rss(root: int) -> int:
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
    limit = int(limit_gib * 2**30)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=err, start_new_session=True)
        peak, killed, deadline = 0, False, time.monotonic() + timeout
        try:
            while process.poll() is None:
                peak = max(peak, tree_rss(process.pid))
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


CLI = str(Path(sys.executable).with_name("spotify-lakehouse"))
CLI_MEMORY_GIB = 3.0


@dataclass(frozen=True)
class Lakehouse:
    """`spotify-lakehouse` as a user runs it: a subprocess with `SPOTIFY_HOME` and, when given,
    `SPOTIFY_SOURCE_ODBC` and `SPOTIFY_SPARK_REMOTE` (nothing else of the caller's SPOTIFY_* or
    DAGSTER_HOME), under a memory bound."""

    home: Path
    source_odbc: str | None = None
    spark_remote: str | None = None
    settings_env: dict[str, str] = field(default_factory=dict)  # other SPOTIFY_* settings

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SPOTIFY_") and k != "DAGSTER_HOME"}  # fmt: skip
        env["SPOTIFY_HOME"] = str(self.home)
        if self.source_odbc:
            env["SPOTIFY_SOURCE_ODBC"] = self.source_odbc
        if self.spark_remote:
            env["SPOTIFY_SPARK_REMOTE"] = self.spark_remote
        return env | self.settings_env

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


# `main(argv)` in a fresh interpreter, then which of the named modules it imported, on stderr's
# last line.
_MAIN_THEN_MODULES = """
import sys
from spotify_assets.cli import main
try:
    code = main(sys.argv[2:])
except SystemExit as exit:
    code = exit.code
print(sorted(set(sys.argv[1].split(",")) & sys.modules.keys()), file=sys.stderr)
sys.exit(code)
"""


def cli_imports(
    argv: list[str], modules: tuple[str, ...], env: dict[str, str]
) -> tuple[BoundedRun, list[str]]:
    """`spotify-lakehouse ARGV` in a fresh interpreter under the CLI's memory bound: how it ran,
    and which of `modules` it had imported by the time it finished."""
    result = run_bounded(
        [sys.executable, "-c", _MAIN_THEN_MODULES, ",".join(modules), *argv], CLI_MEMORY_GIB, env
    )
    assert not result.killed_for_memory and "Traceback" not in result.stderr, result.stderr
    return result, ast.literal_eval(result.stderr.splitlines()[-1])


def run_killed_after_bronze(cli: Lakehouse, rng: random.Random) -> None:
    """`spotify-lakehouse run` in a subprocess, SIGKILLed 0-3 s after bronze committed new fact
    rows (silver and gold not yet, or partly, rebuilt)."""
    process = run_until_bronze(cli, subprocess.DEVNULL)
    try:
        time.sleep(rng.uniform(0.0, 3.0))  # somewhere in silver or gold
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_until_bronze(cli: Lakehouse, output: IO[str] | int) -> subprocess.Popen[str]:
    """`spotify-lakehouse run` started in a subprocess of its own session, its standard output
    and error to `output` (a file: a pipe nobody reads would stall it), returned as soon as
    bronze committed new fact rows (silver and gold still to come)."""
    store = copy_runner(cli.settings).store(CATALOG.fact)
    before = store.current().watermark
    process = subprocess.Popen(
        [CLI, "run"], env=cli.env, stdout=output, stderr=output, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while store.current().watermark == before:
            assert process.poll() is None, "the run ended before bronze committed"
            assert time.monotonic() < deadline, "bronze never committed"
            time.sleep(0.05)
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    return process


SAIL = str(Path(sys.executable).with_name("sail"))


@contextlib.contextmanager
def sail_cluster(
    log: Path, memory_pool_gib: float = 1.0, startup_timeout: float = 60
) -> Iterator[tuple[str, int]]:
    """`SAIL_MODE=local-cluster sail spark server` (a driver and its workers, threads of one
    process) on a free port of 127.0.0.1, logging to `log`; yields its Spark Connect URL and its
    pid. Its memory is bounded as Sail's in process is (`sail_memory_env`). The server ignores
    SIGTERM: its process group is SIGKILLed on exit."""
    port = free_port()
    env = {
        **os.environ,
        **sail_memory_env(memory_pool_gib, os.environ),
        "SAIL_MODE": "local-cluster",
        "RUST_LOG": "error",
    }
    with log.open("wb") as out:
        server = subprocess.Popen(
            [SAIL, "spark", "server", "--ip", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                    break
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the Sail server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.2)
            yield f"sc://127.0.0.1:{port}", server.pid
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a running process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
