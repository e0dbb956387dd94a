"""relay.yaml: parse and validate, with no I/O beyond reading the file.

Every problem becomes one ConfigError naming the file, the key path and what is wrong,
so the CLI can print one line and exit 2. Over 400 lines: every setting's type, default, range and
error text in one place, so `relay check` and the relay can never disagree.
"""
from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence, Tuple, Union

import yaml

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
DISCOVERY_PORT = 17400    # the read-only discovery answer on each listen address (`relay wsl discover`)
STATUS_PORT = 17401       # the local status answer on 127.0.0.1 (`relay status`)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class ConfigError(Exception):
    """A problem in the configuration: where it is (file, key path) and what it is."""

    def __init__(self, problem: str, path: str = "", source: Optional[str] = None):
        problem = " ".join(str(problem).split())   # always one line
        super().__init__(problem)
        self.problem = problem
        self.path = path
        self.source = source

    def __str__(self) -> str:
        where = [p for p in (self.source, self.path) if p]
        return ": ".join(where + [self.problem])


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Keepalive:
    idle: int = 10      # seconds of silence before the first probe
    interval: int = 5   # seconds between probes
    count: int = 3      # unanswered probes before the connection is dropped


@dataclass(frozen=True)
class Settings:
    connect_timeout: float = 5.0
    keepalive: Keepalive = field(default_factory=Keepalive)
    # Bounds how long sent data may stay unacknowledged (TCP_USER_TIMEOUT / TCP_MAXRT):
    # keepalive never fires while data is in flight. 0 turns it off.
    user_timeout: float = 30.0
    shutdown_grace: float = 5.0
    # How long a leg that is being closed may take to flush what is already queued for it.
    drain_timeout: float = 10.0
    expose_to_all_networks: bool = False
    # Port of the read-only discovery answer on each listen address (None: off; 0: any free port).
    discovery_port: Optional[int] = DISCOVERY_PORT
    # Read each session's opening (hello, version, startApi) to log clientIds; steps aside on non-TWS.
    tws_aware: bool = True
    # A second connection asking for a clientId held through the relay gets TWS's error 326 and is closed.
    reject_duplicate_client_id: bool = False
    # How the relay checks each target; while a target is down its route does not listen.
    target_check: str = "connect"     # connect | handshake | off
    check_interval: float = 2.0       # seconds between checks (and adapter polls) while all is well
    check_interval_down: float = 0.5  # seconds between checks while the target is down
    # The local status answer for `relay status`, on 127.0.0.1 only (None: off).
    status_port: Optional[int] = STATUS_PORT
    log_level: str = "info"
    log_format: str = "text"
    # A rotating log file (None: only when there is no console; "off": never).
    log_file: Optional[str] = None
    loop: str = "auto"
    # Who moves a settled session's bytes: the native pump where it was built (Linux), else Python.
    pump: str = "auto"                # auto | python
    # Native pump threads: sessions go to the least busy; 0 ("auto"): one per CPU the relay may use.
    pump_threads: int = 0
    # Microseconds a native pump thread with sessions polls without sleeping before it sleeps; 0: off.
    busy_poll: int = 0


@dataclass(frozen=True)
class Route:
    name: str
    listen: Endpoint                  # with `interface` set, host is "" until the adapter has an address
    target: Endpoint
    allow: Optional[Tuple[IPNetwork, ...]] = None   # None: loopback + the listen interface's subnet
    max_connections: int = 32
    interface: Optional[str] = None   # listen on this adapter's address; "wsl": the WSL NAT adapter


@dataclass(frozen=True)
class Config:
    routes: Tuple[Route, ...]
    settings: Settings = field(default_factory=Settings)
    source: Optional[str] = None


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
LOOPS = ("auto", "asyncio", "uvloop", "winloop")
PUMPS = ("auto", "python")
MAX_PUMP_THREADS = 64
MAX_BUSY_POLL = 1000
TARGET_CHECKS = ("connect", "handshake", "off")
WSL_ADAPTER = "wsl"

_ROUTE_KEYS = ("name", "listen", "target", "allow", "max_connections")
_KEEPALIVE_KEYS = ("idle", "interval", "count")
_LISTEN_KEYS = ("interface", "port")


# ---------------------------------------------------------------- small value parsers
# Each takes the raw value and the key path and returns a clean value or raises ConfigError.

