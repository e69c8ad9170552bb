"""Run-failure alert: a failed run POSTs `{pipeline_name, run_id, error}` to the
webhook in `SPOTIFY_ALERT_WEBHOOK`, once; no webhook or a failing one never breaks the sensor.

A real run fails (an asset raising, run in process) and the sensor is evaluated on it with
Dagster's testing API; the webhook is a local HTTP server on 127.0.0.1 that records requests.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from dagster import (
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DefaultSensorStatus,
    ExecuteInProcessResult,
    SkipReason,
    asset,
    build_run_status_sensor_context,
    materialize,
)

from spotify_assets.orchestration.definitions import build_definitions
from spotify_assets.orchestration.sensors.alerts import run_failure_alert
from spotify_assets.orchestration.settings import Settings
from tests.helpers.servers import free_port

MESSAGE = "the lake is on fire"
SIGNATURE = "sig=s3cr3t-signature"


@dataclass
class Request:
    method: str
    path: str
    content_type: str
    body: bytes


@dataclass
class Webhook:
    url: str
    status: int = 200
    requests: list[Request] = field(default_factory=list)


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Webhook]:
    """A webhook on 127.0.0.1 that records every request and answers with `status`."""
    # The sensor honours proxy settings (as a real webhook needs); this one is local.
    for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(proxy, raising=False)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            hook.requests.append(
                Request("POST", self.path, self.headers.get("Content-Type", ""), body)
            )
            self.send_response(hook.status)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep the test output to the sensor's own log lines

    # Port 0: the kernel picks a free port, with no window for another process to take it.
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook = Webhook(url=f"http://127.0.0.1:{server.server_address[1]}/hook?{SIGNATURE}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@asset
def exploding_asset() -> None:
    raise RuntimeError(MESSAGE)


@pytest.fixture(scope="module")
def failed_run() -> Iterator[tuple[DagsterInstance, ExecuteInProcessResult]]:
    with DagsterInstance.ephemeral() as instance:
        result = materialize([exploding_asset], instance=instance, raise_on_error=False)
        assert not result.success
        yield instance, result


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


def evaluate(
    failed_run: tuple[DagsterInstance, ExecuteInProcessResult],
    event: DagsterEvent | None = None,
) -> tuple[SkipReason | None, Records]:
    """Evaluate the sensor on the failed run's failure `event` (default: the one its execution
    reported) as the daemon would; returns what it returned and what it logged on its tick."""
    instance, result = failed_run
    context = build_run_status_sensor_context(
        sensor_name=run_failure_alert.name,
        dagster_event=event or result.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=result.dagster_run,
    )
    records = Records()
    context.log.addHandler(records)
    return run_failure_alert(context), records


def test_a_failed_run_posts_one_alert_with_its_error(
    webhook: Webhook, failed_run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPOTIFY_ALERT_WEBHOOK", webhook.url)
    outcome, logs = evaluate(failed_run)

    assert outcome is None
    [request] = webhook.requests
    assert (request.method, request.path) == ("POST", f"/hook?{SIGNATURE}")
    assert request.content_type == "application/json"
    alert = json.loads(request.body)
    run = failed_run[1].dagster_run
    assert set(alert) == {"pipeline_name", "run_id", "error"}
    assert alert["pipeline_name"] == run.job_name
    assert alert["run_id"] == run.run_id
    assert f"exploding_asset: RuntimeError: {MESSAGE}" in alert["error"]
    assert "Traceback" not in alert["error"] and 'File "' not in alert["error"]
    [sent] = logs.at(logging.INFO)
    assert run.run_id in sent and "/hook?***" in sent
    assert not any(SIGNATURE in r.getMessage() for r in logs.records)


def test_without_a_webhook_alerts_are_off(
    webhook: Webhook, failed_run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPOTIFY_ALERT_WEBHOOK", raising=False)
    outcome, logs = evaluate(failed_run)

    assert isinstance(outcome, SkipReason)
    assert webhook.requests == []
    assert any("alerts are off" in m for m in logs.at(logging.INFO))
    assert logs.at(logging.ERROR) == []


def test_a_run_failed_twice_posts_one_alert(
    webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run of a killed process can be failed twice, by the next command that takes the lake
    and by Dagster's run monitoring, a moment apart: the sensor sees two failure events of one
    run, and alerts once, for the first."""
    monkeypatch.setenv("SPOTIFY_ALERT_WEBHOOK", webhook.url)
    with DagsterInstance.ephemeral() as instance:
        result = materialize([exploding_asset], instance=instance, raise_on_error=False)
        run = instance.get_run_by_id(result.dagster_run.run_id)
        instance.report_run_failed(run, "its worker is gone")
        failures = instance.get_records_for_run(
            run.run_id, of_type=DagsterEventType.RUN_FAILURE
        ).records
        first, second = (record.event_log_entry.dagster_event for record in failures)

        outcome, _ = evaluate((instance, result), second)
        assert isinstance(outcome, SkipReason) and "already" in outcome.skip_message
        assert webhook.requests == []
        assert evaluate((instance, result), first)[0] is None
    [request] = webhook.requests
    assert json.loads(request.body)["run_id"] == run.run_id


@pytest.mark.parametrize("failure", ["HTTP 500", "refused"])
def test_an_undelivered_alert_is_logged_as_an_error_not_raised(
    failure: str, webhook: Webhook, failed_run, monkeypatch: pytest.MonkeyPatch
) -> None:
    if failure == "refused":
        url = f"http://127.0.0.1:{free_port()}/hook?{SIGNATURE}"  # nothing listens there
    else:
        webhook.status, url = 500, webhook.url
    monkeypatch.setenv("SPOTIFY_ALERT_WEBHOOK", url)
    outcome, logs = evaluate(failed_run)

    assert isinstance(outcome, SkipReason)  # the tick records why; the sensor goes on
    [error] = logs.at(logging.ERROR)
    run_id = failed_run[1].dagster_run.run_id
    assert f"alert for failed run {run_id} not delivered" in error
    expected = "HTTP 500" if failure == "HTTP 500" else "unreachable"
    assert expected in error and expected in outcome.skip_message
    assert "/hook?***" in error
    assert not any(SIGNATURE in r.getMessage() for r in logs.records)
    assert len(webhook.requests) == (1 if failure == "HTTP 500" else 0)


def test_the_alert_sensor_is_off_until_turned_on_like_all_automation(tmp_path: Path) -> None:
    defs = build_definitions(Settings.from_env({"SPOTIFY_HOME": str(tmp_path)}))
    sensor = defs.resolve_sensor_def(run_failure_alert.name)
    assert sensor.default_status == DefaultSensorStatus.STOPPED
