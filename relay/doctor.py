"""`relay doctor`: every check between a WSL bot and TWS, each with a verdict and the fix.

Host side (Windows, or `--side host`): config, each target (listening, who owns the port, API
handshake), the WSL adapter, the relay's ports (bindable, Hyper-V excluded ranges), the firewall
rule to add. WSL side: discovery and the handshake through the relay. Parsers of Windows command
output are pure and tested with recorded output.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

from . import config as cfg, hostnet, logs, registry, tws
from .wsl import discover as wsl
from .discovery import DEFAULT_PORT as DISCOVERY_PORT, fetch_status, target_up

PASS, WARN, FAIL, INFO = "pass", "warn", "fail", "info"
STATUS_PORT = cfg.STATUS_PORT


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


# ------------------------------------------------------------------------------ pure parts

def parse_excluded_ranges(netsh_output: str) -> List[Tuple[int, int]]:
    """Ranges from `netsh int ipv4 show excludedportrange protocol=tcp`."""
    ranges = []
    for line in netsh_output.splitlines():
        m = re.match(r"^\s*(\d{1,5})\s+(\d{1,5})\s*\*?\s*$", line)
        if m:
            ranges.append((int(m.group(1)), int(m.group(2))))
    return ranges


def excluded(port: int, ranges: List[Tuple[int, int]]) -> Optional[Tuple[int, int]]:
    return next((r for r in ranges if r[0] <= port <= r[1]), None)


@dataclass(frozen=True)
class PortProxy:
    listen_address: str
    listen_port: int
    connect_address: str
    connect_port: int


def parse_portproxy(netsh_output: str) -> List[PortProxy]:
    """Rules from `netsh interface portproxy show all` (every v4tov4 / v4tov6 / ... table)."""
    rules = []
    for line in netsh_output.splitlines():
        cols = line.split()
        if len(cols) == 4 and cols[1].isdigit() and cols[3].isdigit():
            rules.append(PortProxy(cols[0], int(cols[1]), cols[2], int(cols[3])))
    return rules


def portproxy_checks(rules: List[PortProxy], tws_ports: List[int], relay_ports: List[int]) -> List[Check]:
    """A portproxy rule on TWS's port makes TWS's own bind fail after a reboot (iphlpsvc holds the
    port first); one on a relay port takes the relay's place."""
    checks = []
    for rule in rules:
        what = ("TWS's API port" if rule.listen_port in tws_ports else
                "a relay port" if rule.listen_port in relay_ports else None)
        if what is None:
            continue
        checks.append(Check(f"portproxy on {rule.listen_port}", FAIL,
                            f"a `netsh interface portproxy` rule listens on {rule.listen_address}:{rule.listen_port} "
                            f"({what}) and forwards to {rule.connect_address}:{rule.connect_port}; the IP Helper "
                            f"service holds that port, so " + ("TWS cannot bind its API port after a reboot" if
                                                                what.startswith("TWS") else "the relay cannot listen"),
                            f"in an administrator prompt: netsh interface portproxy delete v4tov4 "
                            f"listenport={rule.listen_port} listenaddress={rule.listen_address}  (the relay replaces "
                            f"this workaround)"))
    return checks


def services_by_pid(services) -> Dict[int, List[str]]:
    """{pid: [service names]} from psutil.win_service_iter()-shaped records (name, pid)."""
    found: Dict[int, List[str]] = {}
    for name, pid in services:
        if pid:
            found.setdefault(pid, []).append(name)
    return found


def classify_owner(process_name: str, services: Optional[List[str]] = None) -> Tuple[str, bool]:
    """(what owns the target port, whether that is plausibly TWS / IB Gateway). `services`: the
    Windows services running in that process (a svchost.exe hosts several)."""
    if services and "iphlpsvc" in [s.lower() for s in services]:
        return ("the IP Helper service (iphlpsvc, in svchost.exe): a `netsh interface portproxy` rule holds "
                "this port, not TWS"), False
    n = process_name.lower()
    if n.startswith("tws"):
        return "TWS", True
    if "ibgateway" in n:
        return "IB Gateway", True
    if n in ("java", "java.exe", "javaw", "javaw.exe"):
        return f"Java ({process_name}: TWS or IB Gateway started from Java)", True
    return f"{process_name}, not TWS or IB Gateway", False


