"""The words the relay's log uses for a socket error: the same on every platform, so a line reads
`error="Connection refused"` whether Linux or Windows refused. Pure: an exception in, words out.

Windows needs its own table: a refused Proactor connect raises ConnectionRefusedError with winerror
1225, whose errno CPython maps to EINVAL ("Invalid argument"), and a peer lost to keepalive or
TCP_MAXRT arrives as winerror 121 with a localized text (CPython PC/errmap.h, Modules/overlapped.c).
"""
from __future__ import annotations

import errno
from typing import Optional

REFUSED, RESET, TIMED_OUT, ABORTED = "Connection refused", "reset", "timed out", "aborted"

# winerror -> words, for the codes a socket operation of the relay can meet on Windows
WINERROR = {
    1225: REFUSED,        # ERROR_CONNECTION_REFUSED (the Proactor's connect)
    10061: REFUSED,       # WSAECONNREFUSED
    10054: RESET,         # WSAECONNRESET
    64: RESET,            # ERROR_NETNAME_DELETED: the peer went away during an overlapped read or accept
    1236: ABORTED,        # ERROR_CONNECTION_ABORTED: closed by the local system
    10053: ABORTED,       # WSAECONNABORTED
    121: TIMED_OUT,       # ERROR_SEM_TIMEOUT: keepalive or TCP_MAXRT gave up on a silent peer
    10060: TIMED_OUT,     # WSAETIMEDOUT
    1231: "Network is unreachable",   # ERROR_NETWORK_UNREACHABLE
    10051: "Network is unreachable",  # WSAENETUNREACH
    1232: "No route to host",         # ERROR_HOST_UNREACHABLE
    10065: "No route to host",        # WSAEHOSTUNREACH
}
# errno and exception class -> words where the platform's own text is not what the relay says
ERRNO = {errno.ECONNRESET: RESET, errno.ETIMEDOUT: TIMED_OUT, errno.ECONNREFUSED: REFUSED,
         errno.ECONNABORTED: ABORTED}
KIND = {"ConnectionRefusedError": REFUSED, "ConnectionResetError": RESET, "ConnectionAbortedError": ABORTED,
        "TimeoutError": TIMED_OUT}    # asyncio.TimeoutError (a connect that ran out of time) is one too


def words(code: Optional[int], winerror: Optional[int], strerror: Optional[str], kind: str) -> str:
    """The words for an error given as data: its errno, its winerror (Windows only), its own text
    and its exception class name."""
    return WINERROR.get(winerror) or KIND.get(kind) or ERRNO.get(code) or strerror or kind


def describe(exc: BaseException) -> str:
    return words(getattr(exc, "errno", None), getattr(exc, "winerror", None), getattr(exc, "strerror", None),
                 type(exc).__name__)
