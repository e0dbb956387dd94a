"""TCP options for both legs, planned as data per platform and then applied.

The plan is pure (platform name and settings in, a list of options out) so the Windows and macOS
plans are tested on Linux; only `apply` touches a socket. Numbers are the platforms' own header
values, spelled out because Python's socket module only has the running platform's names.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

from .config import Keepalive

# Listen backlog for every listener the relay opens. asyncio's default (100) overflows under a
# burst of connects; the kernel then answers with SYN cookies and the extra clients hang,
# connected on their side only. The kernel caps it at its own limit (somaxconn).
BACKLOG = 1024

# (SOL_SOCKET, SO_KEEPALIVE, IPPROTO_TCP, TCP_NODELAY)
_BASE = {
    "linux": (1, 9, 6, 1),
    "win32": (0xFFFF, 8, 6, 1),
    "darwin": (0xFFFF, 8, 6, 1),
}
_LINUX = {"TCP_KEEPIDLE": 4, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 6, "TCP_USER_TIMEOUT": 18}
_WIN = {"TCP_MAXRT": 5, "TCP_KEEPIDLE": 3, "TCP_KEEPINTVL": 17, "TCP_KEEPCNT": 16,
        "SIO_KEEPALIVE_VALS": 0x98000004}
_MAC = {"TCP_KEEPALIVE": 0x10, "TCP_KEEPINTVL": 0x101, "TCP_KEEPCNT": 0x102, "TCP_RXT_CONNDROPTIME": 0x80}


@dataclass(frozen=True)
class Opt:
    """One setsockopt (level, name, int value) or, with level None, a Windows ioctl."""
    what: str
    level: Optional[int]
    name: int
    value: Union[int, Tuple[int, int, int]]
    fallback: Optional["Opt"] = None   # tried when this one fails (an older OS build)


def plan(platform: str, keepalive: Keepalive, user_timeout: float) -> List[Opt]:
    """The options to set on every relayed TCP socket on `platform` (sys.platform style)."""
    kind = "linux" if platform.startswith("linux") else platform
    if kind not in _BASE:
        kind = "linux"   # other Unixes share the Linux option set where they have it
    # TCP_NODELAY is not in the plan: asyncio, uvloop and winloop set it on every TCP transport.
    sol, so_keepalive, tcp, _nodelay = _BASE[kind]
    opts = [Opt("SO_KEEPALIVE", sol, so_keepalive, 1)]
    idle, intvl, cnt = keepalive.idle, keepalive.interval, keepalive.count
    if kind == "linux":
        opts += [Opt("TCP_KEEPIDLE", tcp, _LINUX["TCP_KEEPIDLE"], idle),
                 Opt("TCP_KEEPINTVL", tcp, _LINUX["TCP_KEEPINTVL"], intvl),
                 Opt("TCP_KEEPCNT", tcp, _LINUX["TCP_KEEPCNT"], cnt)]
        if user_timeout > 0:
            opts.append(Opt("TCP_USER_TIMEOUT", tcp, _LINUX["TCP_USER_TIMEOUT"], int(user_timeout * 1000)))
    elif kind == "win32":
        # Windows 10 1709+ takes the per-option form; older builds only the ioctl (whose probe
        # count is fixed at 10), which is the fallback of the first option.
        vals = Opt("SIO_KEEPALIVE_VALS", None, _WIN["SIO_KEEPALIVE_VALS"], (1, idle * 1000, intvl * 1000))
        opts += [Opt("TCP_KEEPIDLE", tcp, _WIN["TCP_KEEPIDLE"], idle, fallback=vals),
                 Opt("TCP_KEEPINTVL", tcp, _WIN["TCP_KEEPINTVL"], intvl),
                 Opt("TCP_KEEPCNT", tcp, _WIN["TCP_KEEPCNT"], cnt)]
        if user_timeout > 0:   # TCP_MAXRT is in whole seconds
            opts.append(Opt("TCP_MAXRT", tcp, _WIN["TCP_MAXRT"], max(1, round(user_timeout))))
    else:
        opts += [Opt("TCP_KEEPALIVE", tcp, _MAC["TCP_KEEPALIVE"], idle),
                 Opt("TCP_KEEPINTVL", tcp, _MAC["TCP_KEEPINTVL"], intvl),
                 Opt("TCP_KEEPCNT", tcp, _MAC["TCP_KEEPCNT"], cnt)]
        if user_timeout > 0:
            opts.append(Opt("TCP_RXT_CONNDROPTIME", tcp, _MAC["TCP_RXT_CONNDROPTIME"], max(1, round(user_timeout))))
    return opts


def inherited_by_accepted_sockets(platform: str) -> bool:
    """Linux copies keepalive and user-timeout settings from a listening socket to the sockets it
    accepts, so they are set once on the listener. Elsewhere each accepted socket gets them."""
    return platform.startswith("linux")


def apply(sock, opts: List[Opt]) -> List[str]:
    """Set each option on `sock` (trying its fallbacks); return the names that could not be set.

    Transports hand out wrappers (asyncio's TransportSocket, uvloop's PseudoSocket) that build a
    socket object per call, so borrow the descriptor once and set everything through it."""
    # family/type/proto given, or socket() asks the kernel for them with four more system calls
    raw = socket.socket(sock.family, sock.type, sock.proto, sock.fileno())
    try:
        failed = []
        for first in opts:
            opt: Optional[Opt] = first
            while opt is not None:
                try:
                    if opt.level is None:
                        raw.ioctl(opt.name, opt.value)   # Windows only
                    else:
                        raw.setsockopt(opt.level, opt.name, opt.value)
                    break
                except (OSError, AttributeError, ValueError):
                    opt = opt.fallback
            else:
                failed.append(first.what)
        return failed
    finally:
        raw.detach()
