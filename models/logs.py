"""Structured logs: a job id that follows a request across processes, a JSON format, and secret redaction.

Why a context variable: the bot handles each Discord event in its own asyncio task and the worker runs
each job in its own task, and both copy the current context when they start.  Setting `job` once where a
job is created (bot) or claimed (worker) therefore tags every later log line of that task — including
lines from discord.py, the engines and the runners — without passing ids around.  Grepping all
processes' logs for one job id gives the whole story of a request.

Why redaction in the formatter: filters on a logger do not see records of its children, and a secret
can hide in an exception's traceback (a URL with a key, a header).  Redacting the final formatted text
on the handler covers every record and every part of it.

Usage: `setup_logging(settings)` once per process; `bind(job=..., conversation=...)` in a task.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

# The fields that follow a request.  One dict in one variable, so `bind` is a single set.
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("ilm_log_context", default=None)

REDACTED = "[REDACTED]"
# Shapes of secrets that must never be logged even when we were not told the value (pattern, replacement):
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Discord bot tokens: base64(user id).timestamp.hmac
    (re.compile(r"[MNO][A-Za-z\d_-]{23,28}\.[A-Za-z\d_-]{6}\.[A-Za-z\d_-]{27,40}"), REDACTED),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), REDACTED),  # OpenAI-style API keys
    (re.compile(r"(?i)\b(bearer|bot)(\s+)[A-Za-z0-9._~+/=-]{20,}"), r"\1\2" + REDACTED),
    (re.compile(r"(?i)(api[_-]?key[\"']?\s*[:=]\s*[\"']?)[^\s\"',}&]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)(token[\"']?\s*[:=]\s*[\"']?)[^\s\"',}&]{8,}"), r"\1" + REDACTED),
    (re.compile(r"(rediss?://[^:/@\s]*:)[^@\s]+(@)"), r"\1" + REDACTED + r"\2"),  # password in a Redis URL
]


def bind(**fields: Any) -> None:
    """Attach fields (job, conversation, attempt, ...) to every later log line of the current task."""
    merged = dict(_context.get() or {})
    merged.update({k: v for k, v in fields.items() if v is not None})
    _context.set(merged)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """`bind` for a block only."""
    token = _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def current() -> dict[str, Any]:
    """The fields bound in this task (a copy)."""
    return dict(_context.get() or {})


class Redactor:
    """Replaces known secret values and anything shaped like a token or key with `[REDACTED]`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Short values would blank out ordinary words; real tokens and keys are long.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record (`record.ctx`, and `record.job` for text formats)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get() or {}
        record.ctx = ctx
        record.job = ctx.get("job", "-")
        return True


class TextFormatter(logging.Formatter):
    """Plain lines with the job id in them; secrets redacted from the whole output."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [job=%(job)s]: %(message)s")
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "job"):
            ContextFilter().filter(record)
        return self.redactor(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line (for Loki, Elasticsearch, `jq`): time, level, logger, message, the bound
    fields and the exception.  Redaction runs on the serialized line."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        ctx = getattr(record, "ctx", None)
        if ctx is None:
            ctx = _context.get() or {}
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in ctx.items() if k not in entry})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return self.redactor(json.dumps(entry, ensure_ascii=False, default=str))


def secrets_of(settings: Any) -> list[str]:
    """The secret values in a Settings object (every SecretStr field), for the redactor."""
    values: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name, None)
        getter = getattr(value, "get_secret_value", None)
        if getter is not None:
            secret = getter()
            if secret:
                values.append(secret)
    return values


def make_handler(settings: Any, stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler with the context filter and the configured (redacting) formatter."""
    redactor = Redactor(secrets_of(settings))
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    fmt = str(getattr(settings, "log_format", "text")).lower()
    handler.setFormatter(JsonFormatter(redactor) if fmt == "json" else TextFormatter(redactor))
    return handler


def setup_logging(settings: Any, stream: IO[str] | None = None, level: str | None = None) -> logging.Handler:
    """Configure the root logger once per process (replaces handlers a previous call installed)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_ilm", False)]:
        root.removeHandler(old)
    handler = make_handler(settings, stream)
    handler._ilm = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(str(level or getattr(settings, "log_level", "INFO")).upper())
    return handler
