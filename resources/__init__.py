"""The I/O of the pipeline: the lake, the source database, Spark, the copy runners and the
engines, and the Dagster resources over them (`dagster_resources.py`; the lake, the source and
the copy runner are plain objects first). Which set a deployment uses is wired in
`spotify_assets/orchestration/run_resources.py`."""
