"""Dagster's local compute logs, without passing a terminal's Ctrl-C to their helpers.

While a run executes, Dagster's local compute log manager copies the process's stdout and
stderr to files under the instance's `storage/` (the UI shows them) and mirrors them back to the
terminal through a `tail` child and a Python watcher child. Both are in the command's process
group, so a Ctrl-C at the terminal reached them too, and the watcher printed a KeyboardInterrupt
traceback above the CLI's one line. Here they are started with SIGINT blocked, a mask children
keep across exec: Dagster still stops them (SIGTERM) when the capture ends, and a Ctrl-C pressed
while they start waits, pending, for this process.

The instance the CLI creates (`spotify_assets/cli/commands.py`) names this class in its
`dagster.yaml`.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager

from dagster._core.storage.compute_log_manager import CapturedLogContext
from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager
from dagster._serdes import ConfigurableClassData

from resources.dagster_storage import ConfiguredByHome


class InterruptibleComputeLogManager(ConfiguredByHome, LocalComputeLogManager):
    """`LocalComputeLogManager` (the same files) whose helpers start with SIGINT blocked."""

    @classmethod
    def from_config_value(  # ty: ignore[invalid-method-override]
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, str]
    ) -> InterruptibleComputeLogManager:
        storage = os.path.join(config_value["dagster_home"], "storage")
        return cls(base_dir=storage, inst_data=inst_data)

    @contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Iterator[CapturedLogContext]:
        with ExitStack() as capture:
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                context = capture.enter_context(super().capture_logs(log_key))
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
            yield context
