"""The kind e2e suite (marked `kind`): run by `make test-kind` against `make kind-up`'s
cluster, never by `make test`."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/kind/" in str(item.fspath):
            item.add_marker(pytest.mark.kind)
