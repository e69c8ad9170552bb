"""A process named so that whether it still runs can be told later, from another process: its
pid, when that pid's process started (a reused pid names another process) and this machine (the
boot and pid namespace in which a pid names one process)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    started: int = 0  # clock ticks since boot; 0 where unknown (known by its pid alone)
    machine: str = ""  # "" where unknown: no liveness check

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity:
        return cls(pid, _started(pid) or 0, this_machine())

    def lives(self) -> bool | None:
        """Whether the process still runs, paused or not; None where unknowable (another
        machine)."""
        if not self.machine or self.machine != this_machine():
            return None
        started = _started(self.pid)
        return started is not None and self.started in (0, started)

    def __str__(self) -> str:
        return f"{self.pid} {self.started} {self.machine}"

    @classmethod
    def parse(cls, text: str) -> ProcessIdentity:
        pid, started, *machine = text.split(" ", 2)
        return cls(int(pid), int(started), machine[0] if machine else "")


def this_machine() -> str:
    """This boot of this kernel and this pid namespace: where a pid names one process."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _started(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot); None if there is none or it has
    ended (a zombie, killed but not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # from the state on: fields 3.. of proc(5)
    return None if fields[0] == "Z" else int(fields[19])
