"""Log lines as an event name plus key=value fields, rendered as text or one JSON object a line."""
from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, TextIO, Tuple

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


MAX_BYTES = 10 * 1024 * 1024     # one log file's size before it rotates
BACKUPS = 5                       # rotated files kept: relay.log.1 ... relay.log.5
OFF = "off"                       # log.file: false -- never a file, even without a console
current_file: Optional[str] = None   # where this process logs, for the status answer and its record


class RotatingLog(logging.handlers.RotatingFileHandler):
    """A rotating log file whose failed rollover loses no line. On Windows the rename fails while
    another process has the file open (WinError 32: a second relay sharing the default file, an
    editor); the stock handler then drops that record and every later one. Here it keeps writing to
    the current file, says so once in the log, and tries again after `retry` seconds."""

    retry = 60.0

    def __init__(self, *args, clock=time.monotonic, **kw) -> None:
        super().__init__(*args, **kw)
        self.clock = clock
        self.next_try = 0.0
        self.failing = False

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        return self.clock() >= self.next_try and bool(super().shouldRollover(record))

    def doRollover(self) -> None:
        try:
            super().doRollover()
        except OSError as e:
            self.next_try = self.clock() + self.retry
            if self.stream is None:
                self.stream = self._open()      # the same file, appended to
            if not self.failing:
                self.failing = True
                self._note(logging.WARNING, "log-rotation-failed", error=e.strerror or str(e),
                           note=f"still writing to this file; trying again every {self.retry:g} s")
            return
        if self.failing:
            self.failing = False
            self._note(logging.INFO, "log-rotated", note="after failed tries")

    def _note(self, level: int, name: str, **fields) -> None:
        """A line of its own, written straight to the file: the logging module cannot be re-entered here."""
        record = logging.LogRecord("relay", level, __file__, 0, name, None, None)
        record.fields = fields
        self.stream.write(self.format(record) + self.terminator)


class LogFileError(Exception):
    """The log file cannot be opened; the message names it and says why."""


def default_log_file(platform: str, env: Mapping[str, str]) -> Optional[str]:
    """Where the log goes when no console can show it. Pure."""
    if platform == "win32":
        base = env.get("LOCALAPPDATA") or env.get("APPDATA")
        return "\\".join((base.rstrip("\\/"), "relay", "logs", "relay.log")) if base else None
    state = env.get("XDG_STATE_HOME") or (os.path.join(env["HOME"], ".local", "state") if env.get("HOME") else None)
    return os.path.join(state, "relay", "relay.log") if state else None


def log_file_for(setting: Optional[str], console: bool, platform: str, env: Mapping[str, str]) -> Optional[str]:
    """The log file to write: the one set (log.file / --log-file), else the default when there is no
    console (the logon task, a windowed exe, pythonw), else none (the console's stderr). Pure."""
    if setting == OFF:
        return None
    if setting:
        return os.path.expanduser(os.path.expandvars(setting))
    return None if console else default_log_file(platform, env)


