"""Listeners: one RouteServer per route, and the Relay that starts and stops them all."""
from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Dict, List, Optional, Sequence

from . import discovery, hostnet, sockopts, tws
from .config import Config, IPNetwork, Route, Settings, WILDCARD_HOSTS
from .logs import RateLimit, event
from .pump import Splice

log = logging.getLogger("relay")


class BindError(Exception):
    """A route could not listen; the message says why and what to do."""


class ClientIds:
    """Which connection holds which clientId, per target (one TWS session serves one target)."""

    def __init__(self) -> None:
        self.held: Dict[tuple, Splice] = {}

    def claim(self, target: str, client_id: int, splice: Splice) -> Optional[Splice]:
        """Record the claim; return the live connection already holding this clientId, if any."""
        holder = self.held.get((target, client_id))
        if holder is not None and not holder.finished and holder is not splice:
            return holder
        self.held[(target, client_id)] = splice
        return None

    def release(self, target: str, client_id: int, splice: Splice) -> None:
        if self.held.get((target, client_id)) is splice:
            del self.held[(target, client_id)]


class RouteServer:
    def __init__(self, route: Route, settings: Settings, allow: Sequence[IPNetwork],
                 opts: Sequence[sockopts.Opt], inherit: bool = False, client_ids: Optional[ClientIds] = None):
        self.route = route
        self.settings = settings
        self.allow = tuple(allow)
        self.opts = list(opts)
        self.inherit = inherit   # accepted sockets inherit the listener's options (Linux)
        self.client_ids = client_ids if client_ids is not None else ClientIds()
        self.active: Dict[Splice, None] = {}   # insertion-ordered set of live connections
        self.server: Optional[asyncio.AbstractServer] = None
        self.refusals = RateLimit()
        self.verdicts: Dict[str, bool] = {}   # peer IP -> allowed? (parsing addresses is slow)
        self.opts_failed_logged = False
        self.address = route.listen   # the real bound address once listening (port 0 resolved)
        self.idle = asyncio.Event()
        self.idle.set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.route.listen.host, self.route.listen.port
        try:
            self.server = await loop.create_server(lambda: Splice(self).client, host, port,
                                                   backlog=128, start_serving=True)
        except OSError as e:
            raise BindError(f"route {self.route.name}: {hostnet.bind_hint(e, host, port)}") from None
        if self.inherit:
            for sock in self.server.sockets:
                self._apply(sock)
        bound = self.server.sockets[0].getsockname()
        self.address = type(self.route.listen)(bound[0], bound[1])
        event(log, logging.INFO, "listening", route=self.route.name, listen=str(self.address),
              target=str(self.route.target), allow=",".join(map(str, self.allow)),
              max_connections=self.route.max_connections)

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    # -- called by Splice -------------------------------------------------------------------

    def admit(self, splice: Splice) -> bool:
        peername = splice.client.transport.get_extra_info("peername")
        if not peername:   # uvloop can lose it when the peer already left; fail closed
            self._refuse("no-peer-address", "?")
            return False
        ip, port = peername[0], peername[1]
        splice.peer = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        verdict = self.verdicts.get(ip)
        if verdict is None:
            if len(self.verdicts) >= 4096:   # a scan from many addresses must not grow it unbounded
                self.verdicts.clear()
            verdict = self.verdicts[ip] = hostnet.allowed(ip, self.allow)
        if not verdict:
            self._refuse("not-in-allowlist", splice.peer, key=ip)
            return False
        if len(self.active) >= self.route.max_connections:
            self._refuse("connection-cap", splice.peer, key="cap", limit=self.route.max_connections)
            return False
        self.active[splice] = None
        self.idle.clear()
        event(log, logging.INFO, "open", route=self.route.name, peer=splice.peer, target=str(self.route.target))
        return True

    def tune(self, transport: asyncio.BaseTransport, accepted: bool) -> None:
        if accepted and self.inherit:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._apply(sock)

    def _apply(self, sock) -> None:
        failed = sockopts.apply(sock, self.opts)
        if failed and not self.opts_failed_logged:
            self.opts_failed_logged = True
            event(log, logging.WARNING, "socket-options-unsupported", route=self.route.name,
                  options=",".join(failed))

    def connect_failed(self, splice: Splice, err: BaseException) -> None:
        if isinstance(err, asyncio.TimeoutError):
            reason = "timed out"
        elif getattr(err, "errno", None):
            reason = os.strerror(err.errno)   # asyncio's own text hides it ("Connect call failed")
        else:
            reason = str(err) or type(err).__name__
        event(log, logging.WARNING, "upstream-failed", route=self.route.name, peer=splice.peer,
              target=str(self.route.target), error=reason,
              hint="is TWS / IB Gateway running with the API enabled on that port?")

    def tws_event(self, splice: Splice, ev: object) -> None:
        if isinstance(ev, tws.ServerHello):
            splice.server_version = ev.version
        elif isinstance(ev, tws.StartApi):
            splice.client_id = ev.client_id
            event(log, logging.INFO, "api-start", route=self.route.name, peer=splice.peer,
                  client_id=ev.client_id, server_version=splice.server_version)
            holder = self.client_ids.claim(str(self.route.target), ev.client_id, splice)
            if holder is not None:
                rejecting = self.settings.reject_duplicate_client_id
                event(log, logging.WARNING, "client-id-clash", route=self.route.name, client_id=ev.client_id,
                      peer=splice.peer, held_by=holder.peer,
                      action="answered with error 326 and closed" if rejecting else
                      "passed on; TWS will refuse or time out the newcomer")
                if rejecting:
                    splice.reject_client_id()
        elif isinstance(ev, tws.NotTws):
            event(log, logging.DEBUG, "not-tws", route=self.route.name, peer=splice.peer, side=ev.side,
                  reason=ev.reason)

    def finished(self, splice: Splice) -> None:
        if splice not in self.active:
            return   # refused before it was admitted; already logged
        del self.active[splice]
        if not self.active:
            self.idle.set()
        fields = {}
        if splice.client_id is not None:
            self.client_ids.release(str(self.route.target), splice.client_id, splice)
            fields = {"client_id": splice.client_id, "server_version": splice.server_version}
        event(log, logging.INFO, "close", route=self.route.name, peer=splice.peer,
              bytes_up=splice.client.nbytes, bytes_down=splice.upstream.nbytes,
              duration=round(splice.duration, 3), closed_by=splice.closed_by or "?", **fields)

    def _refuse(self, reason: str, peer: str, key: object = None, **fields) -> None:
        ok, suppressed = self.refusals.allow((reason, key))
        if ok:
            if suppressed:
                fields["suppressed"] = suppressed
            event(log, logging.WARNING, "refused", route=self.route.name, peer=peer, reason=reason, **fields)