def parse_endpoint(value: Any, path: str, *, listen: bool) -> Endpoint:
    if not isinstance(value, str):
        raise ConfigError(f"expected HOST:PORT as a string, got {_kind(value)}", path)
    text = value.strip()
    m = re.fullmatch(r"\[([^\]]*)\]:(\d+)", text) or re.fullmatch(r"([^:\[\]]*):(\d+)", text)
    if not m:
        raise ConfigError(f"{value!r} is not HOST:PORT (IPv6 goes in brackets: [::1]:7497)", path)
    host, digits = m.group(1), m.group(2).lstrip("0") or "0"
    port = int(digits) if len(digits) <= 6 else 10 ** 6    # int() of thousands of digits raises
    low = 0 if listen else 1   # listen port 0 means "any free port" (useful in tests)
    if not low <= port <= 65535:
        raise ConfigError(f"port {port} is out of range ({low}-65535)", path)
    if host == "localhost":
        host = "127.0.0.1"
    if listen:
        if host in WILDCARD_HOSTS:
            return Endpoint(ipaddress.ip_address(host or "0.0.0.0").compressed, port)
        try:
            host = ipaddress.ip_address(host).compressed
        except ValueError:
            raise ConfigError(f"listen host {host!r} must be an IP address of this machine", path) from None
    elif not host:
        raise ConfigError("target host is empty", path)
    return Endpoint(host, port)


def parse_network(value: Any, path: str) -> IPNetwork:
    if isinstance(value, bool) or not isinstance(value, str):
        raise ConfigError(f"expected a CIDR such as 172.16.0.0/12, got {_kind(value)}", path)
    try:
        return ipaddress.ip_network(value.strip())
    except ValueError as e:
        try:
            loose = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise ConfigError(f"{value!r} is not a CIDR ({e})", path) from None
        raise ConfigError(f"{value!r} has host bits set; did you mean {loose}?", path) from None


def _number(value: Any, path: str, *, low: float, high: float, integer: bool = False) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise ConfigError(f"expected {'a whole number' if integer else 'a number'}, got {_kind(value)}", path)
    if isinstance(value, float) and not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"{value!r} is out of range ({low:g}-{high:g})", path)
    return value


def _choice(value: Any, path: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise ConfigError(f"{value!r} is not one of: {', '.join(choices)}", path)
    return value.lower()


def _mapping(value: Any, path: str, allowed: Sequence[str]) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"expected a mapping, got {_kind(value)}", path)
    for key in value:
        if not isinstance(key, str) or key not in allowed:
            near = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f" (known keys: {', '.join(allowed)})"
            raise ConfigError(f"unknown key {key!r}{hint}", _join(path, str(key)))
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "text", bool: "true/false"}.get(type(value), type(value).__name__)


def _join(path: str, key: Union[str, int]) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


# ---------------------------------------------------------------- the document

def parse_route(raw: Any, path: str) -> Route:
    m = _mapping(raw, path, _ROUTE_KEYS)
    for key in ("name", "listen", "target"):
        if key not in m:
            raise ConfigError(f"missing required key {key!r}", _join(path, key))
    name = m["name"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(f"{name!r} is not a valid name (letters, digits, '.', '_', '-')", _join(path, "name"))
    allow = None
    if "allow" in m:
        raw_allow = m["allow"]
        if isinstance(raw_allow, str):
            raw_allow = [raw_allow]
        if not isinstance(raw_allow, list):
            raise ConfigError(f"expected a list of CIDRs, got {_kind(raw_allow)}", _join(path, "allow"))
        if not raw_allow:
            raise ConfigError("an empty list would refuse every client; remove the key to use the default",
                              _join(path, "allow"))
        allow = tuple(parse_network(v, _join(_join(path, "allow"), i)) for i, v in enumerate(raw_allow))
    max_conn = int(_number(m.get("max_connections", 32), _join(path, "max_connections"),
                           low=1, high=10000, integer=True))
    listen, interface = parse_listen(m["listen"], _join(path, "listen"))
    return Route(name=name, listen=listen,
                 target=parse_endpoint(m["target"], _join(path, "target"), listen=False),
                 allow=allow, max_connections=max_conn, interface=interface)


def parse_listen(value: Any, path: str) -> Tuple[Endpoint, Optional[str]]:
    """HOST:PORT, `wsl:PORT` (the WSL adapter), or {interface: NAME, port: PORT}."""
    if isinstance(value, dict):
        m = _mapping(value, path, _LISTEN_KEYS)
        name = m.get("interface")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError("expected the adapter's name, e.g. 'vEthernet (WSL)'", _join(path, "interface"))
        port = int(_number(m.get("port"), _join(path, "port"), low=0, high=65535, integer=True))
        return Endpoint("", port), name.strip()
    if isinstance(value, str) and value.strip().lower().startswith(WSL_ADAPTER + ":"):
        port_text = value.strip()[len(WSL_ADAPTER) + 1:]
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ConfigError(f"{value!r}: the port after 'wsl:' must be 0-65535", path)
        return Endpoint("", int(port_text)), WSL_ADAPTER
    return parse_endpoint(value, path, listen=True), None


# ---------------------------------------------------------------- the settings, in one table
# Each reads the raw value at its key path and returns the Settings value or raises ConfigError.

def _seconds(low: float, high: float) -> Callable[[Any, str], float]:
    return lambda v, path: float(_number(v, path, low=low, high=high))


def _whole(low: int, high: int) -> Callable[[Any, str], int]:
    return lambda v, path: int(_number(v, path, low=low, high=high, integer=True))


def _one_of(choices: Sequence[str]) -> Callable[[Any, str], str]:
    return lambda v, path: _choice(v, path, choices)


def flag(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"expected true or false, got {_kind(v)}", path)
    return v


def _port_or_off(v: Any, path: str) -> Optional[int]:
    if v is False:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"expected a whole number (a port, 0-65535) or off, got {_kind(v)} {v!r}", path)
    return int(_number(v, path, low=0, high=65535, integer=True))


