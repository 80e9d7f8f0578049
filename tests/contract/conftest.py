"""The AsyncAPI project's own parser (@asyncapi/parser, pinned in package-lock.json), installed
with `npm ci` into tests/contract/node_modules the first time a session needs it."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PARSER = HERE / "node_modules" / "@asyncapi" / "parser"

Validate = Callable[[Path], subprocess.CompletedProcess[str]]


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is missing: `make deps` installs Node.js and npm"
    return path


@pytest.fixture(scope="session")
def validate() -> Validate:
    """Run validate.mjs on a document: exit status 0 when valid, 1 with its errors when not."""
    node = _tool("node")
    if not PARSER.is_dir():
        # Exactly the locked versions; no install scripts (one dependency would phone home).
        subprocess.run(
            [_tool("npm"), "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=HERE,
            check=True,
            timeout=600,
        )

    def run(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [node, str(HERE / "validate.mjs"), str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run
