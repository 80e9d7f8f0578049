"""docs/asyncapi.json is a valid AsyncAPI 3.0 document, by the AsyncAPI project's own parser
(its JSON Schemas and Spectral rules), and the check fails on a broken document."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas.asyncapi import DEFAULT_PATH
from tests.contract.conftest import Validate


def _lines(output: str, severity: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(f"{severity} ")]


def test_the_committed_document_is_valid(validate: Validate) -> None:
    # Prepare / Execute
    result = validate(DEFAULT_PATH)

    # Assert: no error and no warning (an `info` that 3.1 exists is expected)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _lines(result.stdout, "error") == []
    assert _lines(result.stdout, "warning") == []
    assert "valid: AsyncAPI 3.0.0" in result.stdout


# Each breakage, and what the parser says about it.
BREAKAGES: list[tuple[Callable[[dict[str, Any]], None], str]] = [
    (lambda doc: doc["info"].pop("version"), 'must have required property "version"'),
    (
        lambda doc: doc["operations"]["sendDeviceCmd"]["bindings"]["mqtt"].update(qos=3),
        '"qos" property must be equal to one of the allowed values',
    ),
    (
        lambda doc: doc["operations"]["sendDeviceCmd"]["messages"].append(
            {"$ref": "#/channels/deviceModel/messages/ModelPayload"}
        ),
        "Operation message does not belong to the specified channel",
    ),
    (
        lambda doc: doc["components"]["schemas"]["TrainCommand"].update(type="tensor"),
        '"type" property must be equal to one of the allowed values',
    ),
]


def test_a_broken_copy_is_refused_for_each_breakage(validate: Validate, tmp_path: Path) -> None:
    # Prepare: one copy with every breakage (one parser run reports them all)
    doc = json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))
    for breakage, _ in BREAKAGES:
        breakage(doc)
    broken = tmp_path / "asyncapi.json"
    broken.write_text(json.dumps(doc), encoding="utf-8")

    # Execute
    result = validate(broken)

    # Assert
    assert result.returncode == 1, result.stdout + result.stderr
    errors = _lines(result.stdout, "error")
    for _, expected in BREAKAGES:
        assert any(expected in line for line in errors), (expected, result.stdout)
