"""One writer at a time: the lake writer lease, taken by every entry point that
writes the lake (the CLI's commands, sensor and UI runs), on a local folder and on Azure
(Azurite), surviving a holder that was SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

from resources.lake import LakeFileError, LakeStorage
from resources.lease import (
    Holder,
    LakeBusyError,
    LeaseLostError,
    WriterLease,
    lake_writer,
    run_entry,
)
from spotify_assets.cli.commands import EXIT_LAKE_BUSY, source_init
from spotify_assets.orchestration.assets.bronze import build_bronze_asset
from spotify_assets.orchestration.assets.silver import build_silver_asset
from spotify_assets.orchestration.run_resources import build_resources
from spotify_assets.orchestration.settings import Settings
from tests.helpers.gold_reference import assert_gold_equals_source, keep_initial_dimensions
from tests.helpers.paths import REPO
from tests.helpers.processes import CLI, BoundedRun
from tests.helpers.servers import Azurite

# Holds the lease of the lake at argv[1] as the CLI does, says so, and sleeps until killed.
HOLDER = """
import sys, time
from resources.lake import LakeStorage
from resources.lease import lake_writer
with lake_writer(LakeStorage(url=sys.argv[1]), "CLI run", 0, print):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture(params=["local", pytest.param("azurite", marks=pytest.mark.azurite)])
def lake(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> LakeStorage:
    """An empty lake: a local folder, or a container on Azurite (its account in the env)."""
    if request.param == "local":
        return LakeStorage(url=str(tmp_path / "lake"))
    azurite: Azurite = request.getfixturevalue("azurite")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    container = azurite.create_container()
    return LakeStorage(url=f"abfss://{container}@devstoreaccount1.dfs.core.windows.net/lake")


# Holds the lease of the lake at argv[1] with a record valid for one second, renewed every
# tenth of one, says so, and sleeps until killed.
SHORT_HOLDER = """
import sys, time
from resources.lake import LakeStorage
from resources.lease import Holder, WriterLease
WriterLease(LakeStorage(url=sys.argv[1]), 1, 0.1).acquire(Holder.here("CLI run"), 0, print)
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder_process(lake: LakeStorage) -> Iterator[subprocess.Popen[str]]:
    """Another process on this machine holding the lake's lease."""
    env = os.environ | {"PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", HOLDER, lake.url], env=env,
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert process.stdout and process.stdout.readline() == "held\n"
        yield process
    finally:
        process.kill()
        process.wait()


def here(entry: str = "CLI run", **changes: object) -> Holder:
    return replace(Holder.here(entry), **changes)


def test_a_second_writer_waits_saying_for_whom_then_gives_up_in_one_line(
    lake: LakeStorage,
) -> None:
    lease = WriterLease(lake)
    first = lease.acquire(here("CLI run", run_id="r-1"), 0, print)
    said: list[str] = []
    with pytest.raises(LakeBusyError) as busy:
        lease.acquire(here("UI run"), 1, said.append)
    held_by = f"CLI run (pid {os.getpid()} on {first.holder.host}, run r-1, since "
    assert len(said) == 1 and said[0].startswith("waiting up to 1 s for the lake writer lease")
    assert held_by in said[0]
    message = str(busy.value)
    assert held_by in message and lake.url in message and "SPOTIFY_WRITER_WAIT_SECONDS" in message
    assert "\n" not in message

    first.release()
    second = lease.acquire(here("UI run"), 0, said.append)
    current = lease.current()
    assert current and current.holder == second.holder
    second.release()
    assert len(said) == 1
    assert lake.list_names("_lease") == [f"{lease.current().number:010d}.json"]  # pruned


def test_writers_racing_for_the_lease_hold_it_one_at_a_time(lake: LakeStorage) -> None:
    lease = WriterLease(lake)
    inside: list[int] = []
    overlaps: list[list[int]] = []

    def write(writer: int) -> None:
        for _ in range(2):
            hold = lease.acquire(here(f"writer {writer}"), 60, lambda line: None)
            inside.append(writer)
            if len(inside) > 1:
                overlaps.append(list(inside))
            time.sleep(0.05)
            inside.remove(writer)
            hold.release()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == []
    assert lease.current().holder is None


def test_a_holder_that_stops_renewing_loses_the_lease_at_expiry(lake: LakeStorage) -> None:
    """A holder on another machine (no liveness check) that stalled: its lease expires, a
    waiter takes it over, and the stalled holder refuses to write when it wakes up."""
    stalled = WriterLease(lake, ttl_seconds=1, renew_seconds=3600)
    elsewhere = here("sensor run (cdc_arrival_sensor)", host="other-host", machine="other")
    old = stalled.acquire(elsewhere, 0, print)
    said: list[str] = []
    new = WriterLease(lake).acquire(here("CLI run"), 30, said.append)
    assert "held by sensor run (cdc_arrival_sensor) (pid" in said[0]

    # Woken before its heartbeat beats: it finds out from the lake, not from that beat.
    with pytest.raises(LeaseLostError, match=r"taken over by CLI run \(pid \d+"):
        old.check()
    old.release()  # releases nothing: the lease is no longer its own
    assert WriterLease(lake).current().holder == new.holder
    new.release()


def test_a_holder_that_renews_keeps_the_lease_past_its_expiry(lake: LakeStorage) -> None:
    # Renewed 30 times per lifetime: a loaded machine may delay a beat, not a dozen of them.
    hold = WriterLease(lake, ttl_seconds=3, renew_seconds=0.1).acquire(here(), 0, print)
    with pytest.raises(LakeBusyError):
        WriterLease(lake).acquire(here("UI run"), 4, lambda line: None)
    hold.check()
    hold.release()


def test_a_sigkilled_holder_on_this_machine_blocks_nobody(
    lake: LakeStorage, holder_process: subprocess.Popen[str]
) -> None:
    current = WriterLease(lake).current()
    assert current and current.holder and current.holder.pid == holder_process.pid
    with pytest.raises(LakeBusyError, match=rf"CLI run \(pid {holder_process.pid} "):
        WriterLease(lake).acquire(here("UI run"), 0, print)
    holder_process.send_signal(signal.SIGKILL)
    holder_process.wait()
    # Its record would hold for another minute; its process is gone, so it holds nothing.
    WriterLease(lake).acquire(here("UI run"), 0, print).release()


def test_a_paused_holder_on_this_machine_keeps_the_lease_past_its_expiry(
    lake: LakeStorage,
) -> None:
    """A writer SIGSTOPped (Ctrl-Z, a debugger) for longer than its record lasts: another
    writer took the lease over and wrote, then the paused one went on writing where it stood
    (two writers at once). While its process lives, the lease stays its own."""
    env = os.environ | {"PYTHONPATH": str(REPO)}
    paused = subprocess.Popen([sys.executable, "-c", SHORT_HOLDER, lake.url], env=env,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert paused.stdout and paused.stdout.readline() == "held\n"
        paused.send_signal(signal.SIGSTOP)
        time.sleep(1.5)  # past its record's expiry, never renewed meanwhile
        with pytest.raises(LakeBusyError, match=rf"CLI run \(pid {paused.pid} "):
            WriterLease(lake).acquire(here("UI run"), 0, print)
        paused.send_signal(signal.SIGCONT)
    finally:
        paused.kill()
        paused.wait()
    WriterLease(lake).acquire(here("UI run"), 0, print).release()


def test_a_holder_whose_pid_now_names_another_process_holds_nothing(lake: LakeStorage) -> None:
    """Its process ended and its pid was given to a new one: that one holds no lease."""
    lease = WriterLease(lake, ttl_seconds=3600)
    reused = replace(Holder.here("CLI run"), started=Holder.here("CLI run").started - 1)
    lease.acquire(reused, 0, print)
    WriterLease(lake).acquire(here("UI run"), 0, print).release()


def test_runs_of_a_command_hold_the_commands_lease_again(lake: LakeStorage) -> None:
    lease = WriterLease(lake)
    with lake_writer(lake, "CLI run", 0, print) as command:
        for run_id in ("run-1", "run-2"):
            with lake_writer(lake, "UI run", 0, print, run_id) as run:
                assert run is command
                assert lease.current().holder == replace(command.holder, run_id=run_id)
                assert lease.current().holder.entry == "CLI run"
        assert lease.current().holder.run_id is None
    assert lease.current().holder is None


def test_a_release_that_fails_does_not_hide_why_the_holder_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk fails the holder's work, then its release record: the work's error is what
    the caller sees (the CLI said only that the lease record could not be written, hiding which
    layer failed and the run's log). A release failing after work that succeeded still fails."""
    lake = LakeStorage(url=str(tmp_path / "lake"))

    def disk_full(self: LakeStorage, relative: str, data: bytes) -> None:
        raise LakeFileError(f"cannot write {relative}: No space left on device")

    with (
        pytest.raises(RuntimeError, match="silver/fact_stream failed"),
        lake_writer(lake, "CLI run", 0, print),
    ):
        monkeypatch.setattr(LakeStorage, "create_json", disk_full)
        raise RuntimeError("silver/fact_stream failed: No space left on device")
    monkeypatch.undo()
    other = LakeStorage(url=str(tmp_path / "other"))  # this process still holds the first one
    with (
        pytest.raises(LakeFileError, match="No space left"),
        lake_writer(other, "CLI run", 0, print),
    ):
        monkeypatch.setattr(LakeStorage, "create_json", disk_full)


def test_the_entry_point_of_a_run_comes_from_its_tags() -> None:
    assert run_entry({"dagster/sensor_name": "cdc_arrival_sensor"}) == (
        "sensor run (cdc_arrival_sensor)"
    )
    assert run_entry({"dagster/schedule_name": "daily_catch_up"}) == "schedule run (daily_catch_up)"
    assert run_entry({"dagster/backfill": "abc"}) == "backfill run (abc)"
    assert run_entry({"spotify/run": "incremental"}) == "UI run"


@pytest.mark.parametrize("lake", ["local"], indirect=True)
def test_a_sensor_run_waits_for_the_cli_and_writes_nothing_until_it_may(
    lake: LakeStorage, holder_process: subprocess.Popen[str], tmp_path: Path
) -> None:
    """A Dagster run (as a sensor or the UI launches it) takes the lease before any step:
    while another process holds it, the run fails naming the holder, having written nothing;
    once the holder is gone (SIGKILL), the same run succeeds."""
    settings = Settings.from_env(
        {"SPOTIFY_HOME": str(tmp_path), "SPOTIFY_LAKE_URL": lake.url,
         "SPOTIFY_WRITER_WAIT_SECONDS": "1"}
    )  # fmt: skip
    end = datetime.now(UTC).date() - timedelta(days=1)
    source_init(settings, 0.001, 7, end, history_days=3)
    calendar = settings.catalog["DimDate"]
    assets = [
        build_bronze_asset(settings.catalog, calendar),
        build_silver_asset(settings.catalog, calendar),
    ]
    tags = {"dagster/sensor_name": "cdc_arrival_sensor"}

    instance = DagsterInstance.ephemeral()

    def run():
        return materialize(assets, resources=build_resources(settings), instance=instance,
                           tags=tags, raise_on_error=False)  # fmt: skip

    blocked = run()
    assert not blocked.success
    logged = [e.user_message for e in instance.all_logs(blocked.run_id)]
    holder = f"CLI run (pid {holder_process.pid} "
    assert sum(m.startswith("waiting up to 1 s") and holder in m for m in logged) == 1
    error = blocked.get_run_failure_event().event_specific_data.error.to_string()
    assert f"being written by {holder}" in error and "SPOTIFY_WRITER_WAIT_SECONDS" in error
    assert blocked.get_step_success_events() == [] and blocked.get_step_failure_events() == []
    assert lake.list_names("bronze") == lake.list_names("silver") == []

    holder_process.send_signal(signal.SIGKILL)
    holder_process.wait()
    done = run()
    assert done.success
    assert lake.list_names("bronze") == [calendar.name]
    assert WriterLease(lake).current().holder is None


def cli_env(home: Path, **settings: str) -> dict[str, str]:
    """The environment of a user's shell: this home, the CLI's own Dagster home under it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPOTIFY_", "DAGSTER_"))}
    return env | {"SPOTIFY_HOME": str(home), **settings}


@pytest.mark.parametrize("lake", ["local"], indirect=True)
def test_a_command_that_may_not_wait_refuses_in_one_line(
    lake: LakeStorage, holder_process: subprocess.Popen[str], tmp_path: Path
) -> None:
    env = cli_env(tmp_path, SPOTIFY_LAKE_URL=lake.url, SPOTIFY_WRITER_WAIT_SECONDS="0")
    done = subprocess.run([CLI, "run"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_LAKE_BUSY
    assert done.stdout == ""
    assert done.stderr.startswith(f"error: the lake {lake.url} is being written by CLI run (pid ")
    assert done.stderr.count("\n") == 1


def test_the_wait_is_a_number_of_seconds() -> None:
    for wrong in ("nan", "-1", "soon", "inf"):
        with pytest.raises(ValueError, match=f"SPOTIFY_WRITER_WAIT_SECONDS='{wrong}'"):
            Settings.from_env({"SPOTIFY_WRITER_WAIT_SECONDS": wrong})
    assert Settings.from_env({"SPOTIFY_WRITER_WAIT_SECONDS": "0"}).writer_wait_seconds == 0


def test_two_runs_started_together_write_one_after_the_other(
    tmp_path: Path,
    bounded: Callable[..., BoundedRun],
) -> None:
    env = cli_env(tmp_path, SPOTIFY_WRITER_WAIT_SECONDS="600")
    end = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    init = ["source", "init", "--scale", "0.002", "--history-days", "3", "--end-date", end]
    assert bounded([CLI, *init], 2, env=env).returncode == 0
    settings = Settings.from_env(env)
    keep_initial_dimensions(settings)

    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: bounded([CLI, "run"], 4, env=env), range(2)))

    for run in runs:
        assert "Traceback" not in run.stdout + run.stderr, run.stderr[-3000:]
        assert run.returncode == 0, run.stderr[-3000:]
    waited = [run for run in runs if "waiting up to 600 s" in run.stderr]
    assert len(waited) == 1, [run.stderr[-2000:] for run in runs]
    assert "held by CLI run (pid " in waited[0].stderr
    assert_gold_equals_source(settings)