def _target_check(v: Any, path: str) -> str:
    if isinstance(v, bool):   # YAML 1.1 reads a bare `off` / `no` as false
        v = "connect" if v else "off"
    return _choice(v, path, TARGET_CHECKS)


def _log_file(v: Any, path: str) -> str:
    if v is False:
        return "off"
    if isinstance(v, str) and v.strip():
        return v.strip()
    raise ConfigError(f"expected a file path, or false, got {_kind(v)}", path)


def _pump_threads(v: Any, path: str) -> int:
    if isinstance(v, str) and v != "auto":
        raise ConfigError(f"expected a whole number (1-{MAX_PUMP_THREADS}) or 'auto', got {v!r}", path)
    return 0 if v == "auto" else int(_number(v, path, low=1, high=MAX_PUMP_THREADS, integer=True))


def _keepalive(v: Any, path: str) -> Keepalive:
    ka = _mapping(v, path, _KEEPALIVE_KEYS)
    limits = {"idle": (1, 7200), "interval": (1, 600), "count": (1, 127)}
    return Keepalive(**{k: int(_number(x, _join(path, k), low=limits[k][0], high=limits[k][1], integer=True))
                        for k, x in ka.items()})


class Setting(NamedTuple):
    key: str                              # in relay.yaml; a dot: inside a section
    field: str                            # the Settings field
    read: Callable[[Any, str], Any]       # raw value, key path -> the field's value, or ConfigError
    metavar: str = ""                     # `relay serve --KEY`'s value, when the command line sets it too
    help: str = ""                        # ... and its help ("" when only relay.yaml sets it)
    one_route: bool = False               # ... only in the one-route form (--listen/--target)

    @property
    def option(self) -> str:
        return "--" + self.key.replace(".", "-").replace("_", "-")


