"""Listeners: one RouteServer per route, and the Relay that starts and stops them all."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import control, discovery, hostnet, logs, native_pump, probe, registry, sockopts, tws
from .config import (Config, ConfigError, Endpoint, IPNetwork, Route, Settings, WILDCARD_HOSTS, parse_endpoint,
                     reaches, self_target)
from .error_words import describe
from .logs import RateLimit, event
from .pump import Splice

log = logging.getLogger("relay")


class BindError(Exception):
    """A route could not listen; the message says why and what to do."""

    def __init__(self, message: str, os_error: Optional[OSError] = None):
        super().__init__(message)
        self.os_error = os_error


class ClientIds:
    """Which connection holds which clientId, per target (one TWS session serves one target)."""

    def __init__(self) -> None:
        self.held: Dict[tuple, Splice] = {}

    def claim(self, target: str, client_id: int, splice: Splice) -> Optional[Splice]:
        """Record the claim; return the connection already holding this clientId, if its session
        is not over (see Splice.ending)."""
        holder = self.held.get((target, client_id))
        if holder is not None and holder is not splice and not holder.ending():
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
            if found is None or splice.finished:
                return
            splice.process = found
            if splice.client_id is not None:
                self._log_client(splice)
        future.add_done_callback(done)

    def _log_client(self, splice: Splice) -> None:
        pid, command = splice.process
        event(log, logging.INFO, "api-client", route=self.route.name, peer=splice.peer, client_id=splice.client_id,
              pid=pid, command=command)

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

    def tws_event(self, splice: Splice, ev: object) -> None:
        if isinstance(ev, tws.ServerHello):
            splice.server_version = ev.version
            if self.state == "target-wedged" and self.server is not None:   # checks off: listening throughout
                self.suspect_wedged, self.wedged_saw = False, None
                self.set_state("listening", listen=str(self.address))
                event(log, logging.INFO, "target-answers", route=self.route.name, target=str(self.route.target))
        elif isinstance(ev, tws.ApiReady):
            splice.phase = "api-ready"
            event(log, logging.INFO, "api-ready", route=self.route.name, peer=splice.peer, client_id=splice.client_id,
                  server_version=splice.server_version, accounts=ev.accounts)
        elif isinstance(ev, tws.ApiRefused):
            splice.phase, splice.reason = "refused", f"TWS error {ev.code}: {ev.text}"
            event(log, logging.WARNING, "api-refused", route=self.route.name, peer=splice.peer,
                  client_id=splice.client_id, code=ev.code, text=ev.text)
        elif isinstance(ev, tws.StartApi):
            splice.client_id = ev.client_id
            event(log, logging.INFO, "api-start", route=self.route.name, peer=splice.peer,
                  client_id=ev.client_id, server_version=splice.server_version)
            if splice.process is not None:
                self._log_client(splice)
            holder = self.client_ids.claim(str(self.route.target), ev.client_id, splice)
            if holder is not None:
                rejecting = self.settings.reject_duplicate_client_id
                event(log, logging.WARNING, "client-id-clash", route=self.route.name, client_id=ev.client_id,
                      peer=splice.peer, held_by=holder.peer,
                      action=f"answered with error 326 ({tws.error_form(splice.server_version)}) and closed"
                      if rejecting else "passed on; TWS will refuse or time out the newcomer")
                if rejecting:
                    splice.reject_client_id()
        elif isinstance(ev, tws.Unsettled):
            splice.phase = "unsettled"
            event(log, logging.WARNING, "api-unsettled", route=self.route.name, peer=splice.peer,
                  client_id=splice.client_id, saw=",".join(ev.saw) or "nothing", missing=",".join(ev.missing),
                  after=ev.bound, note="the opening did not settle; the session is relayed untouched")
        elif isinstance(ev, tws.NotTws):
            event(log, logging.DEBUG, "not-tws", route=self.route.name, peer=splice.peer, side=ev.side,
                  reason=ev.reason)

    def no_version_reply(self, splice: Splice) -> None:
        """A real session's hello got no version reply in time: TWS looks wedged. With target
        checks the next check (now) uses the handshake and stops the route while it stays so."""
        if self.suspect_wedged or self.state == "target-wedged":
            return
        self.suspect_wedged = True
        self.wedged_saw = (f"the API hello of {splice.peer} got no version reply from {self.route.target} within "
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
        if splice.phase == "hello" and splice.hello_seen:
            self._refused_silently(splice)
        del self.active[splice]
        if not self.active:
            self.idle.set()
        fields = {}
        if splice.client_id is not None:
            self.client_ids.release(str(self.route.target), splice.client_id, splice)
            fields = {"client_id": splice.client_id, "server_version": splice.server_version}
        up, down = splice.counts()
        event(log, logging.INFO, "close", route=self.route.name, peer=splice.peer, bytes_up=up, bytes_down=down,
              duration=round(splice.duration, 3), closed_by=splice.closed_by or "?", **fields)

    def _refused_silently(self, splice: Splice) -> None:
        """The session ended after TWS's version reply but before TWS settled it: say the likely causes."""
        id_text = f"clientId {splice.client_id}" if splice.client_id is not None else "the clientId"
        by_tws = bool(splice.closed_by) and splice.closed_by.startswith("upstream")
        if splice.server_version is None:
            if not by_tws:
                return      # the bot gave up waiting for the version reply: the wedge timer speaks of that
            why = ("TWS accepted the connection and closed it before answering the API handshake: the API is not "
                   "enabled on that port (Configure > API > Settings), or this is not TWS's API port")
        elif splice.client_id is None:
            why = "the bot left before sending startApi"
        elif by_tws:
            why = (f"TWS closed the session after startApi without a message: {id_text} already in use, or the "
                   f"API is not enabled for this port (Configure > API > Settings)")
        else:
            why = (f"TWS stayed silent after startApi until the bot gave up: an 'accept incoming connection?' "
                   f"dialog may be waiting on the Windows desktop, or {id_text} is already in use")
        splice.phase, splice.reason = "refused", why
        event(log, logging.WARNING, "api-refused", route=self.route.name, peer=splice.peer, client_id=splice.client_id,
              reason=why)

    def _refuse(self, reason: str, peer: str, key: object = None, **fields) -> None:
        ok, suppressed = self.refusals.allow((reason, key))
        if ok:
            if suppressed:
                fields["suppressed"] = suppressed
            event(log, logging.WARNING, "refused", route=self.route.name, peer=peer, reason=reason, **fields)


