"""The native data plane (relay/_pump.c, Linux) as the Python side sees it.

Once a connection's opening is settled, pump.Splice hands both sockets here; a thread in C splices
them with epoll, by pump.py's rules, without the interpreter per message. There are up to
`pump_threads` such threads (default: one per CPU); each pair lives on one of them, the one with
the fewest pairs when it came, so the threads share nothing. The event loop learns of each closed
pair from its thread's eventfd. Where the library was not built (Windows, macOS, no C compiler at
install), `available()` is None and the Python pump does all the work.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import functools
import glob
import logging
import os
import sys
from typing import Callable, Dict, List, Optional, Tuple

from .logs import event

# what the pump calls once a pair it carried has ended: (bytes moved each way, who ended it, errno)
OnClosed = Callable[[Tuple[int, int], int, int], None]

ENDED_BY = ("client", "upstream", "relay")   # a report's `by`, as _pump.c numbers them
REPORTS_AT_ONCE = 64


class _Report(ctypes.Structure):
    _fields_ = [("pair", ctypes.c_void_p), ("bytes", ctypes.c_uint64 * 2), ("by", ctypes.c_int32),
                ("err", ctypes.c_int32)]


def _load(folder: str = os.path.dirname(os.path.abspath(__file__))) -> Optional[ctypes.CDLL]:
    if not sys.platform.startswith("linux"):
        return None
    # relay/_pump.so (setup.py names it so); an older build's _pump.cpython-*.so only after it
    for path in sorted(glob.glob(os.path.join(folder, "_pump*.so")), key=lambda p: (not p.endswith("_pump.so"), p)):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        vp, i = ctypes.c_void_p, ctypes.c_int
        for name, res, args in (("relay_pump_start", vp, (ctypes.c_long, ctypes.c_long)),
                                ("relay_pump_report_fd", i, (vp,)),
                                ("relay_pump_add", vp, (vp, i, i, i)), ("relay_pump_close", i, (vp, vp, i)),
                                ("relay_pump_counts", None, (vp, ctypes.POINTER(ctypes.c_uint64 * 4))),
                                ("relay_pump_reports", i, (vp, ctypes.POINTER(_Report), i)),
                                ("relay_pump_marks", None, (vp, ctypes.POINTER(ctypes.c_long * 2))),
                                ("relay_pump_pairs", ctypes.c_long, (vp,)),
                                ("relay_pump_ending", i, (vp,)), ("relay_pump_busy_poll", None, (vp, i))):
            fn = getattr(lib, name, None)
            if fn is None:
                break     # a library built from older source: not this relay's pump
            fn.restype, fn.argtypes = res, list(args)
        else:
            return lib
    return None


_lib = _load()
_pumps: List["NativePump"] = []
_failed: Optional[str] = None     # why the pump thread could not start (then: Python pump only)
_short_of: Optional[str] = None   # why a further pump thread could not start (said once)
log = logging.getLogger("relay")


def available() -> Optional[str]:
    """The library's path when the native pump can run here, else None."""
    return _lib._name if _lib is not None and _failed is None else None


def chosen(setting: str) -> bool:
    """Whether settled sessions go to the native pump under the `pump` setting ('auto' | 'python')."""
    return setting != "python" and available() is not None




