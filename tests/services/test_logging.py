"""The long-running processes' logs: one JSON object per line, for a log pipeline."""

from __future__ import annotations

import json
import logging

import pytest

from services.cli_common import configure_logging


def test_json_lines_carry_no_terminal_colour_codes(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """uvicorn (the HTTP API) hands its log records a copy of the message with terminal
    colour codes, `color_message`; a JSON line carries the plain message only."""
    monkeypatch.setenv("FICHA_LOG_FORMAT", "json")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging()
        logging.getLogger("uvicorn.error").info(
            "Started server process [%d]", 42,
            extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"})
    finally:
        root.handlers[:], root.level = handlers, level
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["message"] == "Started server process [42]"
    assert record["logger"] == "uvicorn.error" and record["level"] == "INFO"
    assert "color_message" not in record and "\\u001b" not in line
