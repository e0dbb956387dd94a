"""Log lines as an event name plus key=value fields, rendered as text or one JSON object a line."""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Dict, Optional, TextIO, Tuple

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields})


def _text_value(v: Any) -> str:
    s = f"{v:.3f}" if isinstance(v, float) else str(v)
    if not s or any(c in s for c in ' "=\n'):
        return json.dumps(s)
    return s


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        fields: Dict[str, Any] = getattr(record, "fields", {})
        parts = [f"{t}.{int(record.msecs):03d}", f"{record.levelname:<7}", record.getMessage()]
        parts += [f"{k}={_text_value(v)}" for k, v in fields.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: Dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        doc.update(getattr(record, "fields", {}))
        if record.exc_info:
            doc["traceback"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup(level: str = "info", fmt: str = "text", stream: Optional[TextIO] = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("relay")
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    root.propagate = False


class RateLimit:
    """Allow `burst` lines per `window` seconds for each key; count what was held back."""

    def __init__(self, burst: int = 5, window: float = 10.0, clock=time.monotonic):
        self.burst, self.window, self.clock = burst, window, clock
        self.state: Dict[Any, Tuple[float, int, int]] = {}   # key -> (window start, sent, suppressed)

    def allow(self, key: Any) -> Tuple[bool, int]:
        """(may log now, how many lines were suppressed before this one)."""
        now = self.clock()
        start, sent, suppressed = self.state.get(key, (now, 0, 0))
        if now - start >= self.window:
            start, sent = now, 0
        if sent < self.burst:
            self.state[key] = (start, sent + 1, 0)
            return True, suppressed
        self.state[key] = (start, sent, suppressed + 1)
        if len(self.state) > 4096:   # a scan from many addresses must not grow this without bound
            self.state = {k: v for k, v in self.state.items() if now - v[0] < self.window}
        return False, 0
