"""The load generator sends load to this machine only."""

from __future__ import annotations

import pytest

from recserve_dev.loadgen import Target

pytestmark = pytest.mark.unit


def test_targets_are_loopback_or_private_when_allowed() -> None:
    assert Target("127.0.0.5", 8080, "/v1/rank", [b"{}"]).host == "127.0.0.5"
    with pytest.raises(ValueError, match="only target"):
        Target("10.89.0.2", 8080, "/v1/rank", [b"{}"])
    # a kind node on podman's network: private, allowed when asked
    assert Target("10.89.0.2", 8080, "/v1/rank", [b"{}"], private_ok=True).host == "10.89.0.2"
    with pytest.raises(ValueError, match="only target"):
        Target("8.8.8.8", 8080, "/v1/rank", [b"{}"], private_ok=True)
