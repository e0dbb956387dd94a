"""`relay wsl forward`: TWS's own ports on 127.0.0.1 inside WSL, spliced to the Windows relay.

A bot that says `connect("127.0.0.1", 7497)` then runs unchanged in WSL. Each route of the
Windows relay (from its discovery answer) gets a local listener at TWS's port for that route;
the engine is the Windows side's own (Relay, RouteServer, the pump), so keepalive, the user
timeout, TWS awareness and fail-fast come with it: while the Windows relay's route is down (its TWS
is down: it stops listening; or the relay is unreachable), the local port is closed and a bot is
refused at once. The forwarder re-discovers Windows on an interval and whenever an upstream
connect fails, and moves its targets when the host or the ports change.

`plan()` and `mirrored_verdict()` are pure; `locate()` and `Forwarder` do the I/O.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .. import discovery, hostnet, tws
from ..config import Config, Endpoint, Route, Settings
from ..service import Relay
from ..logs import event
from . import discover as wsl

log = logging.getLogger("relay")

SOURCE = "relay wsl forward"          # the status answer's `config`: how doctor tells a forwarder
REDISCOVER_INTERVAL = 5.0             # seconds between looks for Windows while all is well


@dataclass(frozen=True)
class Forward:
    name: str
    local_port: int                    # on 127.0.0.1 inside WSL
    remote_port: int                   # the Windows relay's port for this route


class PlanError(Exception):
    """The routes asked for cannot be forwarded; the message says why."""


def local_port(route: discovery.RouteInfo) -> Optional[int]:
    """TWS's own port for a route: by its well-known name, else its target's port."""
    if route.name in tws.DEFAULT_PORTS:
        return tws.DEFAULT_PORTS[route.name]
    port = route.target.rsplit(":", 1)[-1]
    return int(port) if port.isdigit() and 0 < int(port) < 65536 else None


def plan(routes: Sequence[discovery.RouteInfo], wanted: Sequence[str] = ()) -> Tuple[List[Forward], List[str]]:
    """Which local port forwards to which relay port, and notes on what was left out. Pure."""
    names = [r.name for r in routes]
    missing = [w for w in wanted if w not in names]
    if missing:
        raise PlanError(f"the relay has no route {', '.join(map(repr, missing))} (it has: {', '.join(names) or 'none'})")
    forwards: List[Forward] = []
    notes: List[str] = []
    taken: Dict[int, str] = {}
    for r in routes:
        if wanted and r.name not in wanted:
            continue
        port = local_port(r)
        if port is None:
            notes.append(f"route {r.name}: no TWS port can be read from its target {r.target!r}; skipped")
        elif port in taken:
            notes.append(f"route {r.name}: local port {port} already forwards route {taken[port]}; skipped")
        else:
            taken[port] = r.name
            forwards.append(Forward(r.name, port, r.port))
    if not forwards:
        raise PlanError("no route to forward" + (": " + "; ".join(notes) if notes else ""))
    return forwards, notes


def mirrored_verdict(verdicts: Sequence[wsl.Verdict]) -> Tuple[int, List[str]]:
    """Mirrored networking: no forwarder is needed. (exit code, lines to print) from the handshake
    probes of 127.0.0.1 at TWS's ports. Pure."""
    lines = ["WSL runs in mirrored networking mode: 127.0.0.1 already reaches Windows, and TWS sees a "
             "bot's connection as local, so no forwarder (and no relay) is needed. Not listening."]
    ok = [v for v in verdicts if v.status == "ok"]
    if ok:
        lines += [f"TWS API answers at 127.0.0.1:{v.port} (server version {v.server_version}): connect there."
                  for v in ok]
        return 0, lines
    tried = ", ".join(f"{v.port} ({v.status})" for v in verdicts) or "none"
    lines.append(f"But no TWS API answered at 127.0.0.1 on the TWS ports (tried {tried}).")
    if any(v.status == "timeout" for v in verdicts):
        lines.append("A timeout on 127.0.0.1 is a known WSL mirrored-mode bug (loopback connections to Windows "
                     "hang; microsoft/WSL#11312, #12399). Try, in %UserProfile%\\.wslconfig under [wsl2]: "
                     "hostAddressLoopback=true, then `wsl --shutdown`; or use NAT mode (networkingMode=nat) with "
                     "the relay on Windows and `relay wsl forward`.")
    else:
        lines.append("Is TWS / IB Gateway running on Windows with the API enabled (Configure > API > Settings)?")
    return 1, lines


# ------------------------------------------------------------------------------ finding the relay

@dataclass
class Located:
    host: str
    routes: Tuple[discovery.RouteInfo, ...]
    how: str                             # "discovery answer" or "well-known ports"


