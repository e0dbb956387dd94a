"""One route: its listener (which may come and go), admission (allowlist, connection cap), the
TWS session events it logs, and its state as `relay status` shows it. The Relay (service.py) runs
one per route and decides when each listens."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Dict, Optional, Sequence

from . import hostnet, sockopts, tws
from .client_ids import ClientIds
from .config import Endpoint, IPNetwork, Route, Settings, self_target
from .error_words import describe
from .logs import RateLimit, event
from .pump import Splice

log = logging.getLogger("relay")


class BindError(Exception):
    """A route could not listen; the message says why and what to do."""

    def __init__(self, message: str, os_error: Optional[OSError] = None):
        super().__init__(message)
        self.os_error = os_error


class RouteServer:
    """One route: its listener (which may come and go), its connections, and its state."""

    def __init__(self, route: Route, settings: Settings, allow: Sequence[IPNetwork],
                 opts: Sequence[sockopts.Opt], inherit: bool = False, client_ids: Optional[ClientIds] = None,
                 on_target_failure=None, identify: bool = False, bind_hint=hostnet.bind_hint):
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
        self.target_state = "up"                 # 'up', 'down' or 'wedged', as last checked
        self.check_due = 0.0                     # loop time of this route's next target check
        self.on_target_failure = on_target_failure or (lambda: None)
        self.bind_hint = bind_hint           # what a failed bind means here (the WSL side says it otherwise)
        self.suspect_wedged = False          # a real session got no version reply: check with the handshake
        self.wedged_saw: Optional[str] = None
        self.identify = identify             # name the local process behind each (loopback) client

    async def start(self) -> None:
        """Bind the configured fixed address now (a bad address fails the start: exit 2)."""
        await self.bind(self.route.listen.host)

    async def bind(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        port = self.address.port if self.route.listen.port == 0 and self.address.port else self.route.listen.port
        try:
            server = await loop.create_server(lambda: Splice(self, loop).client, host, port,
                                              backlog=sockopts.BACKLOG, start_serving=True)
        except OSError as e:
            raise BindError(f"route {self.route.name}: {self.bind_hint(e, host, port)}", e) from None
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

    def check_listener(self, last_error: Optional[str] = None) -> None:
        """A listener whose socket stopped under its server is closed and said once; reconcile binds
        it again in the same tick."""
        problem = hostnet.listener_problem(self.server) if self.server is not None else None
        if problem is None:
            return
        self.stop_accepting()
        error = f"{problem} (last accept error: {last_error})" if last_error else problem
        self.state, self.state_fields = "listener-lost", {"listen": str(self.address), "error": error}
        event(log, logging.WARNING, "listener-lost", route=self.route.name, listen=str(self.address), error=error,
              note="listening again")

    @property
    def live_state(self) -> str:
        """The state as last set, or listener-lost already while the next tick has yet to see it."""
        if self.state == "listening" and self.server is not None and hostnet.listener_problem(self.server):
            return "listener-lost"
        return self.state

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
            level = logging.ERROR if state in ("bind-failed", "target-is-this-relay") else logging.WARNING
            event(log, level, state, route=self.route.name, **fields)

    async def reconcile(self, host: Optional[str], target: str, adapter: Optional[hostnet.Adapter] = None) -> None:
        """Make the listener match the world: listen on `host` while the target is 'up' (not 'down'
        or 'wedged')."""
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
        if target == "wedged":
            self._wedged()
            return
        if target != "up":
            self.stop_accepting()        # a client now gets "connection refused" at once
            self.set_state("target-down", target=str(self.route.target),
                           note="not listening until it answers again")
            return
        self.suspect_wedged, self.wedged_saw = False, None
        if self.server is None:
            try:
                await self.bind(host)
            except BindError as e:
                self.set_state("bind-failed", error=str(e))

    def retarget(self, target: Endpoint) -> None:
        """Relay new connections to `target` from now on (the WSL side follows Windows' address)."""
        self.route = replace(self.route, target=target)

    def refuse_loop(self, listener: "RouteServer", place: Endpoint) -> None:
        """The target is where this relay itself listens now (known only at run time: an adapter's
        address): do not listen, or every session would open another through the relay."""
        self.stop_accepting()
        if self.state != "target-is-this-relay":
            self.cut_all("target is this relay")
        listen_key = f"{listener.route.name}'s listen" if listener is not self else "listen"
        self.set_state("target-is-this-relay", target=str(self.route.target), listener=listener.route.name,
                       error=self_target(self.route.target, listener.route, listener is self,
                                         f"{listen_key}, now {place}"))

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
        if self.identify:
            self._identify(splice, ip, port)
        return True

    def _identify(self, splice: Splice, ip: str, port: int) -> None:
        """Find the local process behind a client (a /proc scan: off the event loop), then log it
        with the clientId once both are known."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, hostnet.local_process, ip, port, self.address.port)

        def done(f: asyncio.Future) -> None:
            found = None if f.cancelled() or f.exception() else f.result()
            if found is not None and not splice.finished:
                splice.session.found_process(found)
        future.add_done_callback(done)

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
            self.check_due = 0.0         # check now instead of at the next interval
            self.on_target_failure()
        event(log, logging.WARNING, "upstream-failed", route=self.route.name, peer=splice.peer,
              target=str(self.route.target), error=describe(err),
              hint="is TWS / IB Gateway running with the API enabled on that port?")

    def target_answered(self) -> None:
        """TWS sent a version reply to a session: a wedge suspected with target checks off clears."""
        if self.state == "target-wedged" and self.server is not None:   # checks off: listening throughout
            self.suspect_wedged, self.wedged_saw = False, None
            self.set_state("listening", listen=str(self.address))
            event(log, logging.INFO, "target-answers", route=self.route.name, target=str(self.route.target))

    def no_version_reply(self, peer: str) -> None:
        """A real session's hello got no version reply in time: TWS looks wedged. With target
        checks the next check (now) uses the handshake and stops the route while it stays so."""
        if self.suspect_wedged or self.state == "target-wedged":
            return
        self.suspect_wedged = True
        self.wedged_saw = (f"the API hello of {peer} got no version reply from {self.route.target} within "
                           f"{tws.REPLY_TIMEOUT:g} s, though the connection was accepted")
        if self.settings.target_check == "off":
            self.set_state("target-wedged", target=str(self.route.target), saw=self.wedged_saw,
                           note="still listening (target_check is off); clears when TWS answers a bot again")
        else:
            self._wedged()               # the handshake checks from now on tell when it answers again

    def _wedged(self) -> None:
        self.stop_accepting()            # as for a downed target: refused at once, not a 4 s hang
        self.set_state("target-wedged", target=str(self.route.target),
                       saw=self.wedged_saw or f"it accepts connections but sent no API version reply within "
                                              f"{tws.REPLY_TIMEOUT:g} s",
                       note="not listening until TWS answers the API again; restart TWS / IB Gateway if it stays so")

    def finished(self, splice: Splice) -> None:
        if splice not in self.active:
            return   # refused before it was admitted; already logged
        session = splice.session
        session.diagnose()
        del self.active[splice]
        if not self.active:
            self.idle.set()
        fields = {}
        if session.client_id is not None:
            session.release()
            fields = {"client_id": session.client_id, "server_version": session.server_version}
        up, down = splice.counts()
        event(log, logging.INFO, "close", route=self.route.name, peer=splice.peer, bytes_up=up, bytes_down=down,
              duration=round(splice.duration, 3), closed_by=splice.closed_by or "?", **fields)

    def _refuse(self, reason: str, peer: str, key: object = None, **fields) -> None:
        ok, suppressed = self.refusals.allow((reason, key))
        if ok:
            if suppressed:
                fields["suppressed"] = suppressed
            event(log, logging.WARNING, "refused", route=self.route.name, peer=peer, reason=reason, **fields)


def wildcard_refusal(route: Route) -> str:
    return (f"route {route.name}: refusing to listen on {route.listen}: a wildcard address exposes the "
            f"trading API to every network this machine is on. Listen on one address (the WSL adapter's, "
            f"or 127.0.0.1), or set 'expose_to_all_networks: true' (--expose-to-all-networks) if you "
            f"really mean it")
