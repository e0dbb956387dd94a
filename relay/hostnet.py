"""Host-side network knowledge: interface subnets, default allowlists, bind-error hints.

Functions take psutil-shaped data (`{name: [snicaddr(family, address, netmask, ...)]}`) so they are
tested with recorded inputs from any OS; only `interfaces()` asks the machine.
"""
from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .config import IPNetwork, WILDCARD_HOSTS

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def interfaces() -> Dict[str, list]:
    import psutil
    return psutil.net_if_addrs()


def _subnet(addr) -> Optional[IPNetwork]:
    if addr.family not in (socket.AF_INET, socket.AF_INET6) or not addr.netmask:
        return None
    host = addr.address.split("%", 1)[0]   # drop an IPv6 zone (fe80::1%eth0)
    mask = addr.netmask
    try:
        if addr.family == socket.AF_INET6 and ":" in mask:
            prefix = ipaddress.IPv6Address(mask.split("/")[0])
            mask = str(bin(int(prefix)).count("1"))
        return ipaddress.ip_interface(f"{host}/{mask}").network
    except ValueError:
        return None


def subnets_of(host: str, if_addrs: Dict[str, list]) -> List[IPNetwork]:
    """Subnets of the interface(s) holding `host`; all interfaces' subnets for a wildcard."""
    found: List[IPNetwork] = []
    for addrs in if_addrs.values():
        for a in addrs:
            if host in WILDCARD_HOSTS or a.address.split("%", 1)[0] == host:
                net = _subnet(a)
                if net is not None and net not in found:
                    found.append(net)
    return found


def default_allow(host: str, if_addrs: Dict[str, list]) -> List[IPNetwork]:
    """Loopback plus the subnet of the listen address's interface."""
    nets = list(LOOPBACK)
    for net in subnets_of(host, if_addrs):
        if not any(net.version == n.version and net.subnet_of(n) for n in nets):
            nets.append(net)
    return nets


def allowed(peer_ip: str, nets: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(peer_ip.split("%", 1)[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in n for n in nets)


# WinError codes from Winsock, as OSError.winerror on Windows.
WSAEACCES, WSAEADDRINUSE, WSAEADDRNOTAVAIL = 10013, 10048, 10049


def in_use(err: OSError) -> bool:
    return (getattr(err, "winerror", None) or err.errno) in (errno.EADDRINUSE, WSAEADDRINUSE)


def bind_problem(err: OSError) -> str:
    """The bare reason a bind failed, for lines that name the culprit themselves."""
    return "address in use" if in_use(err) else (err.strerror or str(err))


def port_owner(port: int) -> Optional[Tuple[int, str]]:
    """(pid, process name) of whoever listens on a local TCP port, where the OS tells; else None."""
    try:
        import psutil
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return c.pid, psutil.Process(c.pid).name()
    except Exception:   # access denied, process gone: the owner is a bonus, not a verdict
        return None
    return None


def local_process(ip: str, port: int, server_port: int, connections=None, describe=None) -> Optional[Tuple[int, str]]:
    """(pid, command line) of the local process whose socket ip:port is connected to our
    `server_port`, where the OS tells (same user, or root); else None. `connections` and `describe`
    default to psutil's answers (tests pass recorded ones)."""
    try:
        import psutil
        conns = psutil.net_connections(kind="tcp") if connections is None else connections
        for c in conns:
            if c.laddr and (c.laddr[0], c.laddr[1]) == (ip, port) and c.raddr and c.raddr[1] == server_port and c.pid:
                if describe is not None:
                    return c.pid, describe(c.pid)
                argv = psutil.Process(c.pid).cmdline()
                return c.pid, " ".join(argv)[:200] or psutil.Process(c.pid).name()
    except Exception:   # access denied, process gone: the name is a bonus
        return None
    return None


def bind_hint(err: OSError, host: str, port: int) -> str:
    """One sentence saying what a failed bind of a route most likely means and what to do."""
    code = getattr(err, "winerror", None) or err.errno
    if in_use(err):
        return (f"another program already listens on {host}:{port}. TWS and IB Gateway hold their own "
                f"port on every address, so the relay needs a different port; find the owner with "
                f"'ss -ltnp' (Linux) or 'netstat -ano | findstr :{port}' (Windows)")
    if code in (errno.EADDRNOTAVAIL, WSAEADDRNOTAVAIL):
        return (f"{host} is not an address of this machine. If it is the WSL adapter, start WSL first "
                f"(the adapter appears only then) or check its current address with 'ipconfig'")
    if code in (errno.EACCES, WSAEACCES):
        return (f"permission denied for {host}:{port}. Ports below 1024 need root on Linux; on Windows "
                f"the port may sit in a Hyper-V excluded range "
                f"('netsh int ipv4 show excludedportrange protocol=tcp') or be held exclusively by TWS")
    return f"cannot listen on {host}:{port}: {err.strerror or err}"


# -------------------------------------------------------------------------- following an adapter
# The WSL NAT adapter's names on Windows; after an upgrade both can exist. "vEthernet (Default
# Switch)" is Hyper-V's, not WSL's, and is never picked.
WSL_ADAPTER_NAMES = ("vEthernet (WSL (Hyper-V firewall))", "vEthernet (WSL)")


@dataclass(frozen=True)
class Adapter:
    name: str
    address: str
    network: Optional[IPNetwork]


def find_adapter(wanted: str, if_addrs: Dict[str, list], if_stats: Dict[str, object]) -> Optional[Adapter]:
    """The adapter to listen on: `wanted` by exact name (case-insensitive), or for "wsl" either WSL
    adapter name; among matches, one that is up and has an IPv4 address wins."""
    names = WSL_ADAPTER_NAMES if wanted.lower() == "wsl" else (wanted,)
    found = []
    for rank, want in enumerate(names):
        for name, addrs in if_addrs.items():
            if name.lower() != want.lower():
                continue
            ipv4 = [a for a in addrs if a.family == socket.AF_INET and a.address]
            if not ipv4:
                continue
            up = getattr(if_stats.get(name), "isup", True)
            found.append((not up, rank, name, ipv4[0]))
    if not found:
        return None
    _, _, name, addr = min(found, key=lambda f: f[:3])
    return Adapter(name, addr.address, _subnet(addr))


def adapter_default_allow(adapter: Adapter) -> List[IPNetwork]:
    return list(LOOPBACK) + ([adapter.network] if adapter.network is not None else [])


def interface_stats() -> Dict[str, object]:
    import psutil
    return psutil.net_if_stats()


def listener_problem(server) -> Optional[str]:
    """Why a server's listening socket no longer accepts, or None while it does. It can stop under
    the server: the Proactor loop closes it after one failed accept (cpython#93821), `ss -K`
    destroys it on Linux; the server object lives on, and uvloop spins on it without a word."""
    for sock in server.sockets:
        try:
            if sock.fileno() == -1:
                return "the listening socket was closed"
            if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                return "the socket no longer listens"
        except OSError as e:
            return e.strerror or str(e)
    return None

