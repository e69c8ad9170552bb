"""Source-system figures: creating a scale-S SQLite source, and simulator throughput.

    .venv/bin/python benchmarks/bench_source.py [--scale 1] [--days 3]

Prints seconds to create the source (goal at scale 1: under 60 s on the 2-core reference
machine), rows/s of the pure simulator (numpy/pyarrow, no database) and rows/s of
`source simulate` end to end (state read, batches applied, triggers firing).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from spotify_assets.cli.commands import source_init, source_simulate
from spotify_assets.orchestration.settings import Settings
from spotify_assets.source.generator import generate
from spotify_assets.source.simulator import SimulationRates, simulate, state_from_initial

SEED = 42


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--days", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="spotify-bench-") as home:
        settings = Settings.from_env({"SPOTIFY_HOME": home})
        end = datetime.now(UTC).date()

        started = time.perf_counter()
        data = generate(args.scale, SEED, end)
        for _ in data.stream_batches():
            pass
        generate_s = time.perf_counter() - started

        created = source_init(settings, args.scale, SEED, end, force=True)
        size_mib = Path(settings.embedded_source_path).stat().st_size / 2**20

        state = state_from_initial(data)
        started = time.perf_counter()
        pure_rows = sum(b.row_count() for b in simulate(state, args.days, SEED))
        pure_s = time.perf_counter() - started

        simulated = source_simulate(settings, args.days, SEED, SimulationRates())

    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = [
        ("generate (no database)", f"{generate_s:.1f} s", f"{created['rows'] / generate_s:,.0f}"),
        ("create SQLite source", f"{created['seconds']:.1f} s",
         f"{created['rows'] / created['seconds']:,.0f}"),
        (f"simulate {args.days} days, pure", f"{pure_s:.2f} s", f"{pure_rows / pure_s:,.0f}"),
        (f"simulate {args.days} days, into SQLite", f"{simulated['seconds']:.2f} s",
         f"{simulated['rows_per_second']:,}"),
    ]  # fmt: skip
    print(f"scale {args.scale}: {created['rows']:,} rows, source file {size_mib:,.0f} MiB")
    print(f"{'step':<34}{'wall time':>12}{'rows/s':>14}")
    for step, wall, rate in rows:
        print(f"{step:<34}{wall:>12}{rate:>14}")
    print(f"peak memory (RSS): {peak_mib:,.0f} MiB")


if __name__ == "__main__":
    main()
