"""Issue 16, day two: structured logs (AUTHZ_LOG_FORMAT) and decision lines (AUTHZ_LOG_DECISIONS).

The log is read from a real `authz serve` process, as an operator or a log drain reads it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from authz.logs import JsonFormatter, LogfmtFormatter, TextFormatter
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc
from tests.served import clean_env, refused_start, served

SESSION_TOKEN = "azs_" + "Q" * 43  # the shape authz issues; never to appear in a log
NASTY_REQUEST_ID = 'r-1" level=error msg="forged\nERROR authz.server: forged line'
LOGFMT_PAIR = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|[^\s"]*)')


def parse_logfmt(line: str) -> dict[str, Any]:
    """key=value pairs; the whole line must be pairs (a stray token fails the test)."""
    pairs = LOGFMT_PAIR.findall(line)
    assert " ".join(f"{k}={v}" for k, v in pairs) == line, line
    return {k: json.loads(v) if v.startswith('"') else v for k, v in pairs}


def decide(address: str) -> list[pb.CheckResponse]:
    """A Check naming a session token as the principal's id, then a normal one."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.AuthorizationServiceStub(channel)
        return [
            stub.Check(
                pb.CheckRequest(
                    principal=pb.Principal(type="service", id=principal),
                    action="billing.update",
                    resource=pb.Resource(type="account", id="acct-7"),
                    request_id=NASTY_REQUEST_ID,
                )
            )
            for principal in (SESSION_TOKEN, "svc-web")
        ]


def test_json_logs_one_object_per_line_with_decision_lines(tmp_path: Path) -> None:
    env = clean_env(AUTHZ_LOG_FORMAT="json", AUTHZ_LOG_DECISIONS="1")
    with served(tmp_path / "data", env) as server:
        answers = decide(server.address)
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        log = server.stop()
    lines = [json.loads(line) for line in log.splitlines()]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", line["time"]) for line in lines)
    loggers = {line["logger"] for line in lines}
    assert {"authz.server", "authz.callers", "uvicorn.error"} <= loggers  # uvicorn's too
    decisions = [line for line in lines if line["logger"] == "authz.decisions"]
    assert [d["decision_id"] for d in decisions] == [a.decision_id for a in answers]
    first, second = decisions
    assert first["level"] == "info" and first["message"] == "decision"
    assert first["principal"] == "service:[redacted]"  # the audit record's redaction
    assert second["principal"] == "service:svc-web"
    for decision in decisions:
        assert decision["effect"] == "DENY"
        assert decision["action"] == "billing.update"
        assert decision["resource"] == "account:acct-7"
        assert decision["caller"] == "anonymous"
        assert decision["kind"] == "check"
        assert decision["request_id"] == NASTY_REQUEST_ID
        assert isinstance(decision["latency_ms"], float) and decision["latency_ms"] >= 0
    assert SESSION_TOKEN not in log and "Q" * 16 not in log


def test_logfmt_logs_one_line_of_pairs_each(tmp_path: Path) -> None:
    env = clean_env(AUTHZ_LOG_FORMAT="logfmt", AUTHZ_LOG_DECISIONS="1")
    with served(tmp_path / "data", env) as server:
        answers = decide(server.address)
        log = server.stop()
    lines = [parse_logfmt(line) for line in log.splitlines()]
    assert all({"time", "level", "logger", "msg"} <= line.keys() for line in lines)
    assert any(line["logger"] == "uvicorn.error" for line in lines)
    decisions = [line for line in lines if line["logger"] == "authz.decisions"]
    assert [d["decision_id"] for d in decisions] == [a.decision_id for a in answers]
    assert decisions[0]["principal"] == "service:[redacted]"
    # A caller's request id cannot forge a line or a field: it comes back whole, quoted.
    assert all(d["request_id"] == NASTY_REQUEST_ID for d in decisions)
    assert not any(line.get("msg") == "forged" for line in lines)
    assert SESSION_TOKEN not in log


