"""The words the log uses for socket errors: the same for Windows' recorded errors as for Linux's."""
import asyncio
import builtins
import errno
import socket

import pytest
from hypothesis import given, strategies as st

from relay.error_words import describe, words

# (exception class, errno, winerror, text) as Windows raises them (CPython PC/errmap.h maps the
# winerror to the errno; the text is the system's, localized)
WINDOWS = [
    ("ConnectionRefusedError", errno.EINVAL, 1225, "The remote computer refused the network connection",
     "Connection refused"),
    ("ConnectionRefusedError", errno.ECONNREFUSED, 10061, "No connection could be made because the target machine "
                                                          "actively refused it", "Connection refused"),
    ("ConnectionResetError", errno.ECONNRESET, 10054, "An existing connection was forcibly closed by the remote host",
     "reset"),
    ("OSError", errno.EINVAL, 64, "The specified network name is no longer available", "reset"),
    ("ConnectionAbortedError", errno.ECONNABORTED, 1236, "The network connection was aborted by the local system",
     "aborted"),
    ("OSError", errno.EINVAL, 121, "Das Zeitlimit für die Semaphore wurde erreicht", "timed out"),   # German Windows
    ("OSError", errno.EINVAL, 121, "The semaphore timeout period has expired", "timed out"),
    ("TimeoutError", errno.ETIMEDOUT, 10060, "A connection attempt failed because the connected party did not "
                                             "properly respond after a period of time", "timed out"),
    ("OSError", errno.EINVAL, 1231, "The network location cannot be reached", "Network is unreachable"),
    ("OSError", errno.EINVAL, 1232, "The network location cannot be reached", "No route to host"),
]


@pytest.mark.parametrize("kind, code, winerror, text, expected", WINDOWS)
def test_windows_errors_read_as_the_linux_relay_says_them(kind, code, winerror, text, expected):
    assert words(code, winerror, text, kind) == expected
    e = getattr(builtins, kind)(code, text)
    e.winerror = winerror                    # set by CPython on Windows only
    assert describe(e) == expected


@pytest.mark.parametrize("exc, expected", [
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "Connection refused"),
    (OSError(errno.ECONNREFUSED, "Connection refused"), "Connection refused"),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), "reset"),
    (OSError(errno.ETIMEDOUT, "Connection timed out"), "timed out"),
    (asyncio.TimeoutError(), "timed out"),
    (OSError(errno.EHOSTUNREACH, "No route to host"), "No route to host"),
    (RuntimeError("boom"), "RuntimeError"),
])
def test_linux_errors_keep_their_words(exc, expected):
    assert describe(exc) == expected


def test_a_real_refused_connect_here_reads_connection_refused():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(OSError) as e:
        socket.create_connection(("127.0.0.1", port), 2)
    assert describe(e.value) == "Connection refused"


@given(st.one_of(st.none(), st.integers(-5, 20000)), st.one_of(st.none(), st.integers(-5, 20000)),
       st.one_of(st.none(), st.text(max_size=30)), st.sampled_from(["OSError", "TimeoutError", "ValueError"]))
def test_words_are_never_empty(code, winerror, text, kind):
    assert words(code, winerror, text, kind)
