"""The relay service: every route of one configuration (route_server.py), the supervisor that follows
adapters, targets and listeners (and routes that point at the relay itself), the discovery, status
and control answers, and shutdown. `relay serve` and `relay wsl forward` each run one.

Over 400 lines on purpose: one class whose parts share the routes and the supervisor's clock."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

from . import control, discovery, hostnet, logs, native_pump, probe, registry, sockopts, tws
from .client_ids import ClientIds
from .config import Config, ConfigError, Endpoint, WILDCARD_HOSTS, parse_endpoint, reaches
from .error_words import describe
from .logs import RateLimit, event
from .route_server import BindError, RouteServer, wildcard_refusal

log = logging.getLogger("relay")


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
                if sp.session.client_id == client_id]
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
                           "connections": [{"peer": sp.peer, "client_id": sp.session.client_id,
                                            "phase": sp.session.phase, "reason": sp.session.reason,
                                            "pid": sp.session.process[0] if sp.session.process else None,
                                            "command": sp.session.process[1] if sp.session.process else None,
                                            "server_version": sp.session.server_version,
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