def console_text(data: bytes, codepage: Optional[int]) -> str:
    """A console program's output (netsh, ipconfig) in the console's OEM code page (cp437, cp850,
    cp932, ...), not the ANSI one Python's text mode would use. Never raises: what does not decode
    becomes U+FFFD."""
    try:
        return data.decode(f"cp{codepage}" if codepage else "ascii", errors="replace")
    except LookupError:          # a code page Python has no codec for
        return data.decode("latin-1")


def wslconfig_mode(text: Optional[str]) -> Optional[str]:
    """networkingMode from %UserProfile%\\.wslconfig ([wsl2] section), lower case; None if unset.
    Only a hint: WSL falls back to NAT where mirrored mode is not supported."""
    section = ""
    for line in (text or "").splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
        elif section == "wsl2" and "=" in line:
            key, _, value = line.partition("=")
            if key.strip().lower() == "networkingmode":
                return value.strip().strip('"').lower() or None
    return None


def adapter_checks(wanted: List[str], if_addrs: dict, if_stats: dict, platform: str,
                   wsl_mode: Optional[str]) -> List[Check]:
    """The adapters routes listen on (`wanted`); on Windows with none wanted, the WSL adapter for
    information only: routes on fixed addresses do not need it, and mirrored mode has none."""
    checks = []
    mirrored = wsl_mode == "mirrored"
    for name in wanted or (["wsl"] if platform == "win32" else []):
        a = hostnet.find_adapter(name, if_addrs, if_stats)
        label = "WSL adapter" if name == "wsl" else f"adapter {name!r}"
        if a is not None:
            checks.append(Check(label, PASS, f"{a.name}: {a.address} ({a.network})"))
        elif not wanted:
            checks.append(Check(label, INFO, "not found (WSL not running, or in mirrored mode); the routes listen on "
                                             "fixed addresses and do not need it"))
        elif name == "wsl" and mirrored:
            checks.append(Check(label, WARN, "not found, and .wslconfig asks for mirrored networking, which has no "
                                             "WSL adapter",
                                "in mirrored mode bots reach TWS at 127.0.0.1 without a relay (`relay wsl "
                                "discover` tells); if WSL fell back to NAT, start WSL and its adapter appears"))
        else:
            checks.append(Check(label, FAIL, "not found, or it has no IPv4 address",
                                "start WSL (e.g. `wsl.exe -e true`): its adapter exists only once WSL runs"))
    return checks


def firewall_rule(ports: List[int]) -> str:
    return wsl.FIREWALL_RULE.format(ports=",".join(str(p) for p in sorted(set(ports))))


# ------------------------------------------------------------------------------ checks

def _oem_codepage() -> Optional[int]:
    try:
        import ctypes
        k = ctypes.windll.kernel32     # type: ignore[attr-defined]
        return k.GetConsoleOutputCP() or k.GetOEMCP()   # 0 without a console (relayw)
    except (AttributeError, OSError):
        return None


def _netsh(*args: str) -> Optional[str]:
    exe = shutil.which("netsh")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, *args], capture_output=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return console_text(out, _oem_codepage())


def _netsh_ranges() -> Optional[List[Tuple[int, int]]]:
    out = _netsh("int", "ipv4", "show", "excludedportrange", "protocol=tcp")
    return None if out is None else parse_excluded_ranges(out)


def _netsh_portproxy() -> Optional[List[PortProxy]]:
    out = _netsh("interface", "portproxy", "show", "all")
    return None if out is None else parse_portproxy(out)


def _wslconfig_mode(env=os.environ) -> Optional[str]:
    home = env.get("USERPROFILE")
    try:
        with open(os.path.join(home, ".wslconfig"), encoding="utf-8-sig", errors="replace") as f:
            return wslconfig_mode(f.read(64 * 1024))
    except (OSError, TypeError):
        return None


def _windows_services() -> Dict[int, List[str]]:
    try:
        import psutil
        return services_by_pid((s.name(), s.pid()) for s in psutil.win_service_iter() if s.status() == "running")
    except Exception:   # not Windows, or access denied: the service names are a bonus
        return {}


async def running_relays(extra_ports=(), run_dir: Optional[str] = None) -> List[dict]:
    """Status answers of the relays running on this machine: every registered one, plus whatever
    answers on `extra_ports` (a relay of another user, or one started before records existed)."""
    ports = [rec["status_port"] for rec in registry.live(run_dir) if rec.get("status_port")]
    ports += [p for p in extra_ports if p and p not in ports]
    docs = await asyncio.gather(*(fetch_status(p, timeout=1.0) for p in ports))
    found: Dict[object, dict] = {}
    for port, doc in zip(ports, docs):
        if doc is not None:
            found.setdefault(doc.get("pid"), dict(doc, status_port=port))
    return list(found.values())


