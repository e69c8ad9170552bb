"""Dagster resources and the I/O they wrap: the lake, the source database, Spark, the copy
runners and the engines. Which set a deployment uses is wired in
`spotify_assets/orchestration/resources.py`."""
