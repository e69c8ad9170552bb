"""The command line's grammar: commands, options and their validation, and nothing they run —
`--help` and usage mistakes answer without loading Dagster, Spark or Delta."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import NoReturn, TypeVar

from spotify_assets.catalog.tables import CATALOG, CatalogError
from spotify_assets.source.simulator import SimulationRates

DEFAULT_SCALE = 0.1
DEFAULT_SEED = 42
DEMO_DAYS = 3
# The demo's own home under SPOTIFY_HOME, recreated by every demo; and how long a demo takes.
DEMO_HOME = "demo"
DEMO_DURATION = "about 75 s on an idle 2-core machine, several minutes on a busy one"

T = TypeVar("T")


class UsageError(ValueError):
    """A mistake on the command line, said in one line."""


class _Parser(argparse.ArgumentParser):
    """Usage mistakes raise `UsageError` for `main` to print as one line, like every other
    validation (argparse's default is the usage block, then the message)."""

    def error(self, message: str) -> NoReturn:
        if unknown := _INVALID_CHOICE.match(message):
            # "argument source_command: invalid choice: 'frob' (choose from 'init', …)"
            # -> "source frob: expected a command: init, …"
            typed = " ".join([*self.prog.split()[1:], unknown["value"]])
            choices = unknown["choices"].replace("'", "")
            raise UsageError(f"{typed}: expected a command: {choices} (see `{self.prog} --help`)")
        # "argument --from: 2026/11/20: expected …" -> "--from 2026/11/20: expected …"
        raise UsageError(re.sub(r"^argument (-[^:]+): ", r"\1 ", message))


_INVALID_CHOICE = re.compile(
    r"^argument \w+: invalid choice: '?(?P<value>[^']*?)'? \(choose from (?P<choices>.*)\)$"
)


def _checked(
    convert: Callable[[str], T], valid: Callable[[T], bool], expected: str
) -> Callable[[str], T]:
    """An argparse type: `convert`, then `valid`, else "<value>: expected <expected>"."""

    def parse(text: str) -> T:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text}: expected {expected}") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"{text}: expected {expected}")
        return value

    return parse


_day = _checked(date.fromisoformat, lambda _: True, "YYYY-MM-DD")
_positive = _checked(float, lambda x: 0 < x < math.inf, "a number above 0")
_fraction = _checked(float, lambda x: 0 <= x <= 1, "a fraction between 0 and 1")
_days = _checked(int, lambda n: n >= 1, "a whole number of at least 1")


_TABLE_NAMES = ", ".join(f"{t.name} or {t.lake_name}" for t in CATALOG)


def _table(text: str) -> str:
    """A table of the catalog by its source or lake name; the source name from then on."""
    try:
        return CATALOG[text].name
    except CatalogError:
        raise argparse.ArgumentTypeError(
            f"{text}: expected a table of the catalog: {_TABLE_NAMES}"
        ) from None


def _tables_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--tables",
        nargs="+",
        default=(),
        type=_table,
        metavar="TABLE",
        help=f"{what} only these tables, by source or lake name ({_TABLE_NAMES}); default: all",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="spotify-lakehouse",
        description="Spotify listening-data lakehouse: an operational source copied to bronze, "
        "silver and gold on a Delta lake. Settings come from the environment (SPOTIFY_HOME, "
        "default ./.data of the current directory; see the README).",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    source = commands.add_parser("source", help="the operational source database")
    source_commands = source.add_subparsers(dest="source_command", required=True)
    init = source_commands.add_parser("init", help="create and fill the source database")
    init.add_argument(
        "--scale",
        type=_positive,
        default=DEFAULT_SCALE,
        help=f"1 = 100k users, 5M streams over 90 days (default {DEFAULT_SCALE})",
    )
    init.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"seed of the generator: the same seed, the same data (default {DEFAULT_SEED})",
    )
    init.add_argument(
        "--end-date",
        type=_day,
        default=None,
        metavar="YYYY-MM-DD",
        help="day after the last generated day, today or earlier (default: today, UTC)",
    )
    init.add_argument(
        "--history-days",
        type=_days,
        default=None,
        metavar="N",
        help="days of history the streams spread over (default 90)",
    )
    init.add_argument("--force", action="store_true", help="drop and recreate an existing source")

    sim = source_commands.add_parser("simulate", help="advance the source N days of changes")
    sim.add_argument(
        "--days",
        type=_days,
        required=True,
        metavar="N",
        help="simulated days to advance the source's clock by, never past the current UTC time",
    )
    sim.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the changes (default: that of `source init`)",
    )
    defaults = SimulationRates()
    sim.add_argument(
        "--late-fraction",
        type=_fraction,
        default=defaults.late_fraction,
        metavar="F",
        help=f"share of streams that arrive days late (default {defaults.late_fraction})",
    )
    sim.add_argument(
        "--dirty-fraction",
        type=_fraction,
        default=defaults.dirty_fraction,
        metavar="F",
        help=f"share of changed rows with invalid values for silver to quarantine "
        f"(default {defaults.dirty_fraction})",
    )

    source_commands.add_parser("stats", help="row and change counts per table, as JSON")
    source_commands.add_parser(
        "attach",
        help="prepare a database whose five tables you created and filled: checks their "
        "columns, adds the clock and settings tables and the change capture (<Table>_changes "
        "and triggers) of the tables in cdc mode; safe to re-run",
    )

    run_parser = commands.add_parser("run", help="bring every layer up to date with the source")
    _tables_option(run_parser, "load")
    snapshots = ", ".join(t.name for t in CATALOG if not t.change_time_column)
    refresh_parser = commands.add_parser(
        "refresh",
        help="re-extract a range of days from the source and rebuild them in each layer",
        description="Re-extracts the days --from..--to of the tables with a change time and "
        "rebuilds those days in silver, gold and the aggregates (snapshot tables are copied whole "
        f"by every run: {snapshots}).",
    )
    refresh_parser.add_argument(
        "--from", dest="first", type=_day, required=True, metavar="YYYY-MM-DD", help="first day"
    )
    refresh_parser.add_argument(
        "--to",
        dest="last",
        type=_day,
        required=True,
        metavar="YYYY-MM-DD",
        help="last day (included), today or earlier",
    )
    _tables_option(refresh_parser, "refresh")
    verify_parser = commands.add_parser(
        "verify", help="check bronze manifests and files and the Delta logs against each other"
    )
    verify_parser.add_argument(
        "--repair", action="store_true", help="rebuild what is damaged from the layer below"
    )
    _tables_option(verify_parser, "check")
    commands.add_parser(
        "demo",
        help=f"the pipeline end to end on a fresh demo home, $SPOTIFY_HOME/{DEMO_HOME}",
        description=f"Removes and recreates $SPOTIFY_HOME/{DEMO_HOME} (its source, lake and "
        "Dagster instance; with SPOTIFY_SOURCE_ODBC set, that source is dropped and recreated "
        f"instead), generates a source at scale {DEFAULT_SCALE}, loads it "
        f"through to gold, simulates {DEMO_DAYS} days of changes, lets the sensors catch up, "
        f"refreshes the last two days and prints rows per layer and timings: {DEMO_DURATION}.",
    )
    adf = commands.add_parser("adf", help="Azure Data Factory JSON")
    adf_commands = adf.add_subparsers(dest="adf_command", required=True)
    adf_build_parser = adf_commands.add_parser("build", help="generate it from the catalog")
    adf_build_parser.add_argument(
        "--out", type=Path, default=Path("adf"), help="directory to write to (default: ./adf)"
    )
    return parser
