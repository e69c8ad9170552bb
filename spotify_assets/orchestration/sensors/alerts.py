"""Run-failure alert (README: Automation): POST `{pipeline_name, run_id, error}` to a webhook.

The webhook URL comes from `SPOTIFY_ALERT_WEBHOOK`, read when the sensor evaluates, in the code
server: the URL often carries a signature in its query string (a Logic App trigger URL does), so
it never enters definitions, run config or the UI, and is logged with its query redacted. Unset,
alerts are off. A webhook that cannot be reached or answers with an error is logged as an error
on the sensor's tick and the tick is skipped; the sensor never raises, so one bad webhook cannot
stop the alerts of later failures. A run failed twice is alerted once.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from dagster import (
    DagsterEventType,
    DefaultSensorStatus,
    EnvVar,
    RunFailureSensorContext,
    SkipReason,
    run_failure_sensor,
)

WEBHOOK = EnvVar("SPOTIFY_ALERT_WEBHOOK")
# Well under the sensor evaluation timeout (60 s), so a hanging webhook cannot time the tick out.
TIMEOUT_SECONDS = 10.0


class AlertNotDelivered(Exception):
    """The webhook refused the alert or could not be reached; the message holds no secret."""


def redact(url: str) -> str:
    """The URL without its credentials, query and fragment, which may carry signatures."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets
    netloc = f"{host}:{parts.port}" if parts.port else host
    query = "***" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def post_alert(url: str, payload: dict[str, str]) -> int:
    """POST `payload` as JSON; returns the HTTP status or raises `AlertNotDelivered`."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise AlertNotDelivered("SPOTIFY_ALERT_WEBHOOK is not an http(s) URL")
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return response.status
    except urllib.error.HTTPError as error:
        raise AlertNotDelivered(f"HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise AlertNotDelivered(f"unreachable: {_scrub(str(error.reason), url)}") from None
    except (OSError, http.client.HTTPException, ValueError) as error:
        # Timeouts, resets and malformed URLs; their text can quote the URL, hence the scrub.
        raise AlertNotDelivered(f"{type(error).__name__}: {_scrub(str(error), url)}") from None


def _scrub(text: str, url: str) -> str:
    query = urlsplit(url).query
    text = text.replace(url, redact(url))
    return text.replace(query, "***") if query else text


class ErrorInfo(Protocol):
    """The shape of the errors Dagster records on failure events (`SerializableErrorInfo`)."""

    message: str
    cause: ErrorInfo | None


def _first_failure(context: RunFailureSensorContext) -> bool:
    """Whether the sensor's event is its run's first failure: a run of a killed process can be
    failed twice, by the next command that takes the lake and by Dagster's run monitoring, and
    the sensor sees each failure event."""
    first = context.instance.get_records_for_run(
        context.dagster_run.run_id, of_type=DagsterEventType.RUN_FAILURE, limit=1
    ).records
    return not first or first[0].event_log_entry.dagster_event == context.failure_event


def failure_message(context: RunFailureSensorContext) -> str:
    """The run's failure message, then each failed step with the exception it raised (the
    innermost cause: Dagster wraps user errors), without stack traces."""
    lines = [context.failure_event.message or f"run {context.dagster_run.run_id} failed"]
    step_failures = context.get_step_failure_events()
    for event in step_failures:
        error = getattr(event.event_specific_data, "error", None)
        if error is not None:
            lines.append(f"{event.step_key}: {_innermost(error)}")
    # A run can also fail outside any step (resource init, a crashed run worker).
    run_error = getattr(context.failure_event.event_specific_data, "error", None)
    if not step_failures and run_error is not None:
        lines.append(_innermost(run_error))
    return "\n".join(lines)


def _innermost(error: ErrorInfo) -> str:
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


@run_failure_sensor(
    default_status=DefaultSensorStatus.STOPPED,  # like all automation: off until turned on
    description="POSTs {pipeline_name, run_id, error} to SPOTIFY_ALERT_WEBHOOK when a run fails.",
)
def run_failure_alert(context: RunFailureSensorContext) -> SkipReason | None:
    url = (WEBHOOK.get_value() or "").strip()
    run = context.dagster_run
    if not _first_failure(context):
        return SkipReason(f"run {run.run_id} failed before: alerted already")
    if not url:
        context.log.info(f"SPOTIFY_ALERT_WEBHOOK is not set: alerts are off (run {run.run_id})")
        return SkipReason("SPOTIFY_ALERT_WEBHOOK is not set: alerts are off")
    payload = {
        "pipeline_name": run.job_name,
        "run_id": run.run_id,
        "error": failure_message(context),
    }
    try:
        status = post_alert(url, payload)
    except AlertNotDelivered as error:
        message = f"alert for failed run {run.run_id} not delivered to {redact(url)}: {error}"
        context.log.error(message)
        return SkipReason(message)
    context.log.info(f"alert for failed run {run.run_id} sent to {redact(url)} (HTTP {status})")
    return None