class Relay:
    """All routes of one configuration."""

    def __init__(self, config: Config, if_addrs: Optional[dict] = None, platform: str = sys.platform):
        self.config = config
        s = config.settings
        opts = sockopts.plan(platform, s.keepalive, s.user_timeout)
        inherit = sockopts.inherited_by_accepted_sockets(platform)
        self.client_ids = ClientIds()
        self.routes: List[RouteServer] = []
        for route in config.routes:
            if route.listen.host in WILDCARD_HOSTS and not s.expose_to_all_networks:
                raise BindError(wildcard_refusal(route))
            if route.allow is not None:
                allow = list(route.allow)
            else:
                allow = hostnet.default_allow(route.listen.host,
                                              if_addrs if if_addrs is not None else hostnet.interfaces())
            self.routes.append(RouteServer(route, s, allow, opts, inherit, self.client_ids))
        self.discovery: List[discovery.DiscoveryServer] = []
        if s.discovery_port is not None:
            by_host: Dict[str, List[RouteServer]] = {}
            for r in self.routes:
                by_host.setdefault(r.route.listen.host, []).append(r)
            for host, routes in by_host.items():
                nets = [n for r in routes for n in r.allow]
                self.discovery.append(discovery.DiscoveryServer(
                    host, s.discovery_port, routes, lambda ip, nets=nets: hostnet.allowed(ip, nets)))

    async def start(self) -> None:
        try:
            for r in self.routes:
                await r.start()
            for d in self.discovery:
                try:
                    await d.start()
                except OSError as e:
                    raise BindError(f"discovery answer: {hostnet.bind_hint(e, d.host, d.port)} "
                                    f"(set discovery_port to another port, or false to turn it off)") from None
                event(log, logging.INFO, "discovery-listening", listen=f"{d.host}:{d.port}",
                      routes=",".join(r.route.name for r in d.routes))
        except BindError:
            self.stop_accepting()
            raise

    def stop_accepting(self) -> None:
        for r in self.routes:
            r.stop_accepting()
        for d in self.discovery:
            d.close()

    async def shutdown(self, grace: Optional[float] = None) -> int:
        """Stop accepting, let open connections finish for `grace` seconds, then cut the rest.
        Returns how many connections had to be cut."""
        grace = self.config.settings.shutdown_grace if grace is None else grace
        self.stop_accepting()
        open_now = sum(len(r.active) for r in self.routes)
        if open_now:
            event(log, logging.INFO, "draining", connections=open_now, grace=grace)
            try:
                await asyncio.wait_for(asyncio.gather(*(r.idle.wait() for r in self.routes)), grace)
            except asyncio.TimeoutError:
                pass
        cut = 0
        for r in self.routes:
            for splice in list(r.active):
                splice.abort("relay (shutdown)")
                cut += 1
        if cut:   # let the aborts' connection_lost callbacks run so the close lines are logged
            await asyncio.wait_for(asyncio.gather(*(r.idle.wait() for r in self.routes)), 5)
        for r in self.routes:
            if r.server is not None:
                await r.server.wait_closed()
        return cut


def wildcard_refusal(route: Route) -> str:
    return (f"route {route.name}: refusing to listen on {route.listen}: a wildcard address exposes the "
            f"trading API to every network this machine is on. Listen on one address (the WSL adapter's, "
            f"or 127.0.0.1), or set 'expose_to_all_networks: true' (--expose-to-all-networks) if you "
            f"really mean it")
