"""The Spark Connect requests a piece of code sends, recorded as they leave the client: what a
test of how often files are read counts (each request naming a file makes Sail plan it)."""

from __future__ import annotations

from typing import Any

import pytest
from pyspark.sql.connect.client import SparkConnectClient


def record_requests(monkeypatch: pytest.MonkeyPatch, analyses: bool = True) -> list[bytes]:
    """Every request (analyses, unless not `analyses`, and executions) sent from now until the
    test ends, serialized."""
    requests: list[bytes] = []
    execute, analyze = SparkConnectClient._execute_and_fetch, SparkConnectClient._analyze

    def executed(client: SparkConnectClient, request: Any, *args: Any, **kwargs: Any) -> Any:
        requests.append(request.SerializeToString())
        return execute(client, request, *args, **kwargs)

    def analysed(client: SparkConnectClient, method: str, **kwargs: Any) -> Any:
        requests.append(kwargs["plan"].SerializeToString() if "plan" in kwargs else b"")
        return analyze(client, method, **kwargs)

    monkeypatch.setattr(SparkConnectClient, "_execute_and_fetch", executed)
    if analyses:
        monkeypatch.setattr(SparkConnectClient, "_analyze", analysed)
    return requests


def naming(requests: list[bytes], paths: list[str]) -> list[bytes]:
    """The requests that name one of `paths`."""
    return [r for r in requests if any(p.encode() in r for p in paths)]
