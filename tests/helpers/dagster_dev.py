"""`dg dev` as a user starts it from the repository root (README: Dagster), in a process group
of its own: the webserver, the daemon, the code servers and any run worker it starts share it, so
a test can stop and check all of them at once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from spotify_assets.cli.commands import instance_config
from spotify_assets.orchestration.settings import Settings
from tests.helpers.paths import REPO

DG = Path(sys.executable).with_name("dg")
LOCATIONS = "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"
# Requests to the local UI never go through a proxy that the environment may configure.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def start_dev(
    settings: Settings, port: int, log: Path, source_odbc: str | None = None
) -> subprocess.Popen[bytes]:
    """`dg dev` on 127.0.0.1:`port` over `settings`' home and the CLI's instance, its output in
    `log`. The code location sees only SPOTIFY_HOME of the SPOTIFY_* settings (a configured alert
    webhook above all stays out), and the source's connection string if given; launched runs
    inherit the same environment."""
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    (settings.dagster_home / "dagster.yaml").write_text(instance_config())  # run queue, telemetry
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTIFY_")}
    if source_odbc:
        env["SPOTIFY_SOURCE_ODBC"] = source_odbc
    env |= {
        "SPOTIFY_HOME": str(settings.home),
        "DAGSTER_HOME": str(settings.dagster_home),
        "DAGSTER_DISABLE_TELEMETRY": "1",  # dagster.yaml stops recording; this stops uploads
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(DG), "dev", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # A shell without job control starts background jobs with SIGINT ignored, which
            # their children inherit: `dg dev` must get Ctrl-C as in a terminal.
            preexec_fn=_interruptible,
        )


def graphql(url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """The data of a GraphQL request to the UI at `url`; its errors fail."""
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"{url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with _LOCAL.open(request, timeout=30) as response:
        payload = json.load(response)
    assert not payload.get("errors"), f"GraphQL errors: {payload['errors']}"
    return payload["data"]


def location_loaded(process: subprocess.Popen[bytes], port: int, seconds: float) -> bool:
    """Whether the webserver answers and every code location has loaded within `seconds`
    (False at once if `dg dev` exited)."""
    body = json.dumps({"query": LOCATIONS}).encode()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/graphql", body, {"Content-Type": "application/json"}
        )
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
            with _LOCAL.open(request, timeout=30) as response:
                entries = json.load(response)["data"]["workspaceOrError"]["locationEntries"]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                return True
        time.sleep(1)
    return False


def _interruptible() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def group_gone(leader: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether every process of the leader's group exited within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader.poll()  # reaps the leader: a zombie would still count as a member
        try:
            os.killpg(leader.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def group_members(leader: subprocess.Popen[bytes]) -> list[str]:
    """The command lines of the processes still in the leader's group, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # After the command's closing parenthesis: state, ppid, pgrp.
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == leader.pid:
                members.append(stat.with_name("cmdline").read_bytes().replace(b"\0", b" ").decode())
    return members


def stop_dev(process: subprocess.Popen[bytes]) -> None:
    """Stop `dg dev` as Ctrl-C does, then whatever of its group is left."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGINT)
    if not group_gone(process, 15):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()