def guard_standard_fds() -> None:
    """Point a closed stdin/stdout/stderr descriptor at the null device. Started with them closed
    (a service manager, a windowed launcher), the relay's own sockets and its loop's descriptors
    would take numbers 0-2, and whatever later writes to "stderr" (Python, the loop library) would
    write into a socket; uvloop aborts the process at exit then."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def has_console() -> bool:
    """False under pythonw or a windowed exe (and with stderr closed), where sys.stderr is None."""
    return sys.stderr is not None


def setup(level: str = "info", fmt: str = "text", stream: Optional[TextIO] = None, file: Optional[str] = None,
          max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
    """Log to the console's stderr (when there is one) and to a rotating `file` (when given).
    Raises LogFileError if the file cannot be opened."""
    global current_file
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handlers: List[logging.Handler] = []
    stream = stream or sys.stderr
    if stream is not None:
        handlers.append(logging.StreamHandler(stream))
    if file:
        try:
            folder = os.path.dirname(os.path.abspath(file))
            os.makedirs(folder, exist_ok=True)
            handlers.append(RotatingLog(file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"))
        except OSError as e:
            raise LogFileError(f"cannot open the log file {file}: {e.strerror or e}") from None
    for h in handlers:
        h.setFormatter(formatter)
    root = logging.getLogger("relay")
    for old in root.handlers:
        old.close()
    root.handlers[:] = handlers or [logging.NullHandler()]
    root.setLevel(LEVELS[level])
    root.propagate = False
    # what the event loop library says (a failed accept, a transport error) goes where the relay's
    # lines go, in their format: without this a console shows a bare traceback and relayw loses it
    loop_log = logging.getLogger("asyncio")
    loop_log.handlers[:] = root.handlers
    loop_log.setLevel(max(LEVELS[level], logging.WARNING))
    loop_log.propagate = False
    current_file = os.path.abspath(file) if file else None


START_FAILED = "cannot-start"


def record_start_failure(message: str, platform: str = sys.platform, env: Mapping[str, str] = os.environ) -> Optional[str]:
    """With no console, an error before logging is set up (a bad relay.yaml, an unopenable log file)
    would vanish and the logon task would just exit 2: append it to the default log file as one
    line in the log's format. The file, or None if there is none or it cannot be written."""
    path = default_log_file(platform, env)
    if not path:
        return None
    record = logging.LogRecord("relay", logging.ERROR, __file__, 0, START_FAILED, None, None)
    record.fields = {"error": message, "pid": os.getpid()}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(TextFormatter().format(record) + "\n")
    except OSError:
        return None
    return path


def last_start_failure(path: Optional[str]) -> Optional[str]:
    """The log's last line if the last start in it failed (a cannot-start line after the last
    'starting' one), else None."""
    try:
        lines, _ = tail(path, 200) if path else ([], 0)
    except OSError:
        return None
    for line in reversed(lines):
        if f" {START_FAILED} " in line:
            return line
        if " starting " in line or " stopped " in line:
            return None
    return None


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


# ------------------------------------------------------------------------------ reading a log file

def tail(path: str, count: int, block: int = 64 * 1024) -> Tuple[List[str], int]:
    """(the last `count` lines of a file, the offset they end at: where following starts)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = size = f.tell()
        data = b""
        while count and end > 0 and data.count(b"\n") <= count:
            start = max(0, end - block)
            f.seek(start)
            data = f.read(end - start) + data
            end = start
    lines = data.decode("utf-8", "replace").splitlines()
    return (lines[-count:] if count else []), size


def follow(path: str, offset: int = 0, poll: float = 0.25, stop=lambda: False):
    """Lines of a log file from `offset` on, as they are written, across rotations (the file
    renamed to .1 and a new one started). Ends when `stop()` says so. It holds the file open only
    while it reads: on Windows a file that another process has open cannot be renamed, and the
    relay's rollover must never wait for a reader."""
    ident, pending = None, b""
    while not stop():
        chunk, ident, offset = _read_on(path, ident, offset)
        if not chunk:
            time.sleep(poll)
            continue
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace")


def _read_on(path: str, ident, offset: int):
    """(bytes written since `offset`, the file's identity, the new offset), opening and closing it.
    If it was rotated since the last read, the rest of the old file (now PATH.1) comes first."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            now = (st.st_ino, st.st_dev)
            rest = b""
            if ident is None:
                f.seek(offset if offset <= st.st_size else 0)     # rotated since the offset: a new file
            elif now != ident or st.st_size < offset:
                rest = _rest_of(path + ".1", ident, offset)
            else:
                f.seek(offset)
            data = rest + f.read()
            return data, now, f.tell()
    except FileNotFoundError:
        return b"", ident, offset


def _rest_of(path: str, ident, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if (st.st_ino, st.st_dev) != ident:
                return b""
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return b""
