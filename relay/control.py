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

from .logs import event
from .sockopts import BACKLOG

log = logging.getLogger("relay")
MAX_REQUEST = 4096


def new_token() -> str:
    return secrets.token_hex(32)


class ControlServer:
    def __init__(self, token: str, act: Callable[[dict], dict]):
        self.token = token
        self.act = act                 # request -> answer (the relay's own code)
        self.server: Optional[asyncio.AbstractServer] = None
        self.port: Optional[int] = None

    async def bind(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=BACKLOG)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 2)
            answer = self.handle(line[:MAX_REQUEST])
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def handle(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError
        except ValueError:
            return {"ok": False, "error": "not a control request"}
        if not hmac.compare_digest(str(request.get("token", "")), self.token):
            event(log, logging.WARNING, "control-refused", reason="wrong or missing secret")
            return {"ok": False, "error": "not authorised: only the user running this relay may do that"}
        return self.act(request)

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
