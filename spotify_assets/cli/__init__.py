"""`spotify-lakehouse`: the command line of the product."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from spotify_assets.cli.parser import UsageError, build_parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Imported once the command line is valid: Dagster, Spark and Delta cost seconds to load,
    # which `--help` and a mistyped option should not.
    from spotify_assets.cli.commands import run_command

    return run_command(args)
