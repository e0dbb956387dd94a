"""Control actions on a running relay (`relay kick`): the one place that changes anything from outside.

The read-only answers (discovery, status) send a document and never read. Control is separate: a
listener on 127.0.0.1 at a free port that reads one JSON request and acts only when the request
carries this run's secret. The secret is kept in the relay's record in the run folder, a file only
its user can read (0600 in a 0700 folder; %LOCALAPPDATA% is per user on Windows), so only the user
who runs the relay can act on it.

    request:  {"token": "...", "action": "kick", "client_id": 7, "route": null}   or   "action": "stop"
    answer:   {"ok": true, "kicked": [{"route": "tws-paper", "peer": "172.24.40.7:50312", "client_id": 7}]}
              {"ok": false, "error": "..."}
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
from typing import Callable, Optional

from .logs import RateLimit, event
from .sockopts import BACKLOG

log = logging.getLogger("relay")
MAX_REQUEST = 4096        # bytes of one request line, newline included
READ_TIMEOUT = 2.0        # seconds a client gets to send its request and take the answer
MAX_CLIENTS = 16          # requests served at once; more are closed without an answer


def new_token() -> str:
    return secrets.token_hex(32)


class ControlServer:
    """Anything a local process sends gets {"ok": false, "error": ...} or a close, never a
    traceback; what it can make the relay hold (one request line, a few connections) or log (a few
    lines a minute, then a count) is bounded."""

    def __init__(self, token: str, act: Callable[[dict], dict], refusals: Optional[RateLimit] = None):
        self.token = token
        self.act = act                 # request -> answer (the relay's own code)
        self.server: Optional[asyncio.AbstractServer] = None
        self.port: Optional[int] = None
        self.read_timeout = READ_TIMEOUT
        self.clients = 0
        self.refusals = refusals or RateLimit(burst=3, window=60.0)

    async def bind(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port, backlog=BACKLOG, limit=MAX_REQUEST)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.clients >= MAX_CLIENTS:
            self.refused(f"more than {MAX_CLIENTS} requests at once")
            writer.transport.abort()
            return
        self.clients += 1
        try:
            answer = self.handle(await asyncio.wait_for(self._request(reader), self.read_timeout))
            writer.write(json.dumps(answer).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), self.read_timeout)
        except (asyncio.TimeoutError, ConnectionError):
            pass                       # too slow, or gone: a close is the answer
        except Exception as e:         # the last guard: a local process must not reach a traceback
            self.refused(f"request failed ({type(e).__name__})")
        finally:
            self.clients -= 1
            writer.close()

    @staticmethod
    async def _request(reader: asyncio.StreamReader) -> bytes:
        """One request line; what came before EOF when it ends early; b"" past MAX_REQUEST."""
        try:
            return await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as e:
            return e.partial
        except asyncio.LimitOverrunError:
            return b""

    def handle(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):   # not JSON, not UTF-8, nested past the parser's depth
            request = None
        if not isinstance(request, dict):
            self.refused("not a control request" if line else "empty or longer than 4 KiB")
            return {"ok": False, "error": "not a control request (one JSON object on one line, at most 4 KiB)"}
        token = request.get("token")
        if not (isinstance(token, str) and token.isascii() and hmac.compare_digest(token, self.token)):
            self.refused("wrong or missing secret")
            return {"ok": False, "error": "not authorised: only the user running this relay may do that"}
        return self.act(request)

    def refused(self, reason: str) -> None:
        ok, suppressed = self.refusals.allow("control")
        if ok:
            more = {"suppressed": suppressed} if suppressed else {}
            event(log, logging.WARNING, "control-refused", reason=reason, **more)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


async def ask(port: int, request: dict, timeout: float = 3.0) -> dict:
    """Send one control request to 127.0.0.1:port; the answer, or {"ok": False, "error": ...}."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            line = await asyncio.wait_for(reader.readline(), timeout)
        finally:
            writer.close()
        answer = json.loads(line)
        return answer if isinstance(answer, dict) else {"ok": False, "error": "malformed answer"}
    except (OSError, asyncio.TimeoutError, ValueError) as e:
        return {"ok": False, "error": f"no answer on 127.0.0.1:{port} ({e.__class__.__name__})"}
