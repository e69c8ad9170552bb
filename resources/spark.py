"""Spark sessions over Spark Connect: Sail in process (the embedded default) or any `sc://` URL.

A session is created once per process, on first use (a run with nothing to do never starts
Sail), and shut down cleanly when the process exits.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from enum import StrEnum

from dagster import ConfigurableResource
from pydantic import Field
from pyspark.sql import SparkSession

from resources.lake import object_store_env_from_connection_string
from resources.rust_log import quiet_rust_logs
from resources.spark_memory import DEFAULT_MEMORY_POOL_GIB, sail_memory_env


class SparkKind(StrEnum):
    SAIL = "sail"  # pysail's Spark Connect server, in this process
    REMOTE = "remote"  # any Spark Connect endpoint, e.g. sc://host:15002


class SparkConfigError(ValueError):
    pass


# Spark's setting for the call sites of DataFrame calls in server errors' query context.
DATAFRAME_DEBUGGING = "spark.python.sql.dataFrameDebugging.enabled"

_lock = threading.Lock()
_sessions: dict[str, SparkSession] = {}
_servers: list[object] = []


def _start_sail(memory_pool_gib: float) -> str:
    # Sail logs through Rust's env_logger; keep its chatter (INFO per session) out of run logs.
    quiet_rust_logs()
    # Bounded, so that a first load's queries spill to disk instead of growing with the data.
    os.environ.update(sail_memory_env(memory_pool_gib, os.environ))
    # The server serves this process alone, whose session is kept for its lifetime: Sail would
    # end it after spark.session_timeout_secs idle (900 s), failing a long-lived process's next
    # query (a code server, a test worker).
    os.environ["SAIL_SPARK__SESSION_TIMEOUT_SECS"] = str(10 * 365 * 24 * 3600)
    # Sail's server reads its Azure settings from the environment once, as it starts, and knows
    # no connection strings: give it the account the lake uses (resources/lake.py).
    os.environ.update(object_store_env_from_connection_string(os.environ))
    from pysail.spark import SparkConnectServer

    server = SparkConnectServer(ip="127.0.0.1", port=0)
    server.start(background=True)
    _servers.append(server)
    host, port = server.listening_address
    return f"sc://{host}:{port}"


@atexit.register
def _shutdown() -> None:
    for session in _sessions.values():
        session.stop()
    _sessions.clear()
    for server in _servers:
        server.stop()  # type: ignore[attr-defined]
    _servers.clear()


class SparkResource(ConfigurableResource):
    """The compute engine of silver and gold; the transforms never know which one it is."""

    kind: SparkKind = Field(default=SparkKind.SAIL, description="sail or remote")
    remote_url: str = Field(default="", description="sc://host:port when kind is remote")
    memory_pool_gib: float = Field(
        default=DEFAULT_MEMORY_POOL_GIB,
        gt=0,
        description="memory of the queries of Sail in process; past it they spill to disk",
    )

    def session(self) -> SparkSession:
        with _lock:
            key = self.kind.value if self.kind is SparkKind.SAIL else self.remote_url
            if key not in _sessions:
                _sessions[key] = self._connect()
            return _sessions[key]

    def _connect(self) -> SparkSession:
        if self.kind is SparkKind.SAIL:
            url = _start_sail(self.memory_pool_gib)
        elif self.remote_url.startswith("sc://"):
            url = self.remote_url
        else:
            raise SparkConfigError(
                f"remote Spark needs an sc://host:port URL (SPOTIFY_SPARK_REMOTE); got "
                f"{self.remote_url!r}"
            )
        _quiet_client()
        session = SparkSession.builder.remote(url).getOrCreate()
        # First, before pyspark reads it once for the process: on (its default), every DataFrame
        # and Column call walks the Python stack, and tries to import IPython, to tell the server
        # where it was made: ~0.1 ms a call, ten times its own work, and a run makes thousands.
        session.conf.set(DATAFRAME_DEBUGGING, "false")
        session.conf.set("spark.sql.session.timeZone", "UTC")
        return session


def _quiet_client() -> None:
    """Keep the Spark Connect client's logger off unless SPARK_CONNECT_LOG_LEVEL asks for it.
    pyspark turns it off by `disabled`, which `logging.config.dictConfig` (Dagster calls it)
    resets on every existing logger: a failed query then printed its gRPC error and stack trace
    as JSON beside the run's one-line error. A level survives dictConfig."""
    from pyspark.sql.connect.logging import logger

    if "SPARK_CONNECT_LOG_LEVEL" not in os.environ:
        logger.setLevel(logging.CRITICAL + 1)