@functools.lru_cache(maxsize=None)
def threads_default() -> int:
    """One pump thread per CPU this process may run on, as HAProxy's nbthread defaults (read once,
    as HAProxy reads it at start: pump() asks for it per connection)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):    # pragma: no cover
        return os.cpu_count() or 1


def threads_allowed(setting: int) -> int:
    """The `pump_threads` setting as a number of threads: 0 (auto) is threads_default()."""
    return setting or threads_default()


def threads_running() -> int:
    """Native pump threads started in this process so far."""
    return sum(p.pid == os.getpid() for p in _pumps)


def pump(loop: asyncio.AbstractEventLoop, marks: Tuple[int, int], threads: int = 0,
         busy_poll: int = 0) -> Optional["NativePump"]:
    """The pump thread with the fewest pairs, attached to `loop` and polling busily for
    `busy_poll` microseconds before it sleeps; a new thread while every running one is busy and
    there are fewer than `threads` (0: threads_default()), started with the write-buffer `marks`
    (high, low: pump.py's). None (and one warning) if a thread cannot start and none runs: the
    Python pump carries on."""
    global _failed, _short_of
    threads = threads_allowed(threads)
    if _pumps and _pumps[0].pid != os.getpid():
        _pumps.clear()                        # a forked child: the threads stayed in the parent
    if available() is None:
        return None
    least_busy = min(_pumps[:threads], key=lambda p: len(p.pairs), default=None)
    if least_busy is None or (least_busy.pairs and len(_pumps) < threads):
        try:
            least_busy = NativePump(_lib, marks)
            _pumps.append(least_busy)
        except OSError as e:
            if not _pumps:
                _failed = e.strerror or str(e)
                event(log, logging.WARNING, "native-pump-off", error=_failed,
                      note="every byte goes through the Python pump")
                return None
            if _short_of is None:
                _short_of = e.strerror or str(e)
                event(log, logging.WARNING, "native-pump-thread-off", error=_short_of, threads=len(_pumps),
                      note="the running pump threads carry the new sessions")
    least_busy.attach(loop)
    least_busy.set_busy_poll(busy_poll)
    return least_busy


CLOSE_RETRY = 0.1     # seconds before a close the pump could not take is asked again


class NativePump:
    """One pump thread (its own epoll, command and report queues), for as long as the process lives."""

    def __init__(self, lib: ctypes.CDLL, marks: Tuple[int, int]):
        self.lib = lib
        self.handle = lib.relay_pump_start(*marks)
        if not self.handle:
            raise OSError(errno.ENOMEM, "the native pump could not start")
        self.pid = os.getpid()
        self.fd = lib.relay_pump_report_fd(self.handle)
        self.pairs: Dict[int, OnClosed] = {}
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.reports = (_Report * REPORTS_AT_ONCE)()
        self.counter = (ctypes.c_uint64 * 4)()
        self.busy_poll = 0

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.loop is loop:
            return
        if self.loop is not None and not self.loop.is_closed():
            self.loop.remove_reader(self.fd)
        loop.add_reader(self.fd, self._on_reports)
        self.loop = loop

    def set_busy_poll(self, us: int) -> None:
        if us != self.busy_poll:
            self.lib.relay_pump_busy_poll(self.handle, us)
            self.busy_poll = us

    def add(self, on_closed: OnClosed, client_fd: int, upstream_fd: int, drain_timeout: float) -> Optional[int]:
        """Hand over two (duplicated) descriptors; the pump owns them from here, on failure too.
        `on_closed` is called on the event loop's thread once the pair has ended."""
        pair = self.lib.relay_pump_add(self.handle, client_fd, upstream_fd, max(1, int(drain_timeout * 1000)))
        if pair:
            self.pairs[pair] = on_closed
        return pair

    def close(self, pair: int, abort: bool) -> None:
        if self.lib.relay_pump_close(self.handle, pair, 1 if abort else 0) != 0 and self.loop is not None:
            # the command queue could not grow (out of memory): ask again shortly, while the pair is ours
            self.loop.call_later(CLOSE_RETRY, self._close_again, pair, abort)

    def _close_again(self, pair: int, abort: bool) -> None:
        if pair in self.pairs:
            self.close(pair, abort)

    def counts(self, pair: int) -> Tuple[int, int, int, int]:
        """Bytes read from the client and from upstream; of each, how many the pump holds unsent."""
        self.lib.relay_pump_counts(pair, ctypes.byref(self.counter))
        return tuple(self.counter)   # type: ignore[return-value]

    def ending(self, pair: int) -> bool:
        """The session is over: a side sent FIN or was lost, or the pump is closing the pair."""
        return bool(self.lib.relay_pump_ending(pair))

    def marks(self) -> Tuple[int, int]:
        """The write-buffer marks the C side runs with: (high, low)."""
        out = (ctypes.c_long * 2)()
        self.lib.relay_pump_marks(self.handle, ctypes.byref(out))
        return out[0], out[1]

    def pairs_in_memory(self) -> int:
        """Pairs the thread holds: live, or ended and not yet freed (an ended pair is freed with the
        thread's next command, or once 64 such wait: _pump.c's RELEASE_BATCH)."""
        return self.lib.relay_pump_pairs(self.handle)

    def _on_reports(self) -> None:
        while True:
            n = self.lib.relay_pump_reports(self.handle, self.reports, REPORTS_AT_ONCE)
            for r in self.reports[:n]:
                pair, sent, by, err = r.pair, (r.bytes[0], r.bytes[1]), r.by, r.err
                on_closed = self.pairs.pop(pair, None)   # the report released the pair: forget it now
                if on_closed is not None:
                    on_closed(sent, by, err)
            if n < REPORTS_AT_ONCE:
                return
