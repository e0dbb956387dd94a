"""The WSL side: where is Windows, does the relay answer there, which route to use.

`situation()` is pure: it takes the machine's facts (osrelease, environment, wslinfo output,
interface names, /proc/net/route, /etc/resolv.conf) as data and returns candidate hosts in order
of trust. `gather_facts()` reads them; `probe()` and `discover()` do the network part.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Mapping, Optional

from .. import discovery, tws
from ..probe import NoReply, ask_version

DNS_STUB = "10.255.255.254"   # WSL's DNS-tunneling stub, on WSL's own loopback: never Windows
ENV_HOST = "TWS_RELAY_HOST"
KNOWN_MODES = ("nat", "mirrored", "virtioproxy", "bridged", "none")
RTF_GATEWAY = 0x2


@dataclass
class Facts:
    osrelease: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    wslinfo: Optional[str] = None        # output of `wslinfo --networking-mode`, None if absent/failed
    interfaces: List[str] = field(default_factory=list)
    route_table: str = ""                # /proc/net/route
    resolv_conf: str = ""                # /etc/resolv.conf


@dataclass
class Candidate:
    host: str
    source: str


@dataclass
class Situation:
    environment: str                     # "wsl" or "linux" (a container or plain Linux box)
    mode: Optional[str]                  # "nat", "mirrored", ... ; None outside WSL
    mode_source: str
    candidates: List[Candidate]
    notes: List[str]


# -------------------------------------------------------------------------- pure rules

def is_wsl(osrelease: str, env: Mapping[str, str]) -> bool:
    return "microsoft" in osrelease.lower() or "WSL_DISTRO_NAME" in env or "WSL_INTEROP" in env


def parse_networking_mode(output: Optional[str]) -> Optional[str]:
    if not output:
        return None
    word = output.strip().lower()
    return word if word in KNOWN_MODES else None


def default_gateway(route_table: str) -> Optional[str]:
    """The IPv4 default gateway from /proc/net/route (Gateway is little-endian hex)."""
    lines = route_table.strip().splitlines()
    if not lines:
        return None
    header = lines[0].split()
    try:
        i_dest, i_gw, i_flags, i_mask = (header.index(k) for k in ("Destination", "Gateway", "Flags", "Mask"))
    except ValueError:
        return None
    for line in lines[1:]:
        cols = line.split()
        if len(cols) <= max(i_dest, i_gw, i_flags, i_mask):
            continue
        try:
            if (int(cols[i_dest], 16) == 0 and int(cols[i_mask], 16) == 0
                    and int(cols[i_flags], 16) & RTF_GATEWAY):
                gw = socket.inet_ntoa(struct.pack("<I", int(cols[i_gw], 16)))
                if gw != "0.0.0.0":
                    return gw
        except (ValueError, struct.error):
            continue
    return None


def nameservers(resolv_conf: str) -> List[str]:
    found = []
    for line in resolv_conf.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                found.append(ipaddress.ip_address(parts[1]).compressed)
            except ValueError:
                continue
    return found


def situation(facts: Facts, host_override: Optional[str] = None) -> Situation:
    notes: List[str] = []
    in_wsl = is_wsl(facts.osrelease, facts.env)
    env_host = facts.env.get(ENV_HOST)
    mode = parse_networking_mode(facts.wslinfo) if in_wsl else None
    mode_source = "wslinfo --networking-mode" if mode else ""
    if in_wsl and mode is None:
        if "loopback0" in facts.interfaces:
            mode, mode_source = "mirrored", "a loopback0 interface (mirrored mode's fingerprint)"
        else:
            mode, mode_source = "nat", "no loopback0 interface (NAT is WSL's default)"
    environment = "wsl" if in_wsl else "linux"
    if not in_wsl:
        notes.append("not WSL (a container or a plain Linux box): using the default gateway rule")

    if host_override:
        return Situation(environment, mode, mode_source, [Candidate(host_override, "--host")], notes)
    if env_host:
        return Situation(environment, mode, mode_source, [Candidate(env_host, f"${ENV_HOST}")], notes)
    if mode == "mirrored":
        notes.append("mirrored networking: Windows services are at 127.0.0.1 and TWS sees this "
                     "connection as local, so no relay is needed; connect to 127.0.0.1 and TWS's own port")
        return Situation(environment, mode, mode_source, [Candidate("127.0.0.1", "mirrored mode")], notes)

    candidates: List[Candidate] = []
    gw = default_gateway(facts.route_table)
    if gw:
        candidates.append(Candidate(gw, "default gateway"))
    else:
        notes.append("no IPv4 default route in /proc/net/route")
    for ns in nameservers(facts.resolv_conf):
        if ns == DNS_STUB:
            notes.append(f"{DNS_STUB} in /etc/resolv.conf is WSL's DNS tunneling stub on WSL's own "
                         f"loopback, not Windows: skipped (it answers 'connection refused')")
            continue
        if ipaddress.ip_address(ns).is_loopback or any(c.host == ns for c in candidates):
            continue
        candidates.append(Candidate(ns, "resolv.conf nameserver"))
    return Situation(environment, mode, mode_source, candidates, notes)


def choose_route(routes: List[discovery.RouteInfo], wanted: Optional[str]) -> discovery.RouteInfo:
    """One route: that one. Several: `wanted`, else tws-paper. Raises LookupError with the names."""
    names = ", ".join(r.name for r in routes) or "none"
    if wanted:
        for r in routes:
            if r.name == wanted:
                return r
        raise LookupError(f"the relay has no route {wanted!r} (it has: {names})")
    if len(routes) == 1:
        return routes[0]
    for r in routes:
        if r.name == "tws-paper":
            return r
    raise LookupError(f"the relay has several routes and none is 'tws-paper': pick one with --route ({names})")


# ------------------------------------------------------------------------ probing

@dataclass
class Verdict:
    host: str
    port: int
    what: str                 # "relay discovery", "route tws-paper", "TWS port"
    status: str               # ok | refused | reset | timeout | closed | unreachable | not-tws | wedged | error
    detail: str
    server_version: Optional[int] = None


FIREWALL_RULE = ("New-NetFirewallRule -DisplayName 'tws-relay' -Direction Inbound -Action Allow "
                 "-Protocol TCP -LocalPort {ports} -Profile Any "
                 "-RemoteAddress 172.16.0.0/12,192.168.0.0/16,10.0.0.0/8")


def explain(status: str, host: str, port: int, via_relay: bool, ports_hint: str = "17400,17497") -> str:
    """The likely cause of a probe result, in words a trader understands."""
    if status == "refused":
        return (f"nothing listens on {host}:{port}: is the relay running on Windows, listening on this "
                f"address, and is this its port?")
    if status == "reset":
        if via_relay:
            return ("the relay accepted and then dropped the connection: TWS / IB Gateway behind it is not "
                    "answering (is it running with the API enabled?), or this address is not in the "
                    "relay's allowlist")
        return ("reset right after connecting: you reached TWS directly and it rejected a non-local client "
                "('Allow connections from localhost only'). Connect through the relay's port instead")
    if status == "timeout":
        return ("no answer: Windows Firewall is most likely dropping traffic from WSL. Allow it in an "
                "administrator PowerShell: " + FIREWALL_RULE.format(ports=ports_hint) +
                " (and remove any Block rule for python.exe / relay.exe, which wins over Allow)")
    if status == "closed":
        return "the connection was closed without an answer: TWS / IB Gateway behind it is not answering"
    if status == "unreachable":
        return f"no route to {host}: the address is not reachable from here"
    if status == "not-tws":
        return "something answered, but not the TWS API handshake"
    if status == "wedged":
        return ("TWS / IB Gateway accepted the connection but never answered the API handshake: it is wedged "
                "(it happens after days up, or after a daily restart gone wrong). Restart TWS / IB Gateway"
                + ("; the relay stops listening on that route until TWS answers again" if via_relay else ""))
    return status


def _classify(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError) or isinstance(exc, BrokenPipeError):
        return "reset"
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed"
    if getattr(exc, "errno", None) in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    return "error"


async def probe(host: str, port: int, timeout: float, what: str, via_relay: bool) -> Verdict:
    """TCP connect, then the TWS API handshake: send the hello, expect the two-field version reply."""
    try:
        version = await ask_version(host, port, timeout, max(timeout, tws.REPLY_TIMEOUT))
    except NoReply:
        return Verdict(host, port, what, "wedged", explain("wedged", host, port, via_relay))
    except tws.ProtocolError:
        return Verdict(host, port, what, "not-tws", explain("not-tws", host, port, via_relay))
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
        status = _classify(e)
        detail = explain(status, host, port, via_relay) if status != "error" else str(e)
        return Verdict(host, port, what, status, detail)
    return Verdict(host, port, what, "ok", f"TWS API answered: server version {version}", version)


@dataclass
class Report:
    situation: Situation
    verdicts: List[Verdict]
    routes: Dict[str, List[dict]]          # host -> routes from that relay's discovery answer
    best: Optional[Verdict]
    route: Optional[str]                   # the chosen route's name, when through a relay

    def to_json(self) -> dict:
        return asdict(self)


async def discover(facts: Facts, *, host: Optional[str] = None, port: Optional[int] = None,
                   discovery_port: int = discovery.DEFAULT_PORT, route: Optional[str] = None,
                   timeout: float = 2.0) -> Report:
    sit = situation(facts, host)
    verdicts: List[Verdict] = []
    routes_by_host: Dict[str, List[dict]] = {}
    best, best_route = None, None
    for cand in sit.candidates:
        if best is not None:     # candidates come in order of trust: stop at the first working one
            break
        if port is not None:
            v = await probe(cand.host, port, timeout, "given port", via_relay=False)
            verdicts.append(v)
            if v.status == "ok" and best is None:
                best = v
            continue
        if sit.mode == "mirrored" and cand.source == "mirrored mode":
            for name, p in tws.DEFAULT_PORTS.items():
                v = await probe(cand.host, p, timeout, f"TWS port ({name})", via_relay=False)
                verdicts.append(v)
                if v.status == "ok" and best is None:
                    best = v
            continue
        try:
            answer = await discovery.fetch(cand.host, discovery_port, timeout)
        except discovery.DiscoveryError as e:
            verdicts.append(Verdict(cand.host, discovery_port, "relay discovery", "error", str(e)))
            continue
        except (OSError, asyncio.TimeoutError) as e:
            status = _classify(e)
            verdicts.append(Verdict(cand.host, discovery_port, "relay discovery", status,
                                    explain(status, cand.host, discovery_port, via_relay=False)))
            best, best_route = await _well_known(cand.host, route, timeout, verdicts, sit.notes)
            continue
        routes_by_host[cand.host] = [asdict(r) for r in answer.routes]
        verdicts.append(Verdict(cand.host, discovery_port, "relay discovery", "ok",
                                f"tws-relay {answer.version} answered with {len(answer.routes)} route(s)"))
        try:
            chosen = choose_route(list(answer.routes), route)
        except LookupError as e:
            verdicts.append(Verdict(cand.host, discovery_port, "route choice", "error", str(e)))
            continue
        v = await probe(cand.host, chosen.port, timeout, f"route {chosen.name}", via_relay=True)
        if v.status != "ok" and not chosen.target_up:
            v.detail = (f"the relay is running, but its target {chosen.target} (TWS / IB Gateway) is not "
                        f"answering: start it and enable the API")
        verdicts.append(v)
        if v.status == "ok" and best is None:
            best, best_route = v, chosen.name
    return Report(sit, verdicts, routes_by_host, best, best_route)


async def _well_known(host: str, route: Optional[str], timeout: float, verdicts: List[Verdict],
                      notes: List[str]):
    """No discovery answer: probe the shipped relay.yaml's ports all at once (a firewall then costs
    one timeout, not four). Returns (best verdict, route name) or (None, None)."""
    ports = {n: p for n, p in discovery.WELL_KNOWN_PORTS.items() if route in (None, n)}
    if not ports:
        notes.append(f"no discovery answer, and route {route!r} has no well-known port: pass --port")
        return None, None
    notes.append(f"no discovery answer from {host}: tried the well-known relay port(s) "
                 + ", ".join(str(p) for p in ports.values()))
    found = await asyncio.gather(*(probe(host, p, timeout, f"well-known relay port ({n})", via_relay=True)
                                   for n, p in ports.items()))
    verdicts.extend(found)
    for name, v in zip(ports, found):
        if v.status == "ok":
            return v, name
    return None, None


# ------------------------------------------------------------------------ reading the machine

def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def gather_facts() -> Facts:
    wslinfo = None
    exe = shutil.which("wslinfo")
    if exe:
        try:
            wslinfo = subprocess.run([exe, "--networking-mode"], capture_output=True, text=True,
                                     timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            wslinfo = None
    try:
        interfaces = os.listdir("/sys/class/net")
    except OSError:
        interfaces = []
    return Facts(osrelease=_read("/proc/sys/kernel/osrelease"), env=dict(os.environ), wslinfo=wslinfo,
                 interfaces=interfaces, route_table=_read("/proc/net/route"), resolv_conf=_read("/etc/resolv.conf"))