def route_ports(doc: dict) -> Dict[int, str]:
    """{listen port: route name} of a running relay's status answer (routes with an address now)."""
    out = {}
    for r in doc.get("routes", []):
        try:
            out[cfg.parse_endpoint(r.get("listen"), "listen", listen=True).port] = r.get("name")
        except cfg.ConfigError:
            continue
    return out


def _who(doc: dict) -> str:
    return f"tws-relay pid {doc.get('pid')} (config {doc.get('config')})"


async def host_checks(config_path: Optional[str], platform: str = sys.platform) -> List[Check]:
    checks: List[Check] = []
    try:
        config = cfg.load(config_path) if config_path else None
    except cfg.ConfigError as e:
        return [Check("config", FAIL, str(e), "fix the key named above, then `relay check`")]
    if config is None:
        return [Check("config", FAIL, "no relay.yaml found", "pass --config FILE")]
    checks.append(Check("config", PASS, f"{config_path}: {len(config.routes)} route(s)"))
    s = config.settings

    relays = await running_relays([s.status_port])
    mine = os.path.abspath(config_path)
    running = next((d for d in relays if d.get("config") == mine), None)
    if running:
        states = ", ".join(f"{r['name']} {r['state']}" for r in running.get("routes", []))
        checks.append(Check("relay running", PASS, f"pid {running.get('pid')} serves this config: {states}"))
    elif relays:
        others = "; ".join(_who(d) for d in relays)
        checks.append(Check("relay running", WARN, f"no running relay serves {mine}; running: {others}",
                            f"start one with `relay --config {mine}`, or check that config instead"))
    else:
        failed = logs.last_start_failure(logs.default_log_file(platform, os.environ))
        checks.append(Check("relay running", FAIL, f"its last start failed: {failed}",
                            "fix what it says, then start it again (the logon task: Start-ScheduledTask tws-relay)")
                      if failed else Check("relay running", INFO, "no running relay found",
                                           "start it with `relay` (or the logon task)"))

    wanted = sorted({r.interface for r in config.routes if r.interface})
    checks += adapter_checks(wanted, hostnet.interfaces(), hostnet.interface_stats(), platform,
                             _wslconfig_mode() if platform == "win32" else None)

    ranges = _netsh_ranges() if platform == "win32" else None
    relay_ports = [r.listen.port for r in config.routes] + ([s.discovery_port] if s.discovery_port else [])
    for r in config.routes:
        t = r.target
        if await target_up(t.host, t.port, 2):
            owner = hostnet.port_owner(t.port)
            if owner is None:
                checks.append(Check(f"{r.name}: target {t}", PASS, "listening (owner unknown)"))
            else:
                what, ok = classify_owner(owner[1], _windows_services().get(owner[0]) if platform == "win32" else None)
                checks.append(Check(f"{r.name}: target {t}", PASS if ok else WARN, f"listening: {what}",
                                    "" if ok else f"is {t.port} really TWS's API port?"))
        else:
            checks.append(Check(f"{r.name}: target {t}", FAIL, "nothing listens there",
                                "start TWS / IB Gateway and enable the API (Configure > API > Settings: "
                                "'Enable ActiveX and Socket Clients', socket port)"))
            continue
        v = await wsl.probe(t.host, t.port, 3, "TWS API", via_relay=False)
        checks.append(Check(f"{r.name}: API handshake", PASS if v.status == "ok" else FAIL, v.detail,
                            "" if v.status == "ok" else "restart TWS / IB Gateway" if v.status == "wedged"
                            else "check the API settings in TWS / IB Gateway"))

    for r in (running or {}).get("routes", []):
        if r.get("state") == "target-wedged":
            checks.append(Check(f"{r['name']}: relay state", FAIL, "target-wedged: the relay saw TWS accept and "
                                "not answer the API, and refuses new bots until it answers",
                                "restart TWS / IB Gateway; the route listens again on its own once TWS answers"))

    if platform == "win32":
        proxies = _netsh_portproxy()
        if proxies is not None:
            tws_ports = sorted({r.target.port for r in config.routes} | set(tws.DEFAULT_PORTS.values()))
            found = portproxy_checks(proxies, tws_ports, relay_ports)
            checks += found or [Check("netsh portproxy", PASS, "no portproxy rule on a TWS or relay port")]

    for r in config.routes:
        port = r.listen.port
        name = f"{r.name}: relay port {port}"
        hit = excluded(port, ranges) if ranges is not None else None
        if hit:
            checks.append(Check(name, FAIL, f"inside a Hyper-V excluded port range {hit[0]}-{hit[1]}",
                                "pick another port (list the ranges: netsh int ipv4 show excludedportrange "
                                "protocol=tcp)"))
            continue
        if running and route_ports(running).get(port) == r.name:
            checks.append(Check(name, PASS, f"{r.name} is listening there in the running relay (pid "
                                            f"{running.get('pid')})"))
            continue
        host = r.listen.host or "127.0.0.1"
        try:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
                sock.bind((host, port))
            note = " (the running relay does not serve it now: see its state above)" if running else ""
            checks.append(Check(name, PASS, f"{host}:{port} can be bound{note}"))
        except OSError as e:
            holder = next((d for d in relays if port in route_ports(d)), None)
            if holder is not None and hostnet.in_use(e):
                checks.append(Check(name, FAIL, f"held by another {_who(holder)}",
                                    "stop that relay, or give this route another port"))
            else:
                checks.append(Check(name, FAIL, hostnet.bind_hint(e, host, port), "change the route's listen port"))

    if platform == "win32" or any(r.interface for r in config.routes):
        checks.append(Check("Windows Firewall", INFO, "WSL's adapter is in the Public profile: inbound from WSL "
                            "is dropped unless a rule allows it (clients then time out)",
                            "in an administrator PowerShell: " + firewall_rule(relay_ports) +
                            "  (a Block rule for python.exe / relay.exe wins over it: remove it)"))
    return checks


