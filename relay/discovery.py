"""The relay's read-only discovery answer: how the WSL side learns the relay's ports.

A client connects to the discovery port (same listen address as the routes, same allowlist), the
relay sends one line of JSON and closes. The client sends nothing. Both sides live here so that
the format and its version check cannot drift apart.

    {"service": "tws-relay", "protocol": 1, "version": "0.1.0",
     "routes": [{"name": "tws-paper", "port": 17497, "target": "127.0.0.1:7497", "target_up": true}]}

A new optional field keeps protocol 1; a change an old helper would misread bumps `protocol`.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from . import __version__, hostnet
from .config import DISCOVERY_PORT
from .logs import event
from .sockopts import BACKLOG

SERVICE = "tws-relay"
PROTOCOL = 1
MAX_ANSWER = 64 * 1024
DEFAULT_PORT = DISCOVERY_PORT
# The shipped relay.yaml's ports (TWS / Gateway port + 10000), probed when no discovery answer comes.
WELL_KNOWN_PORTS = {"tws-paper": 17497, "tws-live": 17496, "gateway-live": 14001, "gateway-paper": 14002}
log = logging.getLogger("relay")


class DiscoveryError(Exception):
    """The answer could not be used; the message says why in words for the user."""


@dataclass(frozen=True)
class RouteInfo:
    name: str
    port: int
    target: str
    target_up: bool


@dataclass(frozen=True)
class Answer:
    version: str
    routes: Tuple[RouteInfo, ...]


def build_answer(routes: Sequence[Tuple[str, int, str, bool]]) -> bytes:
    doc = {"service": SERVICE, "protocol": PROTOCOL, "version": __version__,
           "routes": [{"name": n, "port": p, "target": t, "target_up": up} for n, p, t, up in routes]}
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def parse_answer(data: bytes) -> Answer:
    """Parse what a relay sent. Raises DiscoveryError, never anything else."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise DiscoveryError("the answer is not tws-relay discovery JSON (is something else on that port?)") from None
    if not isinstance(doc, dict) or doc.get("service") != SERVICE:
        raise DiscoveryError("the answer is not from a tws-relay (is something else on that port?)")
    proto, version = doc.get("protocol"), str(doc.get("version", "?"))
    if proto != PROTOCOL:
        raise DiscoveryError(f"the relay (tws-relay {version}) speaks discovery protocol {proto!r}; this helper "
                             f"(tws-relay {__version__}) understands {PROTOCOL}: install the same tws-relay "
                             f"version on Windows and in WSL")
    routes = []
    raw_routes = doc.get("routes")
    if not isinstance(raw_routes, list):
        raise DiscoveryError("the relay's answer has no route list")
    for r in raw_routes:
        try:
            port = r["port"]
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError
            routes.append(RouteInfo(str(r["name"]), port, str(r["target"]), bool(r.get("target_up", False))))
        except (KeyError, TypeError, ValueError):
            raise DiscoveryError("the relay's answer has a malformed route") from None
    return Answer(version=version, routes=tuple(routes))


async def fetch(host: str, port: int, timeout: float) -> Answer:
    """Ask a relay for its routes. Raises OSError / asyncio.TimeoutError for transport problems and
    DiscoveryError for an answer that cannot be used."""
    async def _read() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            return await reader.read(MAX_ANSWER)
        finally:
            writer.close()
    data = await asyncio.wait_for(_read(), timeout)
    if not data:
        raise DiscoveryError("the relay closed the discovery connection without answering "
                             "(this machine's address may not be in its allowlist)")
    return parse_answer(data)


async def fetch_status(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> Optional[dict]:
    """A running relay's status answer (one JSON document), or None if nothing usable answers."""
    async def _read() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            return await reader.read(1 << 20)
        finally:
            writer.close()
    try:
        doc = json.loads(await asyncio.wait_for(_read(), timeout))
    except (OSError, asyncio.TimeoutError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("kind") == "status" else None


async def target_up(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


class AnswerProtocol(asyncio.Protocol):
    """Serves one answer per connection: allowlist check, the answer, close."""

    def __init__(self, server: "AnswerServer"):
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        if not peer or not self.server.admits(peer[0]):
            transport.abort()
            return
        asyncio.ensure_future(self._answer(transport))

    async def _answer(self, transport: asyncio.BaseTransport) -> None:
        try:
            data = await self.server.answer()
        except Exception:   # an answer must never take the relay down
            log.exception("answer failed")
            transport.abort()
            return
        if not transport.is_closing():
            transport.write(data)
            transport.close()

    def data_received(self, data: bytes) -> None:
        pass   # the client has nothing to say


class AnswerServer:
    """A listener that answers every connection with one document: the discovery answer on each
    listen address, the status answer on 127.0.0.1. It can move when its address changes."""

    def __init__(self, kind: str, port: int, answer, admits) -> None:
        self.kind = kind              # "discovery" or "status": names its log lines
        self.port = port              # 0: any free port; the real one once bound
        self.answer = answer          # async () -> bytes
        self.admits = admits          # (peer ip) -> bool
        self.host: Optional[str] = None
        self.server = None
        self.failing = False          # a failed bind was logged; say it once per episode

    async def bind(self, host: str, **fields) -> None:
        """Listen on host:port or raise OSError; the listening line is logged here, in one format."""
        loop = asyncio.get_running_loop()
        # an explicit backlog: under a burst of connects asyncio's default of 100 overflows and
        # the kernel's SYN cookies leave clients connected on their side only
        self.server = await loop.create_server(lambda: AnswerProtocol(self), host, self.port, backlog=BACKLOG)
        self.host = host
        self.port = self.server.sockets[0].getsockname()[1]
        self.failing = False
        listen = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        event(log, logging.INFO, f"{self.kind}-listening", listen=listen, **fields)

    async def follow(self, host: Optional[str], **fields) -> None:
        """Listen on `host` (None: nowhere), moving if it changed; a failed bind is logged once and
        retried at the next call."""
        if host == self.host and self.server is not None:
            problem = hostnet.listener_problem(self.server)
            if problem is None:
                return
            event(log, logging.WARNING, f"{self.kind}-listener-lost", listen=f"{host}:{self.port}", error=problem,
                  note="listening again")
        self.close()
        if host is None:
            return
        try:
            await self.bind(host, **fields)
        except OSError as e:
            if not self.failing:
                self.failing = True
                event(log, logging.WARNING, f"{self.kind}-not-listening", listen=f"{host}:{self.port}",
                      error=e.strerror or str(e), note="retrying; the routes are not affected")

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        self.host = None


async def route_rows(routes) -> list:
    """(name, port, target, target_up) of RouteServers: their state as last checked, or a fresh look."""
    ups = await asyncio.gather(*(_up(r) for r in routes))
    return [(r.route.name, r.address.port, str(r.route.target), up) for r, up in zip(routes, ups)]


async def _up(route) -> bool:
    if route.target_up is not None:
        return route.target_up
    return await target_up(route.route.target.host, route.route.target.port)
