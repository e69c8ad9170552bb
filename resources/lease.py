"""One writer at a time for the whole lake.

Every entry point that writes the lake holds the writer lease: a CLI command for its whole
duration, and every Dagster run that materializes a lake asset (sensor, schedule, backfill or
UI run) through the `lake_writer` resource (`LakeWriter`, resources/dagster_resources.py). A
second writer waits for it, up to a bound, saying for whom, then gives up in one line. Runs of a
CLI command execute in its own process and hold the command's lease again (re-entrant),
recording their run id in it.

The lease is a sequence of small JSON records, `_lease/NNNNNNNNNN.json`, each published with the
lake's exclusive create (`If-None-Match: *` on Azure, a hard link on a local folder): the highest
number is the truth, and of two writers racing for the next number exactly one creates it. The
holder renews it from a heartbeat thread (a new record every `renew_seconds`, each valid for
`ttl_seconds`) and releases it with a record that says so. A holder that dies stops renewing:
its lease expires (by the waiter's clock: machines' clocks must agree within seconds), and a
waiter on the same machine that finds its process gone takes over at once. A waiter on the same
machine that finds it alive (paused: SIGSTOP, a debugger) waits on: expiry only stands for the
liveness nobody can see on another machine. A holder checks, before it writes, that its lease
is its own (`Hold.check`): when its last renewal is older than a beat (it was paused), it asks
the lake. Superseded records are deleted, so a reader may find the record it listed gone: it
lists again.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from resources.lake import LakeConflictError, LakeFileError, LakeStorage
from resources.process_identity import ProcessIdentity

LEASE_DIR = "_lease"
# How long a record keeps the lease without renewal: the longest a SIGKILLed holder on another
# machine blocks the lake. Renewal is several times as frequent, so a slow beat never loses it.
LEASE_SECONDS = 60.0
RENEW_SECONDS = 10.0
POLL_SECONDS = 0.5
DEFAULT_WAIT_SECONDS = 600.0
WAIT_SETTING = "SPOTIFY_WRITER_WAIT_SECONDS"
_RECORD = re.compile(r"(\d{10})\.json")


class LakeBusyError(RuntimeError):
    """Another writer held the lake for longer than this one was willing to wait."""


class LeaseLostError(RuntimeError):
    """The lease expired while held (its heartbeat stalled) and another writer took it."""


@dataclass(frozen=True)
class Holder:
    """Who holds the lease: the entry point (`CLI run`, `sensor run (cdc_arrival_sensor)`, `UI
    run`), its process and machine, the Dagster run it executes, and since when it holds it."""

    entry: str
    pid: int
    host: str
    since: str  # UTC
    run_id: str | None = None
    machine: str = ""  # the pid namespace of this boot; "" where unknown (no liveness check)
    started: int = 0  # its process's start (clock ticks since boot): a reused pid is another

    @classmethod
    def here(cls, entry: str, run_id: str | None = None) -> Holder:
        since = _now().strftime("%Y-%m-%d %H:%M:%S UTC")
        process = ProcessIdentity.of(os.getpid())
        return cls(
            entry,
            process.pid,
            socket.gethostname(),
            since,
            run_id,
            process.machine,
            process.started,
        )

    def describe(self) -> str:
        run = f", run {self.run_id}" if self.run_id else ""
        return f"{self.entry} (pid {self.pid} on {self.host}{run}, since {self.since})"

    def lives(self) -> bool | None:
        """Whether its process still runs, paused or not; None where unknowable (another
        machine). A record written before start times were recorded has 0: its pid alone."""
        return ProcessIdentity(self.pid, self.started, self.machine).lives()


@dataclass(frozen=True)
class LeaseRecord:
    number: int
    holder: Holder | None  # None: released
    expires_at: datetime

    def is_free(self) -> bool:
        if self.holder is None:
            return True
        lives = self.holder.lives()
        return not lives if lives is not None else self.expires_at <= _now()

    def abandoned_run(self) -> str | None:
        """The Dagster run of a holder that ended without releasing the lease (killed), or
        whose record expired: that run will write nothing more."""
        return self.holder.run_id if self.holder and self.is_free() else None

    def to_json(self) -> dict[str, Any]:
        holder = asdict(self.holder) if self.holder else None
        return {"holder": holder, "expires_at": self.expires_at.isoformat()}

    @classmethod
    def from_json(cls, number: int, value: Mapping[str, Any]) -> LeaseRecord:
        holder = Holder(**value["holder"]) if value["holder"] else None
        return cls(number, holder, datetime.fromisoformat(value["expires_at"]))


class WriterLease:
    """The writer lease of one lake."""

    def __init__(
        self,
        lake: LakeStorage,
        ttl_seconds: float = LEASE_SECONDS,
        renew_seconds: float = RENEW_SECONDS,
    ) -> None:
        self.lake = lake
        self.ttl_seconds = ttl_seconds
        self.renew_seconds = renew_seconds

    def current(self) -> LeaseRecord | None:
        """The latest record; None if the lake never had a writer."""
        while True:
            numbers = self._numbers()
            if not numbers:
                return None
            try:
                value = self.lake.read_json(_path(numbers[-1]))
            except FileNotFoundError:  # superseded and deleted since the listing
                continue
            return LeaseRecord.from_json(numbers[-1], value)

    def abandoned_run(self) -> str | None:
        """The Dagster run of the latest holder if it ended without releasing the lease."""
        record = self.current()
        return record.abandoned_run() if record else None

    def acquire(self, holder: Holder, wait_seconds: float, log: Callable[[str], None]) -> Hold:
        """Take the lease for `holder`, waiting up to `wait_seconds` for the current holder
        (`log` says for whom, once); `LakeBusyError` when it is still held after that."""
        deadline = time.monotonic() + wait_seconds
        waiting = False
        while True:
            record = self.current()
            if record is None or record.is_free():
                number = record.number + 1 if record else 1
                if self._publish(number, holder):
                    return Hold(self, number, holder, record.abandoned_run() if record else None)
                continue
            assert record.holder is not None  # a record that is not free has a holder
            left = deadline - time.monotonic()
            if left <= 0:
                raise LakeBusyError(
                    f"the lake {self.lake.url} is being written by {record.holder.describe()}; "
                    f"gave up after waiting {wait_seconds:g} s ({WAIT_SETTING})"
                )
            if not waiting:
                log(
                    f"waiting up to {wait_seconds:g} s for the lake writer lease, held by "
                    f"{record.holder.describe()}"
                )
                waiting = True
            time.sleep(min(POLL_SECONDS, left))

    def _publish(self, number: int, holder: Holder | None) -> bool:
        """Create record `number`; True if it is then the latest, older records deleted."""
        expires = _now() + timedelta(seconds=self.ttl_seconds if holder else 0)
        try:
            self.lake.create_json(_path(number), LeaseRecord(number, holder, expires).to_json())
        except LakeConflictError:
            return False
        # Its number may have been free again only because a newer record superseded and
        # deleted it: then it is stale, and the newer record holds.
        numbers = self._numbers()
        if numbers[-1] != number:
            self.lake.delete(_path(number))
            return False
        for older in numbers[:-1]:
            self.lake.delete(_path(older))
        return True

    def _numbers(self) -> list[int]:
        names = self.lake.list_names(LEASE_DIR)  # also holds temporary files of local creates
        return [int(m.group(1)) for n in names if (m := _RECORD.fullmatch(n))]


class Hold:
    """A held lease, renewed by a heartbeat thread until released."""

    def __init__(
        self, lease: WriterLease, number: int, holder: Holder, abandoned_run: str | None = None
    ) -> None:
        self.lease = lease
        self.number = number
        self.holder = holder
        self.abandoned_run = abandoned_run  # of the holder this one took the lease over from
        self.taken_by: str | None = None  # who took the lease over, once another writer did
        self._renewed = _now()  # when its latest record was published
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="lake-writer-lease", daemon=True)
        self._beat.start()

    def check(self) -> None:
        """`LeaseLostError` if the lease was taken over: a writer stops before writing more. A
        holder whose latest record is older than a beat (or half its life) was paused or
        stalled, and another writer may have taken over meanwhile: it asks the lake, by
        renewing, before its heartbeat would."""
        beat = min(self.lease.renew_seconds, self.lease.ttl_seconds / 2)
        if _now() - self._renewed > timedelta(seconds=beat):
            self.renew()
        if self.taken_by is not None:
            raise LeaseLostError(
                f"the lake writer lease of {self.lease.lake.url} was taken over by "
                f"{self.taken_by} after this process did not renew it for "
                f"{self.lease.ttl_seconds:g} s; stopping before writing more"
            )

    def renew(self, holder: Holder | None = None) -> None:
        """A new record for this holder (or its new description `holder`)."""
        with self._lock:
            if self.taken_by is not None:
                return
            holder = holder or self.holder
            if self.lease._publish(self.number + 1, holder):
                self.number, self.holder, self._renewed = self.number + 1, holder, _now()
                return
            current = self.lease.current()
            self.taken_by = (
                current.holder.describe() if current and current.holder else "another writer"
            )

    @contextmanager
    def running(self, run_id: str | None) -> Iterator[Hold]:
        """This holder executes the Dagster run `run_id` meanwhile (recorded in the lease)."""
        outer = self.holder
        self.renew(replace(outer, run_id=run_id))
        try:
            yield self
        finally:
            self.renew(outer)

    def release(self) -> None:
        self._stop.set()
        self._beat.join()
        with self._lock:
            if self.taken_by is None:
                self.lease._publish(self.number + 1, None)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease.renew_seconds):
            # A store unreachable for one beat is retried at the next; the lease is only lost
            # when another writer takes it over.
            with contextlib.suppress(Exception):
                self.renew()


_HELD: dict[str, Hold] = {}
_HELD_LOCK = threading.Lock()


@contextmanager
def lake_writer(
    lake: LakeStorage,
    entry: str,
    wait_seconds: float,
    log: Callable[[str], None],
    run_id: str | None = None,
) -> Iterator[Hold]:
    """Hold the writer lease of `lake` meanwhile. Re-entrant: a process that already holds it
    (a CLI command executing its runs) keeps it, and records the run it executes."""
    key = lake.uri(LEASE_DIR)
    with _HELD_LOCK:
        held = _HELD.get(key)
    if held is not None:
        with held.running(run_id):
            yield held
        return
    hold = WriterLease(lake).acquire(Holder.here(entry, run_id), wait_seconds, log)
    with _HELD_LOCK:
        _HELD[key] = hold
    try:
        yield hold
    except BaseException:
        _forget(key)
        # A release failing too (the disk full that failed the work) must not hide why the
        # work failed; its last record then expires, or a waiter here finds this process gone.
        with contextlib.suppress(LakeFileError):
            hold.release()
        raise
    _forget(key)
    hold.release()


def _forget(key: str) -> None:
    with _HELD_LOCK:
        del _HELD[key]


def run_entry(tags: Mapping[str, str]) -> str:
    """The entry point that launched a Dagster run, from its tags."""
    if name := tags.get("dagster/sensor_name"):
        return f"sensor run ({name})"
    if name := tags.get("dagster/schedule_name"):
        return f"schedule run ({name})"
    if backfill := tags.get("dagster/backfill"):
        return f"backfill run ({backfill})"
    return "UI run"


def _path(number: int) -> str:
    return f"{LEASE_DIR}/{number:010d}.json"


def _now() -> datetime:
    return datetime.now(UTC)
