"""Listeners: one RouteServer per route, and the Relay that starts and stops them all."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

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
    """One route: its listener (which may come and go), its connections, and its state."""

    def __init__(self, route: Route, settings: Settings, allow: Sequence[IPNetwork],
                 opts: Sequence[sockopts.Opt], inherit: bool = False, client_ids: Optional[ClientIds] = None,
                 on_target_failure=None):
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
        self.state = "starting"
        self.state_fields: dict = {}
        self.host: Optional[str] = None          # the address this route lives on now (None: no adapter)
        self.target_up: Optional[bool] = None    # as last checked (None: not checked)
        self.on_target_failure = on_target_failure or (lambda: None)

    async def start(self) -> None:
        """Bind the configured fixed address now (a bad address fails the start: exit 2)."""
        await self.bind(self.route.listen.host)

    async def bind(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        port = self.address.port if self.route.listen.port == 0 and self.address.port else self.route.listen.port
        try:
            server = await loop.create_server(lambda: Splice(self).client, host, port,
                                              backlog=128, start_serving=True)
        except OSError as e:
            raise BindError(f"route {self.route.name}: {hostnet.bind_hint(e, host, port)}") from None
        self.server = server
        self.host = host
        if self.inherit:
            for sock in server.sockets:
                self._apply(sock)
        bound = server.sockets[0].getsockname()
        self.address = type(self.route.listen)(bound[0], bound[1])
        self.state, self.state_fields = "listening", {"listen": str(self.address)}
        event(log, logging.INFO, "listening", route=self.route.name, listen=str(self.address),
              target=str(self.route.target), allow=",".join(map(str, self.allow)),
              max_connections=self.route.max_connections)

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def cut_all(self, why: str) -> int:
        n = len(self.active)
        for splice in list(self.active):
            splice.abort(f"relay ({why})")
        return n

    def set_state(self, state: str, **fields) -> None:
        """Record the route's state; one log line per change."""
        if (state, fields) == (self.state, self.state_fields):
            return
        self.state, self.state_fields = state, fields
        if state != "listening":
            level = logging.ERROR if state == "bind-failed" else logging.WARNING
            event(log, level, state, route=self.route.name, **fields)

    async def reconcile(self, host: Optional[str], up: bool, adapter: Optional[hostnet.Adapter] = None) -> None:
        """Make the listener match the world: listen on `host` while the target is up."""
        if host is None:
            self.stop_accepting()
            if self.host is not None:
                cut = self.cut_all("adapter gone")
                event(log, logging.WARNING, "adapter-gone", route=self.route.name, address=self.host,
                      connections_cut=cut)
                self.host = None
            self.set_state("waiting-for-adapter", adapter=self.route.interface,
                           note="binds as soon as the adapter has an address (is WSL running?)")
            return
        if self.host is not None and host != self.host:
            self.stop_accepting()
            cut = self.cut_all("address changed")
            event(log, logging.WARNING, "address-changed", route=self.route.name, old=self.host, new=host,
                  connections_cut=cut)
        self.host = host
        if adapter is not None and self.route.allow is None:
            allow = tuple(hostnet.adapter_default_allow(adapter))
            if allow != self.allow:
                self.allow, self.verdicts = allow, {}
        if not up:
            self.stop_accepting()        # a client now gets "connection refused" at once
            self.set_state("target-down", target=str(self.route.target),
                           note="not listening until it answers again")
            return
        if self.server is None:
            try:
                await self.bind(host)
            except BindError as e:
                self.set_state("bind-failed", error=str(e))

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
        if isinstance(err, ConnectionRefusedError):
            self.on_target_failure()     # check now instead of at the next interval
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
    """All routes of one configuration, their discovery answers, the status answer, and the
    supervisor that follows adapters and target health."""

    def __init__(self, config: Config, if_addrs: Optional[dict] = None, platform: str = sys.platform):
        self.config = config
        s = config.settings
        opts = sockopts.plan(platform, s.keepalive, s.user_timeout)
        inherit = sockopts.inherited_by_accepted_sockets(platform)
        self.client_ids = ClientIds()
        self.wake = asyncio.Event()
        self.supervisor: Optional[asyncio.Task] = None
        self.started = time.time()
        self.routes: List[RouteServer] = []
        for route in config.routes:
            if route.listen.host in WILDCARD_HOSTS and route.interface is None and not s.expose_to_all_networks:
                raise BindError(wildcard_refusal(route))
            if route.allow is not None:
                allow = list(route.allow)
            elif route.interface is not None:
                allow = list(hostnet.LOOPBACK)      # + the adapter's subnet once it is found
            else:
                allow = hostnet.default_allow(route.listen.host,
                                              if_addrs if if_addrs is not None else hostnet.interfaces())
            self.routes.append(RouteServer(route, s, allow, opts, inherit, self.client_ids, self.wake.set))
        # one discovery answer per listen place (a fixed address, or an adapter), same allowlist
        self.discovery: List[Tuple[discovery.AnswerServer, List[RouteServer]]] = []
        if s.discovery_port is not None:
            groups: Dict[str, List[RouteServer]] = {}
            for r in self.routes:
                groups.setdefault(r.route.interface or r.route.listen.host, []).append(r)
            for place, routes in groups.items():
                server = discovery.AnswerServer(
                    f"discovery answer ({place})", s.discovery_port,
                    lambda routes=routes: discovery.routes_answer(routes),
                    lambda ip, routes=routes: any(hostnet.allowed(ip, r.allow) for r in routes))
                self.discovery.append((server, routes))
        self.status: Optional[discovery.AnswerServer] = None
        if s.status_port is not None:
            self.status = discovery.AnswerServer("status answer", s.status_port, self.status_answer,
                                                 lambda ip: hostnet.allowed(ip, hostnet.LOOPBACK))

    @property
    def needs_supervisor(self) -> bool:
        return self.config.settings.target_check != "off" or any(r.route.interface for r in self.routes)

    async def start(self) -> None:
        try:
            for r in self.routes:
                if r.route.interface is None:
                    await r.start()
            for server, routes in self.discovery:
                if routes[0].route.interface is None:
                    try:
                        await server.bind(routes[0].route.listen.host)
                    except OSError as e:
                        raise BindError(f"discovery answer: {hostnet.bind_hint(e, routes[0].route.listen.host, server.port)}"
                                        f" (set discovery_port to another port, or false to turn it off)") from None
                    event(log, logging.INFO, "discovery-listening", listen=f"{server.host}:{server.port}",
                          routes=",".join(r.route.name for r in routes))
            if self.status is not None:
                try:
                    await self.status.bind("127.0.0.1")
                except OSError as e:
                    raise BindError(f"status answer: {hostnet.bind_hint(e, '127.0.0.1', self.status.port)} "
                                    f"(is another relay running? set status_port, or false to turn it off)") from None
                event(log, logging.INFO, "status-listening", listen=f"127.0.0.1:{self.status.port}")
        except BindError:
            self.stop_accepting()
            raise
        if self.needs_supervisor:
            await self.tick()            # the first look happens before serving starts in earnest
            self.supervisor = asyncio.ensure_future(self.supervise())

    async def supervise(self) -> None:
        s = self.config.settings
        while True:
            down = any(r.state in ("target-down", "bind-failed") for r in self.routes)
            try:
                await asyncio.wait_for(self.wake.wait(), s.check_interval_down if down else s.check_interval)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            try:
                await self.tick()
            except Exception:   # the supervisor must survive anything the world does
                log.exception("supervisor tick failed")

    async def tick(self) -> None:
        s = self.config.settings
        adapters: Dict[str, Optional[hostnet.Adapter]] = {}
        if any(r.route.interface for r in self.routes):
            addrs, stats = hostnet.interfaces(), hostnet.interface_stats()
            for r in self.routes:
                if r.route.interface and r.route.interface not in adapters:
                    adapters[r.route.interface] = hostnet.find_adapter(r.route.interface, addrs, stats)
        if s.target_check == "off":
            ups = [True] * len(self.routes)
        else:
            ups = await asyncio.gather(*(check_target(r.route.target, s.target_check) for r in self.routes))
        for r, up in zip(self.routes, ups):
            r.target_up = up if s.target_check != "off" else None
            if r.route.interface:
                adapter = adapters[r.route.interface]
                await r.reconcile(adapter.address if adapter else None, up, adapter)
            else:
                await r.reconcile(r.route.listen.host, up)
        for server, routes in self.discovery:
            if routes[0].route.interface:
                adapter = adapters.get(routes[0].route.interface)
                await server.follow(adapter.address if adapter else None)

    def stop_accepting(self) -> None:
        for r in self.routes:
            r.stop_accepting()
        for server, _ in self.discovery:
            server.close()
        if self.status is not None:
            self.status.close()

    async def status_answer(self) -> bytes:
        now = time.monotonic()
        doc = {"service": discovery.SERVICE, "kind": "status", "protocol": discovery.PROTOCOL,
               "version": discovery.__version__, "pid": os.getpid(), "up_seconds": round(time.time() - self.started),
               "routes": [{"name": r.route.name, "state": r.state, "listen": r.state_fields.get("listen")
                           or (f"{r.route.interface}:{r.route.listen.port}" if r.route.interface else str(r.address)),
                           "target": str(r.route.target), "target_up": r.target_up,
                           "connections": [{"peer": sp.peer, "client_id": sp.client_id,
                                            "server_version": sp.server_version, "bytes_up": sp.client.nbytes,
                                            "bytes_down": sp.upstream.nbytes, "age": round(now - sp.started, 1)}
                                           for sp in r.active]}
                          for r in self.routes]}
        return json.dumps(doc).encode() + b"\n"

    async def shutdown(self, grace: Optional[float] = None) -> int:
        """Stop accepting, let open connections finish for `grace` seconds, then cut the rest.
        Returns how many connections had to be cut."""
        grace = self.config.settings.shutdown_grace if grace is None else grace
        if self.supervisor is not None:
            self.supervisor.cancel()
            await asyncio.gather(self.supervisor, return_exceptions=True)
        self.stop_accepting()
        open_now = sum(len(r.active) for r in self.routes)
        if open_now:
            event(log, logging.INFO, "draining", connections=open_now, grace=grace)
            try:
                await asyncio.wait_for(asyncio.gather(*(r.idle.wait() for r in self.routes)), grace)
            except asyncio.TimeoutError:
                pass
        cut = sum(r.cut_all("shutdown") for r in self.routes)
        if cut:   # let the aborts' connection_lost callbacks run so the close lines are logged
            await asyncio.wait_for(asyncio.gather(*(r.idle.wait() for r in self.routes)), 5)
        return cut


async def check_target(target, how: str, timeout: float = 1.0) -> bool:
    """Does the target answer? 'connect': a TCP connect; 'handshake': the TWS API version reply."""
    if how != "handshake":
        return await discovery.target_up(target.host, target.port, timeout)
    try:
        await asyncio.wait_for(tws.ask_version(target.host, target.port), timeout)
        return True
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, tws.ProtocolError):
        return False


def wildcard_refusal(route: Route) -> str:
    return (f"route {route.name}: refusing to listen on {route.listen}: a wildcard address exposes the "
            f"trading API to every network this machine is on. Listen on one address (the WSL adapter's, "
            f"or 127.0.0.1), or set 'expose_to_all_networks: true' (--expose-to-all-networks) if you "
            f"really mean it")
