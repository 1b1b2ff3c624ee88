"""API errors become kopf errors that match whether they can heal."""

from __future__ import annotations

import kopf
import pytest
from kubernetes.client.exceptions import ApiException

from recserve_operator.handlers import api_errors_typed

pytestmark = pytest.mark.unit


def _error(status: int, headers: dict[str, str] | None = None) -> ApiException:
    exc = ApiException(status=status, reason="x")
    exc.headers = headers or {}
    return exc


def test_forbidden_fails_at_once() -> None:
    with pytest.raises(kopf.PermanentError, match="not allowed"), api_errors_typed():
        raise _error(403)


@pytest.mark.parametrize("status", [409, 429, 500, 503])
def test_conflicts_throttling_and_server_errors_are_retried(status: int) -> None:
    with pytest.raises(kopf.TemporaryError) as caught, api_errors_typed():
        raise _error(status, {"Retry-After": "7"} if status == 429 else None)
    assert caught.value.delay == (7.0 if status == 429 else 5.0)


def test_not_found_and_other_errors_pass_through() -> None:
    with pytest.raises(ApiException), api_errors_typed():
        raise _error(404)
