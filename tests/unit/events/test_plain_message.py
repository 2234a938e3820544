"""Events and the status carry one sentence per error, never an exception dump."""

from __future__ import annotations

import json

from kubernetes.aio.client.exceptions import ApiException

from libs.events.errors import MESSAGE_MAX_CHARS, PermanentError, plain_message


def test_an_api_error_is_its_status_and_the_servers_message() -> None:
    error = ApiException(status=404, reason="Not Found")
    error.headers = {"Content-Type": "application/json", "Audit-Id": "0b6f"}
    error.body = json.dumps(
        {"kind": "Status", "message": 'namespaces "nowhere" not found', "reason": "NotFound", "code": 404}
    )
    assert "HTTP response headers" in str(error)  # the dump that must not reach a user
    assert plain_message(error) == 'the API server answered 404 Not Found: namespaces "nowhere" not found'


def test_other_errors_keep_their_first_line_within_bounds() -> None:
    assert plain_message(PermanentError("step failed\nTraceback (most recent call last): ...")) == "step failed"
    assert plain_message(RuntimeError()) == "RuntimeError"
    long = plain_message(ValueError("x" * 1000))
    assert len(long) == MESSAGE_MAX_CHARS and long.endswith("...")