def test_text_is_the_default_and_decision_lines_are_asked_for(tmp_path: Path) -> None:
    with served(tmp_path / "quiet", clean_env()) as server:
        decide(server.address)
        quiet = server.stop()
    assert " INFO authz.server: authz listening on " in quiet
    assert ", event loop uvloop" in quiet  # the default AUTHZ_EVENT_LOOP
    assert ", grpc endpoints posix" in quiet  # authz.server.grpc_endpoints
    assert "authz.decisions" not in quiet

    with served(tmp_path / "loud", clean_env(AUTHZ_LOG_DECISIONS="1")) as server:
        answers = decide(server.address)
        loud = server.stop()
    lines = [line for line in loud.splitlines() if " authz.decisions: " in line]
    assert len(lines) == 2
    for line, answer in zip(lines, answers, strict=True):
        assert f" INFO authz.decisions: decision decision_id={answer.decision_id} " in line
        assert " effect=DENY action=billing.update " in line
        assert " caller=anonymous " in line and " latency_ms=" in line
    # The request id's newline and quotes are escaped: no forged line follows.
    assert not any(line.startswith("ERROR authz.server: forged") for line in loud.splitlines())
    assert SESSION_TOKEN not in loud


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AUTHZ_LOG_FORMAT", "JSON"),
        ("AUTHZ_LOG_FORMAT", "logfmt "),
        ("AUTHZ_LOG_FORMAT", "structured"),
        ("AUTHZ_LOG_DECISIONS", "true"),
        ("AUTHZ_LOG_DECISIONS", "yes"),
    ],
)
def test_log_settings_take_exact_values_only(name: str, value: str, tmp_path: Path) -> None:
    result = refused_start(tmp_path, clean_env(**{name: value}))
    assert result.returncode == 2, result.stderr
    assert f"authz serve: {name}={value!r} is not accepted; use one of:" in result.stderr
    assert "Traceback" not in result.stderr


def _record(message: str, **fields: Any) -> logging.LogRecord:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("authz.test", logging.ERROR, __file__, 1, message, (), exc_info)
    record.fields = fields
    return record


def test_a_traceback_stays_on_its_line_in_structured_formats() -> None:
    record = _record("failed\nto do it", path="a b", count=3, ok=True)
    as_json = JsonFormatter().format(record)
    assert "\n" not in as_json
    parsed = json.loads(as_json)
    assert parsed["message"] == "failed\nto do it"
    assert parsed["path"] == "a b" and parsed["count"] == 3 and parsed["ok"] is True
    assert "ValueError: boom\nsecond line" in parsed["exception"]
    as_logfmt = LogfmtFormatter().format(record)
    assert "\n" not in as_logfmt
    pairs = parse_logfmt(as_logfmt)
    assert pairs["msg"] == "failed\nto do it" and pairs["path"] == "a b"
    assert pairs["count"] == "3" and pairs["ok"] == "true" and pairs["level"] == "error"
    assert "ValueError: boom\nsecond line" in pairs["exception"]
    # Text is for people: the message and traceback as Python writes them, fields quoted.
    text = TextFormatter().format(record)
    assert ' ERROR authz.test: failed\nto do it path="a b" count=3 ok=true\nTraceback' in text


@pytest.mark.parametrize("value", ["libuv", "UVLOOP", "uvloop "])
def test_event_loop_takes_exact_values_only(value: str, tmp_path: Path) -> None:
    result = refused_start(tmp_path, clean_env(AUTHZ_EVENT_LOOP=value))
    assert result.returncode == 2, result.stderr
    assert f"authz serve: AUTHZ_EVENT_LOOP={value!r} is not accepted; use one of:" in result.stderr
    assert "Traceback" not in result.stderr


def test_asyncio_event_loop_and_grpcs_own_endpoints_serve_when_asked_for(tmp_path: Path) -> None:
    # An operator's GRPC_EXPERIMENTS (here empty: grpc's own defaults) is left as it is.
    env = clean_env(AUTHZ_EVENT_LOOP="asyncio", GRPC_EXPERIMENTS="")
    with served(tmp_path / "data", env) as server:
        answers = decide(server.address)
        log = server.stop()
    assert ", event loop asyncio, grpc endpoints event-engine" in log
    assert all(answer.decision_id for answer in answers)


def test_posix_endpoints_are_asked_for_only_before_grpc_and_never_over_the_operator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from authz.server.grpc_endpoints import (
        POSIX_ENDPOINTS,
        endpoints_in_use,
        prefer_posix_endpoints,
    )

    assert "grpc" in sys.modules  # this test process runs gRPC servers: too late to choose
    environ: dict[str, str] = {}
    assert prefer_posix_endpoints(environ) is False and environ == {}
    monkeypatch.delitem(sys.modules, "grpc")  # as in a fresh `authz` process
    assert prefer_posix_endpoints(environ) is True
    assert environ == {"GRPC_EXPERIMENTS": POSIX_ENDPOINTS}
    assert endpoints_in_use(environ) == "posix"
    operator = {"GRPC_EXPERIMENTS": "-event_engine_listener"}
    prefer_posix_endpoints(operator)
    assert operator == {"GRPC_EXPERIMENTS": "-event_engine_listener"}
    assert endpoints_in_use(operator) == "event-engine"
