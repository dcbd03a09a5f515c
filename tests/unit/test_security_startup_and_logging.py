"""Settings are checked at start (issue 6, item 9) and the log formatters never leak text (item 7)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest

from core.logging_setup import NOISY_LOGGERS, JsonFormatter, PlainFormatter, configure_logging
from core.settings import PROJECT_ROOT

BAD = {"TASK_SIZE": "lots"}


def _start(args: list[str], tmp_path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **BAD, "MAILROOM_LOCAL_SETTINGS": str(tmp_path / "none.json")}
    return subprocess.run([sys.executable, *args], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("args", [["-c", "import function_app"], ["-m", "devhost", "--no-azurite"]],
                         ids=["function_app", "devhost"])
def test_a_malformed_setting_stops_the_host_with_one_line_naming_it(args, tmp_path):
    done = _start(args, tmp_path)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "TASK_SIZE" in lines[0]
    assert "Traceback" not in done.stderr


def _record(msg: str, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("mailroom.test", logging.ERROR, __file__, 1, msg, (), exc_info)


def _raised(message: str) -> BaseException:
    try:
        raise ValueError(message)
    except ValueError as err:
        return err


def test_json_lines_carry_level_logger_and_message():
    line = json.loads(JsonFormatter(worker=2).format(_record("task sent job=j1 count=3")))
    assert line["level"] == "error" and line["logger"] == "mailroom.test" and line["worker"] == 2
    assert line["msg"] == "task sent job=j1 count=3"


@pytest.mark.parametrize("formatter", [JsonFormatter(), PlainFormatter()], ids=["json", "plain"])
def test_exceptions_are_logged_by_type_and_place_never_by_message(formatter):
    text = formatter.format(_record("send failed job=j1", _raised("bad address someone@example.com")))
    assert "ValueError" in text
    assert "someone@example.com" not in text and "Traceback" not in text


def test_storage_sdk_request_logging_is_held_at_warning():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in NOISY_LOGGERS})
    stream = io.StringIO()
    configure_logging("json", "DEBUG", stream=stream)
    try:
        logging.getLogger("azure.core.pipeline.policies.http_logging_policy").info("GET ...?$filter=email")
        logging.getLogger("mailroom.test").debug("kept job=j1")
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)
    assert [json.loads(line)["logger"] for line in stream.getvalue().splitlines()] == ["mailroom.test"]