async def locate(facts: wsl.Facts, host: Optional[str], discovery_port: int, timeout: float) -> Optional[Located]:
    """The Windows relay: the first candidate (in discover's order of trust) whose discovery answer
    comes; else, on the first candidate, the shipped relay.yaml's well-known ports (the target checks
    then tell which of them answer)."""
    sit = wsl.situation(facts, host)
    for cand in sit.candidates:
        try:
            answer = await discovery.fetch(cand.host, discovery_port, timeout)
        except (OSError, asyncio.TimeoutError, discovery.DiscoveryError):
            continue
        return Located(cand.host, answer.routes, "discovery answer")
    if not sit.candidates:
        return None
    well_known = tuple(discovery.RouteInfo(n, p, f"127.0.0.1:{tws.DEFAULT_PORTS[n]}", False)
                       for n, p in discovery.WELL_KNOWN_PORTS.items())
    return Located(sit.candidates[0].host, well_known, "well-known ports")


def _wsl_bind_hint(err: OSError, host: str, port: int) -> str:
    """A local port inside WSL that is taken: name the holder where the OS tells."""
    if not hostnet.in_use(err):
        return hostnet.bind_hint(err, host, port)
    owner = hostnet.port_owner(port)
    who = f"{owner[1]} (pid {owner[0]})" if owner else "another program (the OS does not say which)"
    return (f"{host}:{port} is already taken by {who}: an IB Gateway running inside WSL, or a second "
            f"forwarder? Stop it, or forward the other routes only (--route NAME)")


# ------------------------------------------------------------------------------ the forwarder

class Forwarder:
    """A Relay whose routes listen on 127.0.0.1 at TWS's ports and follow the Windows relay."""

    def __init__(self, located: Located, wanted: Sequence[str], settings: Settings,
                 relocate: Callable[[], "asyncio.Future"], interval: float = REDISCOVER_INTERVAL,
                 run_dir: Optional[str] = None):
        self.located = located
        self.wanted = tuple(wanted)
        self.relocate = relocate          # async () -> Optional[Located]
        self.interval = interval
        forwards, self.notes = plan(located.routes, wanted)
        routes = tuple(Route(name=f.name, listen=Endpoint("127.0.0.1", f.local_port),
                             target=Endpoint(located.host, f.remote_port), allow=hostnet.LOOPBACK)
                       for f in forwards)
        config = Config(routes=routes, settings=replace(settings, discovery_port=None,
                                                        expose_to_all_networks=False),
                        source=f"{SOURCE} (windows {located.host})")
        self.wake = asyncio.Event()
        self.relay = Relay(config, if_addrs={}, run_dir=run_dir, fatal_binds=False, identify=True,
                           bind_hint=_wsl_bind_hint, on_target_failure=self.wake.set)
        self.follower: Optional[asyncio.Task] = None
        self.announced: set = set()       # routes the relay has that were not forwarded, said once

    @property
    def routes(self):
        return self.relay.routes

    async def start(self) -> None:
        event(log, logging.INFO, "forwarding", windows=self.located.host, found_by=self.located.how,
              routes=",".join(f"{r.route.name}:127.0.0.1:{r.route.listen.port}->{r.route.target.port}"
                              for r in self.relay.routes))
        for note in self.notes:
            event(log, logging.WARNING, "route-skipped", note=note)
        await self.relay.start()
        self.follower = asyncio.ensure_future(self.follow())

    async def follow(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            try:
                found = await self.relocate()
            except Exception:   # following must survive anything the network does
                log.exception("re-discovery failed")
                continue
            if found is not None:
                moved = self.apply(found)
                if moved:
                    await self.relay.tick()          # look at the new targets now
                    for r, old in moved:
                        event(log, logging.WARNING, "windows-moved", route=r.route.name, old=str(old),
                              new=str(r.route.target), state=r.state)

    def apply(self, found: Located) -> list:
        """Point each route at where the Windows relay serves it now; returns [(route, old target)]."""
        ports = {r.name: r.port for r in found.routes}
        if found.how == "well-known ports" and self.located.how == "discovery answer":
            ports = {}                    # a passing lapse of the answer: keep what it said
        moved = []
        for r in self.relay.routes:
            old = r.route.target
            new = Endpoint(found.host, ports.get(r.route.name, old.port))
            if new != old:
                r.retarget(new)
                r.target_up = None
                moved.append((r, old))
        if found.how == "discovery answer":
            self.located = found
        known = {r.route.name for r in self.relay.routes}
        for name in sorted(set(ports) - known - self.announced):
            self.announced.add(name)
            if not self.wanted:
                event(log, logging.INFO, "route-not-forwarded", route=name,
                      note="the relay has a route this forwarder did not start with; restart it to forward it")
        return moved

    async def shutdown(self, grace: Optional[float] = None) -> int:
        if self.follower is not None:
            self.follower.cancel()
            await asyncio.gather(self.follower, return_exceptions=True)
        return await self.relay.shutdown(grace)
