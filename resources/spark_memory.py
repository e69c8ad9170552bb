"""The memory of Sail's queries in process, a setting read (by `Settings`) without loading Spark
or Dagster."""

# SPOTIFY_SPARK_MEMORY_GIB: with the rest of a run (Dagster, Python, Arrow buffers) a first load
# then peaks below 2 GiB whatever the data's size.
DEFAULT_MEMORY_POOL_GIB = 1.0
MEMORY_SETTING = "SPOTIFY_SPARK_MEMORY_GIB"
