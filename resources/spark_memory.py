"""The memory of Sail's queries, a setting read (by `Settings`) without loading Spark or Dagster,
and the environment that bounds a Sail server's memory: the one in process and, in the tests and
benchmarks, a server of its own (README: Spark elsewhere)."""

from collections.abc import Mapping

# SPOTIFY_SPARK_MEMORY_GIB: with the rest of a run (Dagster, Python, Arrow buffers) a first load
# then peaks below 2 GiB whatever the data's size.
DEFAULT_MEMORY_POOL_GIB = 1.0
MEMORY_SETTING = "SPOTIFY_SPARK_MEMORY_GIB"

# Sail allocates with mimalloc, which by default keeps freed pages committed for a while and
# commits its arenas eagerly: a first load at scale 1 grew step by step to 3.1-3.9 GiB of RSS
# and never gave it back. Returning pages at once keeps it under 1 GiB at no measured cost
# (benchmarks/README.md). mimalloc reads these as the library loads; values already set win.
_ALLOCATOR = {"MIMALLOC_PURGE_DELAY": "0", "MIMALLOC_ARENA_EAGER_COMMIT": "0"}


def sail_memory_env(memory_pool_gib: float, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables a Sail server reads as it starts that bound its memory: its queries share a
    fair pool of `memory_pool_gib` (unbounded, Sail's default, they grow with the data; in the
    pool, sorts, aggregations and joins spill to disk past their share), and its allocator
    returns freed pages at once (unless `environ` sets it otherwise)."""
    allocator = {name: environ.get(name, value) for name, value in _ALLOCATOR.items()}
    return {
        "SAIL_RUNTIME__MEMORY_POOL__TYPE": "fair",
        "SAIL_RUNTIME__MEMORY_POOL__FAIR__MAX_SIZE": str(int(memory_pool_gib * 2**30)),
        **allocator,
    }