async def wsl_checks(host: Optional[str], route: Optional[str], discovery_port: int = DISCOVERY_PORT,
                     timeout: float = 2.0) -> List[Check]:
    report = await wsl.discover(wsl.gather_facts(), host=host, route=route, discovery_port=discovery_port,
                                timeout=timeout)
    sit = report.situation
    checks = [Check("environment", INFO, f"{sit.environment}, mode {sit.mode or 'n/a'} "
                    f"({sit.mode_source or 'not WSL'})" + "".join(f"; {n}" for n in sit.notes))]
    if not sit.candidates:
        checks.append(Check("Windows host", FAIL, "no candidate address found", "pass --host"))
    for v in report.verdicts:
        checks.append(Check(f"{v.what} at {v.host}:{v.port}", PASS if v.status == "ok" else FAIL, v.detail))
    if report.best is None and sit.candidates:
        checks.append(Check("path to TWS", FAIL, "no working path found", "see the failed checks above"))
    checks += forwarder_checks(await running_relays([STATUS_PORT]))
    return checks


def forwarder_checks(relays: List[dict]) -> List[Check]:
    """Whether `relay wsl forward` runs here, and what each of its routes is doing."""
    from .wsl.forward import SOURCE
    forwarders = [d for d in relays if str(d.get("config", "")).startswith(SOURCE)]
    if not forwarders:
        return [Check("forwarder", INFO, "no `relay wsl forward` runs here: bots must use the relay's address "
                      "(`relay wsl configure`)", "for bots that say 127.0.0.1:7497, start `relay wsl forward`")]
    checks = []
    for d in forwarders:
        routes = d.get("routes", [])
        served = ", ".join(f"{r['name']} {r['listen']} ({r['state']})" for r in routes)
        down = [r for r in routes if r["state"] != "listening"]
        checks.append(Check("forwarder", WARN if down else PASS, f"pid {d.get('pid')} serves {served}",
                            "a route not listening: its TWS is down on Windows (target-down), or its local port is "
                            "taken (bind-failed: see `relay status`)" if down else ""))
    return checks


def render(checks: List[Check]) -> str:
    marks = {PASS: "PASS", WARN: "WARN", FAIL: "FAIL", INFO: "info"}
    out = []
    for c in checks:
        out.append(f"[{marks[c.status]}] {c.name}: {c.detail}")
        if c.fix and c.status != PASS:
            out.append(f"       fix: {c.fix}")
    return "\n".join(out)


def as_json(checks: List[Check]) -> Dict:
    return {"ok": ok(checks), "checks": [asdict(c) for c in checks]}


def ok(checks: List[Check]) -> bool:
    return not any(c.status == FAIL for c in checks)
