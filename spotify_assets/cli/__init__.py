"""`spotify-lakehouse`: the command line of the product."""

from __future__ import annotations

import atexit
import os
import signal
import sys
from collections.abc import Sequence

from spotify_assets.cli.parser import UsageError, build_parser

# The exit code of a command stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
INTERRUPTED = 130
# What an interrupted command that writes (or repairs) the lake leaves: its commits, each whole.
LAKE_COMMANDS = ("run", "refresh", "verify", "demo")
STOPPED = (
    "error: interrupted: the lake keeps every step committed before it; "
    "`spotify-lakehouse run` resumes from there"
)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line `argv`. Without it (the console script, `python -m spotify_assets.cli`)
    the command is the process's whole work, which ends once its exit handlers have run."""
    if argv is not None:
        return _command(argv)
    # Registered before the command imports anything: exit handlers run last registered first,
    # so this one runs after all of them.
    code: list[int] = []
    atexit.register(_end_process, code)
    code.append(_command(argv))
    return code[0]


def _end_process(code: list[int]) -> None:
    """End the process with the command's exit `code` (none: it raised, and the interpreter
    ends as usual), skipping the interpreter's teardown: freeing every module, Sail's native
    server state among them, cost ~1 CPU s after a run, for nothing another process sees. By
    now the threads are joined, the exit handlers have run (Spark stopped, Dagster's storage
    closed, logging flushed) and the lake's and the source's writes are committed."""
    if code:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code[0])


def _command(argv: Sequence[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # A service manager's SIGTERM stops a command as Ctrl-C does (Dagster, during a run, maps
    # both to its own interrupt, which fails the run's step and then stops the command). SIGINT
    # too where it started ignored (a script's background job): Dagster heeds it during runs,
    # so the command heeds it throughout.
    previous = {
        signum: signal.signal(signum, signal.default_int_handler)
        for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        # Imported once the command line is valid: Dagster, Spark and Delta cost seconds to
        # load, which `--help` and a mistyped option should not.
        from spotify_assets.cli.commands import run_command

        return run_command(args)
    except KeyboardInterrupt:
        print(STOPPED if args.command in LAKE_COMMANDS else "error: interrupted", file=sys.stderr)
        return INTERRUPTED
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