SETTINGS: Tuple[Setting, ...] = (
    Setting("connect_timeout", "connect_timeout", _seconds(0.01, 600)),
    Setting("keepalive", "keepalive", _keepalive),
    Setting("user_timeout", "user_timeout", _seconds(0, 3600)),
    Setting("shutdown_grace", "shutdown_grace", _seconds(0, 3600)),
    Setting("drain_timeout", "drain_timeout", _seconds(0.01, 3600)),
    Setting("expose_to_all_networks", "expose_to_all_networks", flag, "",
            "Allow listening on a wildcard address (0.0.0.0 or ::). Exposes the trading API: avoid."),
    Setting("discovery_port", "discovery_port", _port_or_off, "PORT|off",
            f"port of the discovery answer `relay wsl discover` reads, on the listen address (default: "
            f"{DISCOVERY_PORT}); 'off' turns it off. If another relay holds it, that relay answers for this one.",
            one_route=True),
    Setting("tws_aware", "tws_aware", flag),
    Setting("reject_duplicate_client_id", "reject_duplicate_client_id", flag),
    Setting("target_check", "target_check", _target_check),
    Setting("check_interval", "check_interval", _seconds(0.1, 3600)),
    Setting("check_interval_down", "check_interval_down", _seconds(0.05, 3600)),
    Setting("status_port", "status_port", _port_or_off, "PORT|off",
            f"port of the local status answer (`relay status`), on 127.0.0.1 (default: {STATUS_PORT}); 'off' "
            "turns it off. If it is busy the relay takes a free port and `relay status` still finds it.",
            one_route=True),
    Setting("log.level", "log_level", _one_of(LOG_LEVELS), "|".join(LOG_LEVELS), "Least severe level logged."),
    Setting("log.format", "log_format", _one_of(LOG_FORMATS), "|".join(LOG_FORMATS), "Log line format."),
    Setting("log.file", "log_file", _log_file, "PATH|off",
            "Also log to this rotating file ('off': never). Default: log.file, else a file only when there is no "
            "console (%LOCALAPPDATA%\\relay\\logs\\relay.log, ~/.local/state/relay/relay.log)."),
    Setting("loop", "loop", _one_of(LOOPS), "|".join(LOOPS),
            "Event loop (default from config, else auto: uvloop, winloop on Windows, else asyncio)."),
    Setting("pump", "pump", _one_of(PUMPS), "|".join(PUMPS),
            "Who moves a session's bytes once its opening is settled (default from config, else auto: the native "
            "pump where it was built, Linux; 'python': always the event loop)."),
    Setting("pump_threads", "pump_threads", _pump_threads, "N|auto",
            "Native pump threads; sessions go to the least busy (default from config, else auto: one per CPU the "
            "relay may use)."),
    Setting("busy_poll", "busy_poll", _whole(0, MAX_BUSY_POLL), "MICROSECONDS",
            "Native pump threads with sessions poll this long without sleeping before they sleep: lower latency "
            "under bursts on a small machine, at the cost of CPU (default from config, else 0: off)."),
)
_TOP_KEYS = ("routes",) + tuple(dict.fromkeys(s.key.split(".")[0] for s in SETTINGS))
_SECTION_KEYS = {section: tuple(s.key.split(".")[1] for s in SETTINGS if s.key.startswith(section + "."))
                 for section in {s.key.split(".")[0] for s in SETTINGS if "." in s.key}}


def parse_settings(doc: dict) -> Settings:
    sections = {name: _mapping(doc[name], name, keys) for name, keys in _SECTION_KEYS.items() if name in doc}
    kw: dict = {}
    for key, field_name, read, *_ in SETTINGS:
        section, _, inner = key.partition(".")
        where = sections.get(section, {}) if inner else doc
        name = inner or key
        if name in where:
            kw[field_name] = read(where[name], key)
    return Settings(**kw)


def build(doc: Any, source: Optional[str] = None) -> Config:
    """Validate an already-loaded document (dict) into a Config."""
    try:
        if doc is None:
            raise ConfigError("the file is empty; it needs at least a 'routes:' list")
        m = _mapping(doc, "", _TOP_KEYS)
        if "routes" not in m:
            raise ConfigError("missing required key 'routes'", "routes")
        if not isinstance(m["routes"], list) or not m["routes"]:
            raise ConfigError(f"expected a non-empty list of routes, got {_kind(m['routes'])}", "routes")
        routes = tuple(parse_route(r, _join("routes", i)) for i, r in enumerate(m["routes"]))
        check_routes(routes)
        settings = parse_settings(m)
        check_discovery_port(routes, settings.discovery_port)
        return Config(routes=routes, settings=settings, source=source)
    except ConfigError as e:
        e.source = source
        raise


def check_routes(routes: Iterable[Route], path: str = "routes") -> None:
    names: dict = {}
    bound: list = []   # (host, port, index) of every fixed listen address so far
    for i, r in enumerate(routes):
        here = _join(path, i)
        if r.name in names:
            raise ConfigError(f"name {r.name!r} is already used by routes[{names[r.name]}]", _join(here, "name"))
        names[r.name] = i
        if r.listen.port == 0:
            continue
        host = r.interface or r.listen.host     # routes on the same adapter clash like same-address ones
        for other, port, j in bound:
            if port == r.listen.port and (other == host or (r.interface is None and _overlap(other, host))):
                raise ConfigError(f"{where(r)} clashes with routes[{j}].listen", _join(here, "listen"))
        bound.append((host, r.listen.port, i))
    check_no_loops(routes, path)


def check_no_loops(routes: Sequence[Route], path: str = "routes") -> None:
    """A target where this relay itself listens makes it connect to itself; the places known only
    at run time (an adapter's address) are checked then."""
    for i, r in enumerate(routes):
        for j, other in enumerate(routes):
            if other.interface is None and other.listen.port and reaches(r.target, other.listen):
                raise ConfigError(self_target(r.target, other, i == j, f"{_join(path, j)}.listen"),
                                  _join(_join(path, i), "target"))


