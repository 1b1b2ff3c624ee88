"""The images' package list page (devkit/recserve_dev/sbom.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recserve_dev.sbom import main, page, rows

pytestmark = pytest.mark.unit

DOC = {
    "bomFormat": "CycloneDX",
    "components": [
        {
            "type": "library",
            "name": "onnxruntime",
            "version": "1.23.2",
            "purl": "pkg:pypi/onnxruntime@1.23.2",
            "licenses": [{"license": {"id": "MIT"}}],
        },
        {
            "type": "library",
            "name": "libc6",
            "version": "2.36-9",
            "purl": "pkg:deb/debian/libc6@2.36-9",
            "licenses": [{"license": {"name": "LGPL-2.1"}}, {"license": {"name": "LGPL-2.1"}}],
        },
        {"type": "file", "name": "/usr/lib/x.so"},
        {"type": "operating-system", "name": "debian", "version": "12"},
    ],
}


def test_packages_are_listed_by_kind_without_files_or_the_os() -> None:
    assert rows(DOC) == [
        ("libc6", "2.36-9", "Debian", "LGPL-2.1"),
        ("onnxruntime", "1.23.2", "Python", "MIT"),
    ]


def test_the_page_summarises_then_lists_each_image(tmp_path: Path) -> None:
    text = page({"recserve-server:0.1.0": DOC})
    assert "| recserve-server:0.1.0 | 2 | Debian 1, Python 1 |" in text
    assert "| onnxruntime | 1.23.2 | Python | MIT |" in text
    src = tmp_path / "server.cdx.json"
    src.write_text(json.dumps(DOC))
    out = tmp_path / "page.md"
    assert main([str(out), f"recserve-server:0.1.0={src}"]) == 0
    assert out.read_text() == text
    assert main([str(out), "no-equals-sign"]) == 2