class Relay:
    """All routes of one configuration, their discovery answers, the status answer, and the
    supervisor that follows adapters and target health."""

    def __init__(self, config: Config, if_addrs: Optional[dict] = None, platform: str = sys.platform,
                 run_dir: Optional[str] = None, fatal_binds: bool = True, identify: bool = False,
                 bind_hint=hostnet.bind_hint, on_target_failure: Optional[Callable[[], None]] = None):
        """identify: name the local process behind each client (the WSL side, where clients are
        local); bind_hint: what a failed bind means, in words; on_target_failure: also called when a
        target refuses a connection (the relay itself checks that target at once)."""
        self.config = config
        self.fatal_binds = fatal_binds    # False: a route that cannot listen is reported and retried
        s = config.settings
        opts = sockopts.plan(platform, s.keepalive, s.user_timeout)
        inherit = sockopts.inherited_by_accepted_sockets(platform)
        self.client_ids = ClientIds()
        self.wake = asyncio.Event()
        self.ticking = asyncio.Lock()     # one look at the world at a time (two could bind twice)
        self.loop_errors = RateLimit(burst=3, window=60.0)
        self.accept_error: Optional[str] = None   # the last failed accept the loop reported
        self.supervisor: Optional[asyncio.Task] = None
        self.started = time.time()
        self.run_dir = run_dir            # None: the user's default run folder
        self.record: Optional[str] = None
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
            failed = self.wake.set if on_target_failure is None else (lambda: (self.wake.set(), on_target_failure()))
            self.routes.append(RouteServer(route, s, allow, opts, inherit, self.client_ids, failed, identify, bind_hint))
        # one discovery answer per listen place (a fixed address, or an adapter), same allowlist
        self.discovery: List[Tuple[discovery.AnswerServer, List[RouteServer]]] = []
        if s.discovery_port is not None:
            groups: Dict[str, List[RouteServer]] = {}
            for r in self.routes:
                groups.setdefault(r.route.interface or r.route.listen.host, []).append(r)
            for routes in groups.values():
                server = discovery.AnswerServer("discovery", s.discovery_port, None,
                                                lambda ip, routes=routes: any(hostnet.allowed(ip, r.allow)
                                                                              for r in routes))
                server.answer = lambda server=server, routes=routes: self.discovery_answer(server, routes)
                self.discovery.append((server, routes))
        self.control = control.ControlServer(control.new_token(), self.act)
        self.on_stop: Optional[Callable[[], None]] = None   # set by whoever runs the relay: a graceful stop
        self.status: Optional[discovery.AnswerServer] = None
        if s.status_port is not None:
            self.status = discovery.AnswerServer("status", s.status_port, self.status_answer,
                                                 lambda ip: hostnet.allowed(ip, hostnet.LOOPBACK))

    def on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """The event loop's reports go to the relay's log as one line each, a few a minute per kind.
        A failed accept wakes the supervisor, which checks every listener at once: the Proactor loop
        closes a listening socket after one (cpython#93821), the selector loop spins on a dead one."""
        exc = context.get("exception")
        message = str(context.get("message", ""))
        if "Accept failed" in message or "_accept_connection" in repr(context.get("handle")):
            self.accept_error = str(exc) if exc else message
            self.wake.set()
        kind = (type(exc).__name__ if exc else "", message.split(" ")[:3])
        ok, suppressed = self.loop_errors.allow(repr(kind))
        if not ok:
            return
        fields = {"message": message[:200], "error": describe(exc) if exc else None}
        if suppressed:
            fields["suppressed"] = suppressed
        bug = exc is not None and not isinstance(exc, OSError)   # keep the traceback of what is not the network's
        log.log(logging.ERROR if bug else logging.WARNING, "loop-error", extra={"fields": fields},
                exc_info=exc if bug else None)

    @property
    def source(self) -> str:
        return self.config.source or "command line"

    async def start(self) -> None:
        """Bind the routes on fixed addresses (a failure is fatal: BindError), then the answers
        (a failure never is: they are conveniences), then record this relay for its neighbours."""
        try:
            for r in self.routes:
                if r.route.interface is None:
                    try:
                        await r.start()
                    except BindError as e:
                        if self.fatal_binds:
                            raise
                        r.set_state("bind-failed", error=str(e), note="retrying; the other routes are not affected")
        except BindError:
            self.stop_accepting()
            raise
        for server, routes in self.discovery:
            if routes[0].route.interface is None:
                await self._bind_discovery(server, routes)
        if self.status is not None:
            await self._bind_status()
        try:
            await self.control.bind()
        except OSError as e:
            event(log, logging.WARNING, "control-off", error=e.strerror or str(e),
                  note="`relay kick` cannot reach this relay")
        self.record = registry.register(self.registry_record(), self.run_dir)
        folder = self.run_dir or registry.default_dir()
        if self.control.server is not None and not registry.private(folder):
            event(log, logging.WARNING, "control-off", folder=folder,
                  error="the run folder is not private to this user, so the control secret is not written there",
                  note="`relay kick` and `relay stop` cannot reach this relay; point TWS_RELAY_RUN_DIR at a folder "
                       "only you can read (on Windows, inside %LOCALAPPDATA%)")
        asyncio.get_running_loop().set_exception_handler(self.on_loop_error)
        await self.tick()            # the first look happens before serving starts in earnest
        self.supervisor = asyncio.ensure_future(self.supervise())

    def _holder(self, port: int) -> str:
        """Who holds a local port, in words: another relay (pid, config) if one says so, else the OS's owner."""
        for rec in registry.live(self.run_dir, exclude_pid=os.getpid()):
            ports = {rec.get("status_port"), rec.get("discovery_port")} | {r.get("port") for r in rec.get("routes", [])}
            if port in ports:
                return f"another tws-relay (pid {rec['pid']}, config {rec.get('config')})"
        owner = hostnet.port_owner(port)
        return f"{owner[1]} (pid {owner[0]})" if owner else "another program"

    async def _bind_discovery(self, server: discovery.AnswerServer, routes: List[RouteServer]) -> None:
        host = routes[0].route.listen.host
        names = ",".join(r.route.name for r in routes)
        try:
            await server.bind(host, routes=names)
        except OSError as e:
            server.failing = True
            held = self._holder(server.port) if hostnet.in_use(e) else ""
            event(log, logging.WARNING, "discovery-not-listening", listen=f"{host}:{server.port}",
                  error=hostnet.bind_problem(e), held_by=held or None,
                  note=("that relay answers for these routes too" if held.startswith("another tws-relay") else
                        "`relay wsl discover` finds these routes only with --port; set discovery_port "
                        "(--discovery-port) to a free port") + "; the routes are not affected, retrying")

    async def _bind_status(self) -> None:
        status = self.status
        wanted = status.port
        try:
            await status.bind("127.0.0.1")
            return
        except OSError as e:
            problem, held = hostnet.bind_problem(e), (self._holder(wanted) if hostnet.in_use(e) else None)
        if wanted:
            status.port = 0
            try:
                await status.bind("127.0.0.1")
            except OSError:
                pass
        event(log, logging.WARNING, "status-port-busy", port=wanted, error=problem, held_by=held,
              listen=f"127.0.0.1:{status.port}" if status.server else None,
              note="`relay status` still finds this relay; set status_port (--status-port) to choose the port")

    def registry_record(self) -> dict:
        s = self.config.settings
        return {"version": discovery.__version__, "config": self.source,
                "status_port": self.status.port if self.status and self.status.server else None,
                "discovery_port": s.discovery_port,
                "control_port": self.control.port, "control_token": self.control.token,
                "log_file": logs.current_file,
                "routes": [{"name": r.route.name, "port": r.address.port, "target": str(r.route.target)}
                           for r in self.routes]}

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
        async with self.ticking:
            await self._tick()

    async def _tick(self) -> None:
        s = self.config.settings
        accept_error, self.accept_error = self.accept_error, None
        for r in self.routes:
            r.check_listener(accept_error)
        await self._check_answers()
        adapters: Dict[str, Optional[hostnet.Adapter]] = {}
        if any(r.route.interface for r in self.routes):
            addrs, stats = hostnet.interfaces(), hostnet.interface_stats()
            for r in self.routes:
                if r.route.interface and r.route.interface not in adapters:
                    adapters[r.route.interface] = hostnet.find_adapter(r.route.interface, addrs, stats)
        loops = self._loops(adapters)
        # a route a real session found wedged is checked with the handshake until TWS answers again
        hows = ["handshake" if r.suspect_wedged else s.target_check for r in self.routes]
        # each route on its own clock: a healthy TWS is not probed faster because another route is down
        now = asyncio.get_running_loop().time()
        due = [how != "off" and r not in loops and (r.check_due <= now or r.suspect_wedged)
               for r, how in zip(self.routes, hows)]
        states = await asyncio.gather(*(check_target(r.route.target, how) if checking
                                        else _as_known(r.target_state if how != "off" else "up")
                                        for r, how, checking in zip(self.routes, hows, due)))
        for r, how, state, checking in zip(self.routes, hows, states, due):
            r.target_up = (state == "up") if how != "off" else None
            if checking:
                r.target_state = state
                # a little early, so a check never slips a whole supervisor interval behind
                interval = s.check_interval if state == "up" else s.check_interval_down
                r.check_due = now + interval - min(s.check_interval_down, interval) / 2
            if r in loops:
                r.refuse_loop(*loops[r])
            elif r.route.interface:
                adapter = adapters[r.route.interface]
                await r.reconcile(adapter.address if adapter else None, state, adapter)
            else:
                await r.reconcile(r.route.listen.host, state)
        for server, routes in self.discovery:
            if routes[0].route.interface:
                adapter = adapters.get(routes[0].route.interface)
                host = adapter.address if adapter else None
            else:
                host = routes[0].route.listen.host
            await server.follow(host, routes=",".join(r.route.name for r in routes))

    def _loops(self, adapters: Dict[str, Optional[hostnet.Adapter]]) -> Dict[RouteServer, tuple]:
        """Routes whose target is where a route of this relay listens now: {route: (listener, place)}.
        The configuration refuses the fixed addresses; an adapter's is known only now."""
        places = [(r, Endpoint(adapters[r.route.interface].address, r.route.listen.port) if r.route.interface
                   else r.address) for r in self.routes if not r.route.interface or adapters[r.route.interface]]
        found = {}
        for r in self.routes:
            for listener, place in places:
                if place.port and reaches(r.route.target, place):
                    found[r] = (listener, place)
                    break
        return found

    async def _check_answers(self) -> None:
        """The status and control listeners, bound again if their socket stopped (the discovery
        answers are followed with the routes)."""
        moved = False
        for name, server in (("status", self.status), ("control", self.control)):
            error = hostnet.listener_problem(server.server) if server is not None and server.server else None
            if error is None:
                continue
            port = server.port
            server.close()
            try:
                await (server.bind("127.0.0.1") if name == "status" else server.bind(port))
            except OSError as e:
                error += f"; binding again failed: {e.strerror or e}"
            event(log, logging.WARNING, f"{name}-listener-lost", port=port, error=error,
                  listen=f"127.0.0.1:{server.port}" if server.server else None)
            moved = moved or server.port != port
        if moved and self.record:
            self.record = registry.register(self.registry_record(), self.run_dir)

    def stop_accepting(self) -> None:
        for r in self.routes:
            r.stop_accepting()
        for server, _ in self.discovery:
            server.close()
        if self.status is not None:
            self.status.close()
        self.control.close()
        registry.unregister(self.record)
        self.record = None

    def act(self, request: dict) -> dict:
        """A control request that carried this run's secret."""
        if request.get("action") == "stop" and self.on_stop is not None:
            self.on_stop()
            return {"ok": True, "stopping": os.getpid()}
        if request.get("action") != "kick":
            return {"ok": False, "error": "unknown action (kick or stop)"}
        client_id, route = request.get("client_id"), request.get("route")
        if isinstance(client_id, bool) or not isinstance(client_id, int):
            return {"ok": False, "error": "client_id must be a whole number"}
        if route is not None and not isinstance(route, str):
            return {"ok": False, "error": "route must be a route's name"}
        held = [(r, sp) for r in self.routes if route in (None, r.route.name) for sp in r.active
                if sp.client_id == client_id]
        if not held:
            where = f" on route {route}" if route else ""
            return {"ok": False, "error": f"no connection holds clientId {client_id}{where} through this relay"}
        if len({r.route.name for r, _ in held}) > 1:
            names = ", ".join(sorted({r.route.name for r, _ in held}))
            return {"ok": False, "error": f"clientId {client_id} is held on several routes ({names}): pass --route"}
        kicked = []
        for r, sp in held:
            event(log, logging.WARNING, "kicked", route=r.route.name, peer=sp.peer, client_id=client_id,
                  note="both legs closed so TWS frees the clientId now")
            sp.abort("relay (kicked)")
            kicked.append({"route": r.route.name, "peer": sp.peer, "client_id": client_id})
        return {"ok": True, "kicked": kicked}

    async def discovery_answer(self, server: discovery.AnswerServer, routes: List[RouteServer]) -> bytes:
        """This relay's routes on this address, then those of the other relays on the same address
        (one relay per port, socat-style: only one of them can hold the discovery port)."""
        own = await discovery.route_rows(routes)
        return discovery.build_answer(own + await self.neighbour_rows(server.host, {row[1] for row in own}))

    async def neighbour_rows(self, host: Optional[str], taken: set) -> list:
        others = [rec for rec in registry.live(self.run_dir, exclude_pid=os.getpid()) if rec.get("status_port")]
        docs = await asyncio.gather(*(discovery.fetch_status(rec["status_port"], timeout=0.5) for rec in others))
        rows = []
        for doc in docs:
            for r in (doc or {}).get("routes", []):
                try:
                    where = parse_endpoint(r.get("listen"), "listen", listen=True)
                except ConfigError:
                    continue       # waiting for an adapter: nothing to offer yet
                if where.host == host and where.port not in taken:
                    up = r.get("target_up")
                    rows.append((r["name"], where.port, r["target"], r["state"] == "listening" if up is None else up))
        return rows

    async def status_answer(self) -> bytes:
        now = time.monotonic()
        doc = {"service": discovery.SERVICE, "kind": "status", "protocol": discovery.PROTOCOL,
               "version": discovery.__version__, "pid": os.getpid(), "up_seconds": round(time.time() - self.started),
               "config": self.source, "log_file": logs.current_file,
               "pump": "native" if native_pump.chosen(self.config.settings.pump) else "python",
               "pump_threads": native_pump.threads_running(), "busy_poll_us": self.config.settings.busy_poll,
               "routes": [{"name": r.route.name, "state": r.live_state, "listen": r.state_fields.get("listen")
                           or (f"{r.route.interface}:{r.route.listen.port}" if r.route.interface else str(r.address)),
                           "target": str(r.route.target), "target_up": r.target_up,
                           "connections": [{"peer": sp.peer, "client_id": sp.client_id,
                                            "phase": sp.phase, "reason": sp.reason,
                                            "pid": sp.process[0] if sp.process else None,
                                            "command": sp.process[1] if sp.process else None,
                                            "server_version": sp.server_version,
                                            **dict(zip(("bytes_up", "bytes_down"), sp.counts())),
                                            "pump": "native" if sp.native is not None else "python",
                                            "age": round(now - sp.started, 1)}
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
        asyncio.get_running_loop().set_exception_handler(None)
        open_now = sum(len(r.active) for r in self.routes)
        if open_now and grace > 0:
            event(log, logging.INFO, "draining", connections=open_now, grace=grace)
            try:
                await asyncio.wait_for(self._all_idle(), grace)
            except asyncio.TimeoutError:
                pass
        cut = sum(r.cut_all("shutdown") for r in self.routes)
        if cut:   # let the aborts' connection_lost callbacks run so the close lines are logged
            await asyncio.wait_for(self._all_idle(), 5)
        return cut

    async def _all_idle(self) -> None:
        # one coroutine, not gather(): a gather cancelled inside wait_for (a second Ctrl+C) keeps its
        # CancelledError as an exception nobody retrieves, and asyncio prints it as a traceback
        for r in self.routes:
            await r.idle.wait()


async def check_target(target, how: str, timeout: float = 1.0) -> str:
    """'up', 'down' or 'wedged'. 'connect': a TCP connect; 'handshake': the TWS API version reply
    (a target that accepts and never answers is wedged)."""
    if how != "handshake":
        return "up" if await discovery.target_up(target.host, target.port, timeout) else "down"
    try:
        await probe.ask_version(target.host, target.port, timeout, tws.REPLY_TIMEOUT)
        return "up"
    except probe.NoReply:
        return "wedged"
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, tws.ProtocolError):
        return "down"


async def _as_known(state: str) -> str:
    """A target's state without a check: as last checked, or 'up' when checks are off."""
    return state


def wildcard_refusal(route: Route) -> str:
    return (f"route {route.name}: refusing to listen on {route.listen}: a wildcard address exposes the "
            f"trading API to every network this machine is on. Listen on one address (the WSL adapter's, "
            f"or 127.0.0.1), or set 'expose_to_all_networks: true' (--expose-to-all-networks) if you "
            f"really mean it")