def self_target(target: Endpoint, listener: Route, own: bool, listen_key: str) -> str:
    """Why a target that reaches `listener` (this route itself when `own`) is refused."""
    if own:
        what = (f"its own listen address ({listen_key} {where(listener)}): the relay would connect to "
                f"itself, each session opening another until the connection cap is full")
    else:
        what = (f"where route {listener.name!r} listens ({listen_key} {where(listener)}): a route must not "
                f"feed another route of the same relay")
    return f"target {target} is {what}. Point it at TWS / IB Gateway (7497 paper, 7496 live; Gateway 4002, 4001)"


LOCAL_NAMES = frozenset({"localhost"})


def reaches(target: Endpoint, listen: Endpoint) -> bool:
    """Does connecting to `target` reach a socket listening at `listen` on this machine?"""
    if target.port != listen.port:
        return False
    t, lh = _ip(target.host), _ip(listen.host)
    if t is None:
        return target.host.lower() in LOCAL_NAMES and (lh is None or lh.is_loopback or listen.host in WILDCARD_HOSTS)
    if listen.host in WILDCARD_HOSTS:       # every address of its family, loopback included
        return t.version == (6 if listen.host == "::" else 4)
    if t.is_unspecified:                    # connecting to 0.0.0.0 / :: reaches this machine's loopback
        return lh is not None and lh.is_loopback and lh.version == t.version
    return t == lh


def _ip(host: str):
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def where(r: Route) -> str:
    """A route's listen place as written: 172.24.32.1:17497, wsl:17497, or NAME:17497."""
    return f"{r.interface}:{r.listen.port}" if r.interface else str(r.listen)


def check_discovery_port(routes: Iterable[Route], port: Optional[int]) -> None:
    if not port:
        return
    for i, r in enumerate(routes):
        if r.listen.port == port:
            raise ConfigError(f"port {port} is the discovery port; give the route another port or set "
                              f"discovery_port to a free one", f"routes[{i}].listen")


def _overlap(a: str, b: str) -> bool:
    """Two listen hosts on the same port clash when equal or when one is its family's wildcard."""
    if (":" in a) != (":" in b):
        return False
    return a == b or a in WILDCARD_HOSTS or b in WILDCARD_HOSTS


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:   # unhashable key: let the default constructor report it
            break
        if duplicate:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse(text: str, source: Optional[str] = None) -> Config:
    """Parse relay.yaml text. Raises ConfigError and nothing else."""
    try:
        doc = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = " ".join(p for p in (e.context, e.problem) if p) or "YAML syntax error"
        raise ConfigError(f"YAML syntax error: {what}", where, source) from None
    except yaml.reader.ReaderError as e:
        raise ConfigError(f"character {e.character!r} is not allowed in YAML", f"position {e.position}",
                          source) from None
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as e:
        raise ConfigError(f"YAML error: {e}", "", source) from None
    return build(doc, source)


def load(path: Union[str, os.PathLike]) -> Config:
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            data = f.read(4 * 1024 * 1024 + 1)
    except FileNotFoundError:
        raise ConfigError("file not found", "", source) from None
    except IsADirectoryError:
        raise ConfigError("is a folder, not a file", "", source) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", "", source) from None
    if len(data) > 4 * 1024 * 1024:
        raise ConfigError("file is larger than 4 MiB; is this really relay.yaml?", "", source)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (byte {e.start})", "", source) from None
    config = parse(text, source)
    log_file = config.settings.log_file
    if log_file and log_file != "off":
        config = replace(config, settings=replace(config.settings, log_file=beside(log_file, os.path.abspath(source))))
    return config


def beside(value: str, config_path: str, path=os.path) -> str:
    """A path written in relay.yaml, with ~ and variables expanded; a relative one is relative to the
    file's folder, not the working folder (a logon task starts in System32). `path`: os.path, or
    ntpath / posixpath for another platform's paths."""
    value = path.expanduser(path.expandvars(value))
    return value if path.isabs(value) else path.normpath(path.join(path.dirname(config_path), value))


def config_candidates(explicit: Optional[str], cwd: str, platform: str, env: dict) -> list:
    """Where relay.yaml is looked for, in order. Pure: every input is data."""
    if explicit:
        return [explicit]
    if platform == "win32":
        found = [_win_join(cwd, "relay.yaml")]
        if env.get("APPDATA"):
            found.append(_win_join(env["APPDATA"], "relay", "relay.yaml"))
        return found
    found = [os.path.join(cwd, "relay.yaml")]
    base = env.get("XDG_CONFIG_HOME") or (os.path.join(env["HOME"], ".config") if env.get("HOME") else None)
    if base:
        found.append(os.path.join(base, "relay", "relay.yaml"))
    return found


def _win_join(*parts: str) -> str:
    return "\\".join(p.rstrip("\\/") for p in parts)
