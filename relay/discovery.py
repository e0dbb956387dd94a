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
from typing import List, Sequence, Tuple

from . import __version__

SERVICE = "tws-relay"
PROTOCOL = 1
MAX_ANSWER = 64 * 1024
DEFAULT_PORT = 17400
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


async def target_up(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


class DiscoveryProtocol(asyncio.Protocol):
    """Serves one answer per connection: allowlist check, then the routes with their targets' state."""

    def __init__(self, server: "DiscoveryServer"):
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
            log.exception("discovery answer failed")
            transport.abort()
            return
        if not transport.is_closing():
            transport.write(data)
            transport.close()

    def data_received(self, data: bytes) -> None:
        pass   # the client has nothing to say


class DiscoveryServer:
    """The discovery listener for one listen host: the routes on that host and who may ask."""

    def __init__(self, host: str, port: int, routes: List, allowed) -> None:
        self.host, self.port = host, port
        self.routes = routes          # RouteServer objects on this host
        self.admits = allowed         # callable(ip) -> bool
        self.server = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: DiscoveryProtocol(self), self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def answer(self) -> bytes:
        ups = await asyncio.gather(*(target_up(r.route.target.host, r.route.target.port) for r in self.routes))
        return build_answer([(r.route.name, r.address.port, str(r.route.target), up)
                             for r, up in zip(self.routes, ups)])

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
