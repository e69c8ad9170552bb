"""A fake Azure Resource Manager for the Data Factory resource: a requests adapter that records
every request and plays back the documented REST responses (2018-06-01 examples)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import RequestsTransport

from resources.adf import ARM_ENDPOINT, AdfClient, DataFactoryResource
from spotify_assets.bronze import adf_pipeline as adf

SUBSCRIPTION, GROUP, FACTORY = "12345678-1234-1234-1234-12345678abc", "myResourceGroup", "myFactory"
FACTORY_PATH = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}"
    f"/providers/Microsoft.DataFactory/factories/{FACTORY}"
)
RUN_ID = "2f7fdb90-5df1-4b8e-ac2f-064cfa58202b"


@dataclass
class Sent:
    method: str
    path: str  # below the factory
    query: dict[str, list[str]]
    body: Any
    headers: dict[str, str]


class FakeArm(requests.adapters.BaseAdapter):
    """Records every request and answers with the documented REST shapes (2018-06-01 examples)."""

    def __init__(self, statuses: list[str], activity_runs: list[dict], message: str = "") -> None:
        super().__init__()
        self.sent: list[Sent] = []
        self.statuses = statuses
        self.activity_runs = activity_runs
        self.message = message
        # Answers that come first for a request, one per attempt.
        self.errors: dict[tuple[str, str], list[tuple[int, dict]]] = {}

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        url = urlsplit(request.url or "")
        assert url.scheme == "https" and url.path.startswith(FACTORY_PATH), request.url
        path = url.path.removeprefix(FACTORY_PATH)
        body = json.loads(request.body) if request.body else None
        self.sent.append(
            Sent(request.method or "", path, parse_qs(url.query), body, dict(request.headers))
        )
        queued = self.errors.get((request.method or "", path))
        status, payload = queued.pop(0) if queued else self.answer(request.method or "", path, body)
        response = requests.Response()
        response.status_code, response.reason = status, "OK" if status < 400 else "Bad Request"
        response.raw = io.BytesIO(b"" if payload is None else json.dumps(payload).encode())
        response.headers["Content-Type"] = "application/json"
        response.url, response.request = request.url or "", request
        return response

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if method == "PUT":
            name = path.rsplit("/", 1)[-1]
            return 200, {"id": FACTORY_PATH + path, "name": name, "etag": "0a00", **body}
        if path.endswith("/createRun"):
            return 200, {"runId": RUN_ID}
        if path == f"/pipelineruns/{RUN_ID}":
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            finished = status in ("Succeeded", "Failed", "Cancelled")
            return 200, {
                "runId": RUN_ID,
                "pipelineName": adf.PIPELINE_NAME,
                "parameters": {},
                "invokedBy": {"id": "80a01654a9d34ad18b3fcac5d5d76b67", "name": "Manual"},
                "runStart": "2026-03-04T05:06:07.6257014Z",
                "runEnd": "2026-03-04T05:09:12.7314495Z" if finished else None,
                "durationInMs": 185105 if finished else None,
                "status": status,
                "message": self.message if status == "Failed" else "",
                "lastUpdated": "2026-03-04T05:09:12.7314495Z",
                "annotations": [],
            }
        if path == f"/pipelineruns/{RUN_ID}/queryActivityruns":
            return 200, {"value": self.activity_runs}
        if path == f"/pipelineruns/{RUN_ID}/cancel":
            return 200, None
        raise AssertionError(f"unexpected {method} {path}")

    def close(self) -> None:
        pass


def copy_run(table: str, status: str, rows: int, window: tuple[str, str], error: str = "") -> dict:
    """An activity run of the Copy as queryActivityruns returns it."""
    return {
        "activityName": adf.COPY,
        "activityType": "Copy",
        "activityRunId": f"run-{table}-{status}",
        "activityRunStart": "2026-03-04T05:06:20.2460952Z",
        "activityRunEnd": "2026-03-04T05:07:07.4188923Z",
        "durationInMs": 47172,
        "retryAttempt": None,
        "pipelineName": adf.PIPELINE_NAME,
        "pipelineRunId": RUN_ID,
        "status": status,
        "input": {"source": {"type": "AzureSqlSource"}, "sink": {"type": "ParquetSink"}},
        "linkedServiceName": "",
        "userProperties": {
            "table": table,
            "window_start": window[0],
            "window_end": window[1],
            "file": f"bronze/{table}/_adf/landing/{RUN_ID}.parquet",
        },
        "output": (
            {"rowsRead": rows, "rowsCopied": rows, "dataRead": 1000 * rows, "filesWritten": 1}
            if status == "Succeeded"
            else {}
        ),
        "error": {
            "errorCode": "2200" if error else "",
            "message": error,
            "failureType": "UserError" if error else "",
            "target": adf.COPY,
        },
    }


class FakeCredential:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        assert scopes == ("https://management.azure.com/.default",)
        return AccessToken("fake-token", 4_102_444_800)


def client_for(
    arm: FakeArm, sleep: Callable[[float], None] = lambda seconds: None, **settings: Any
) -> AdfClient:
    """The resource's client, talking to `arm` with a fake credential and a fake sleep."""
    session = requests.Session()
    session.mount(ARM_ENDPOINT, arm)
    resource = DataFactoryResource(
        subscription_id=SUBSCRIPTION, resource_group=GROUP, factory_name=FACTORY, **settings
    )
    return resource.client(FakeCredential(), RequestsTransport(session=session), sleep)
