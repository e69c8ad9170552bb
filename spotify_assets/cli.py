"""`spotify-lakehouse`: the command line of the product (DESIGN.md §10)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

from tqdm import tqdm

from resources import source_database
from resources.odbc import Dialect, SourceConfigError, SourceUnavailableError
from resources.source_db import SourceDatabase
from spotify_assets.catalog import CatalogError
from spotify_assets.generator import generate
from spotify_assets.settings import Settings
from spotify_assets.simulator import ChangeBatch, SimulationRates, simulate

DEFAULT_SCALE = 0.1
DEFAULT_SEED = 42
DEMO_DAYS = 3
_DAYS_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n:.2f}/{total} days [{elapsed}<{remaining}]"


def _source(settings: Settings) -> SourceDatabase:
    return source_database(settings, in_dagster=False)


def source_init(
    settings: Settings, scale: float, seed: int, end: date, force: bool = False
) -> dict[str, object]:
    """Create the source database with a generated history ending at `end` (exclusive)."""
    source = _source(settings)
    if source.exists():
        if not force:
            raise SourceConfigError(
                "the source already holds Spotify tables; pass --force to drop and recreate them"
            )
        _drop(source)
    if source.dialect is Dialect.SQLITE:
        source.sqlite_path().parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = generate(scale, seed, end)
    total = sum(t.num_rows for t in data.dims.values()) + data.shape.streams
    meta = {"seed": seed, "scale": scale, "history_start": data.start, "history_end": data.end}
    with (
        source.session() as session,
        tqdm(total=total, unit="rows", unit_scale=True, desc="loading source") as bar,
    ):
        if source.dialect is Dialect.SQLITE:
            session.execute("PRAGMA journal_mode=WAL")
        loaded = session.load_initial(data, meta, on_rows=bar.update)
    return {
        "rows": loaded,
        "seconds": round(time.perf_counter() - started, 2),
        "history": [data.start.isoformat(), data.end.isoformat()],
    }


def _drop(source: SourceDatabase) -> None:
    if source.dialect is Dialect.SQLITE:
        path = source.sqlite_path()
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        return
    with source.session() as session:
        session.drop_all()


def source_simulate(
    settings: Settings, days: int, seed: int | None, rates: SimulationRates
) -> dict[str, object]:
    """Advance the source `days` simulated days of inserts, updates, deletes and late data."""
    if days < 1:
        raise SourceConfigError(f"--days must be at least 1 (got {days})")
    source = _source(settings)
    source.require_initialised()
    started = time.perf_counter()
    with source.session() as session:
        state = session.read_state()
        run_seed = int(session.meta()["seed"]) if seed is None else seed
        start_clock = state.clock
        with tqdm(total=days, unit="day", desc="simulating", bar_format=_DAYS_BAR) as bar:

            def advance(batch: ChangeBatch) -> None:
                bar.update((batch.at - start_clock) / timedelta(days=1) - bar.n)

            changed = session.apply(simulate(state, days, run_seed, rates), on_batch=advance)
    seconds = time.perf_counter() - started
    return {
        "days": days,
        "from": start_clock.isoformat(sep=" "),
        "to": state.clock.isoformat(sep=" "),
        "rows_changed": changed,
        "seconds": round(seconds, 2),
        "rows_per_second": round(changed / seconds) if seconds else None,
    }


def source_stats(settings: Settings) -> dict[str, object]:
    source = _source(settings)
    source.require_initialised()
    with source.session() as session:
        return session.stats()


def demo(settings: Settings) -> None:
    """What exists so far, end to end: a source, a few simulated days, its statistics."""
    today = datetime.now(UTC).date()
    _print(source_init(settings, DEFAULT_SCALE, DEFAULT_SEED, today - timedelta(DEMO_DAYS), True))
    _print(source_simulate(settings, DEMO_DAYS, None, SimulationRates()))
    _print(source_stats(settings))
    print(
        "\nOpen the Dagster UI with:  .venv/bin/dagster dev -w workspace.yaml"
        f"\n(source: {settings.embedded_source_path if not settings.source_odbc else 'configured'})"
    )


def _print(payload: dict[str, object]) -> None:
    print(json.dumps(payload, indent=2, default=str))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spotify-lakehouse", description="Spotify listening-data lakehouse."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    source = commands.add_parser("source", help="the operational source database")
    source_commands = source.add_subparsers(dest="source_command", required=True)
    init = source_commands.add_parser("init", help="create and fill the source database")
    init.add_argument(
        "--scale",
        type=float,
        default=DEFAULT_SCALE,
        help=f"1 = 100k users, 5M streams over 90 days (default {DEFAULT_SCALE})",
    )
    init.add_argument("--seed", type=int, default=DEFAULT_SEED)
    init.add_argument(
        "--end-date",
        type=date.fromisoformat,
        default=None,
        help="day after the last generated day (default: today, UTC)",
    )
    init.add_argument("--force", action="store_true", help="drop and recreate an existing source")

    sim = source_commands.add_parser("simulate", help="advance the source N days of changes")
    sim.add_argument("--days", type=int, required=True)
    sim.add_argument("--seed", type=int, default=None, help="default: the seed of `source init`")
    defaults = SimulationRates()
    sim.add_argument("--late-fraction", type=float, default=defaults.late_fraction)
    sim.add_argument("--dirty-fraction", type=float, default=defaults.dirty_fraction)

    source_commands.add_parser("stats", help="row and change counts per table, as JSON")
    commands.add_parser("demo", help="run the embedded demo end to end")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.command == "demo":
            demo(settings)
        elif args.source_command == "init":
            end = args.end_date or datetime.now(UTC).date()
            _print(source_init(settings, args.scale, args.seed, end, args.force))
        elif args.source_command == "simulate":
            rates = SimulationRates(
                late_fraction=args.late_fraction, dirty_fraction=args.dirty_fraction
            )
            _print(source_simulate(settings, args.days, args.seed, rates))
        else:
            _print(source_stats(settings))
    except (SourceConfigError, SourceUnavailableError, CatalogError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
