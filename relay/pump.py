"""The byte pump: one asyncio Protocol per leg (after asyncssh's forwarder), bytes spliced both ways.

The rules it follows, and the native pump (native_pump.py, _pump.c) with it, are written once in
docs/architecture.md ("The pump's rules"). Once a session's opening is settled it hands both sockets
to the native pump where that was built, which reports the close back here. What the relay knows
of the TWS session on the connection lives in session.py.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Callable, List, Optional, Protocol

from . import native_pump
from .config import Route, Settings
from .error_words import describe
from .session import SessionOwner, TwsSession

# Write-buffer marks for every transport (uvloop's default low mark is 16 bytes, so always set them),
# and for the native pump, which is given these at its start: one source.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
# Client bytes held while the upstream connect is in progress; past this the client is paused.
HOLD_LIMIT = 256 * 1024
# Largest chunk one data_received can hand us (asyncio's and uvloop's read size).
READ_CHUNK = 256 * 1024
# Worst case bytes the relay holds for one connection: each direction's buffer can pass the
# high mark by one read chunk before reading pauses; plus the pre-connect hold.
MAX_BUFFERED_PER_CONNECTION = 2 * (HIGH_WATER + READ_CHUNK) + HOLD_LIMIT + READ_CHUNK
# A settled connection whose bytes are still queued here waits this long before the next try.
HANDOVER_RETRY = 0.1

log = logging.getLogger("relay")


class Owner(SessionOwner, Protocol):
    """What a Splice needs from whoever runs it (route_server.RouteServer): its route and settings,
    these calls at the points of a connection's life, and what its TWS session needs (SessionOwner)."""
    route: Route
    settings: Settings

    def admit(self, splice: "Splice") -> bool: ...
    def tune(self, transport: asyncio.BaseTransport, accepted: bool) -> None: ...
    def connect_failed(self, splice: "Splice", err: BaseException) -> None: ...
    def finished(self, splice: "Splice") -> None: ...


class Leg(asyncio.Protocol):
    """One TCP socket of a relayed connection ('client' or 'upstream')."""

    __slots__ = ("splice", "side", "transport", "peer", "out", "nbytes", "eof_in", "lost", "write_paused", "watch")

    def __init__(self, splice: "Splice", side: str):
        self.splice = splice
        self.side = side
        self.transport: Optional[asyncio.Transport] = None
        self.peer: Optional[Leg] = None
        self.out: Optional[asyncio.Transport] = None   # the peer's transport, once it exists
        self.nbytes = 0          # bytes received from this side
        self.eof_in = False      # this side sent FIN
        self.lost = False
        self.write_paused = False
        self.watch: Optional[Callable[[bytes], None]] = None   # reads the session's opening, then None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport   # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)   # type: ignore[attr-defined]
        self.splice.leg_made(self)

    def data_received(self, data: bytes) -> None:
        self.nbytes += len(data)
        out = self.out
        if out is not None:
            try:
                out.write(data)
            except RuntimeError:   # uvloop: the peer closed in this loop pass; its connection_lost ends it
                return
        else:
            self.splice.hold(data)
        if self.watch is not None:
            self.watch(data)

    def eof_received(self) -> bool:
        self.eof_in = True
        if self.out is not None:
            self.splice.send_eof(self.peer)
        self.splice.eof_from(self)
        return True   # keep the transport: the other direction may still be flowing

    def pause_writing(self) -> None:
        self.write_paused = True
        if not self.peer.lost:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.peer.lost:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        if self.splice.handed_over:
            return    # only our descriptor closed: the native pump carries on with its own
        self.lost = True
        self.splice.leg_lost(self, exc)


class Splice:
    """One client connection and its upstream connection."""

    __slots__ = ("owner", "client", "upstream", "held", "held_bytes", "connect_task", "connect_timer", "started",
                 "peer", "closed_by", "drain_timers", "finished", "session", "native", "native_pump", "handed_over",
                 "loop", "__weakref__")

    def __init__(self, owner: Owner, loop: asyncio.AbstractEventLoop):
        self.owner = owner
        self.loop = loop     # asyncio.get_event_loop() costs a getpid() system call each time
        self.client = Leg(self, "client")
        self.upstream = Leg(self, "upstream")
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.held: List[bytes] = []
        self.held_bytes = 0
        self.connect_task: Optional[asyncio.Task] = None
        self.connect_timer: Optional[asyncio.TimerHandle] = None
        self.started = time.monotonic()
        self.peer = "?"
        self.closed_by: Optional[str] = None
        self.drain_timers: List[asyncio.TimerHandle] = []
        self.finished = False
        self.native: Optional[int] = None         # the native pump's pair while it carries the bytes
        self.native_pump: Optional["native_pump.NativePump"] = None
        self.handed_over = False
        # the TWS session: it reads the opening while it lasts, and says when the bytes only need moving
        self.session = TwsSession(self, owner, loop, self._settled)
        if self.session.watching:
            self.client.watch = self.session.from_client
            self.upstream.watch = self.session.from_server

    # -- life cycle -------------------------------------------------------------------------

    def leg_made(self, leg: Leg) -> None:
        if leg is self.upstream:
            self.owner.tune(leg.transport, accepted=False)
            leg.out = self.client.transport
            return
        self.client.transport = leg.transport
        if not self.owner.admit(self):
            self.closed_by = "relay"
            leg.transport.abort()
            return
        self.owner.tune(leg.transport, accepted=True)
        self.upstream.out = leg.transport
        self._start_connect()

    def _start_connect(self) -> None:
        # A task straight on create_connection plus a timer: cheaper than a coroutine in wait_for.
        loop = self.loop
        target = self.owner.route.target
        task = self.connect_task = loop.create_task(
            loop.create_connection(self._upstream, target.host, target.port))
        task.add_done_callback(self._connected)
        self.connect_timer = loop.call_later(self.owner.settings.connect_timeout, self._connect_timed_out)

    def _upstream(self) -> Leg:
        return self.upstream

    def _connect_timed_out(self) -> None:
        self.connect_timer = None
        self.connect_task.cancel()

    def _connected(self, task: asyncio.Task) -> None:
        timed_out = self.connect_timer is None
        if not timed_out:
            self.connect_timer.cancel()
        if task.cancelled():
            if not timed_out:
                return                     # cancelled because the client went away
            err: BaseException = asyncio.TimeoutError()
        else:
            err = task.exception()
        if err is not None:
            self.owner.connect_failed(self, err)
            self.closed_by = self.closed_by or "relay"
            if not self.client.lost:
                self.client.transport.abort()
            return
        if self.client.lost:          # the client went away while we were connecting
            self.upstream.transport.close()
            return
        up = self.upstream.transport
        if self.upstream.lost or up.is_closing():
            return                    # reset right after its connect: leg_lost has ended the session
        self.client.out = up
        self.session.connected()
        paused_by_hold = self.held_bytes >= HOLD_LIMIT
        if self.held:
            up.write(b"".join(self.held))
            self.held.clear()
            self.held_bytes = 0
        if self.client.eof_in:
            self.send_eof(self.upstream)
        elif paused_by_hold and not self.upstream.write_paused:
            self.client.transport.resume_reading()

    # -- the native pump: from a settled opening on, the bytes only need moving -----------------

    def _settled(self) -> None:
        if native_pump.chosen(self.owner.settings.pump):
            self.loop.call_soon(self._hand_over)

    def _hand_over(self) -> None:
        if self.handed_over or self.finished or self.closed_by is not None:
            return
        legs = (self.client, self.upstream)
        for leg in legs:
            t = leg.transport
            if t is None or leg.lost or leg.eof_in or leg.write_paused or t.is_closing():
                return     # half-closed or closing: the Python pump sees it through
        if self.held or any(leg.transport.get_write_buffer_size() for leg in legs):
            self.loop.call_later(HANDOVER_RETRY, self._hand_over)   # bytes still queued here
            return
        settings = self.owner.settings
        pump = native_pump.pump(self.loop, (HIGH_WATER, LOW_WATER), settings.pump_threads, settings.busy_poll)
        if pump is None:
            return
        fds: List[int] = []
        try:
            for leg in legs:
                fds.append(os.dup(leg.transport.get_extra_info("socket").fileno()))
        except (OSError, AttributeError):
            for fd in fds:
                os.close(fd)
            return
        pair = pump.add(self.native_closed, fds[0], fds[1], self.owner.settings.drain_timeout)
        if not pair:
            return
        self.native, self.native_pump, self.handed_over = pair, pump, True
        for leg in legs:
            leg.transport.close()   # lets go of our descriptor only; the socket lives on in the pump

    def native_closed(self, moved: tuple, by: int, err: int) -> None:
        self.client.nbytes += moved[0]
        self.upstream.nbytes += moved[1]
        self.native = None
        self.client.lost = self.upstream.lost = True
        if self.closed_by is None:
            side = native_pump.ENDED_BY[by]
            self.closed_by = f"{side} ({describe(OSError(err, os.strerror(err)))})" if err else side
        self._finish()

    def ending(self) -> bool:
        """The session is over for TWS, even if bytes still drain: a side sent FIN or was lost, or
        the relay is closing it. A bot that closed and reconnects with the same clientId before
        TWS closed its side of the old session is no clash."""
        if self.closed_by is not None or self.finished:
            return True
        return self.native is not None and self.native_pump.ending(self.native)

    def counts(self) -> tuple:
        """Bytes received from the client and from upstream so far."""
        up, down = self.client.nbytes, self.upstream.nbytes
        if self.native is not None:
            a, b, _, _ = self.native_pump.counts(self.native)
            up, down = up + a, down + b
        return up, down

    def hold(self, data: bytes) -> None:
        self.held.append(data)
        self.held_bytes += len(data)
        if self.held_bytes >= HOLD_LIMIT:
            self.client.transport.pause_reading()

    def send_eof(self, leg: Leg) -> None:
        """Pass a FIN on to `leg`, whose socket may have died in between: asyncio's write_eof raises
        OSError (ENOTCONN) after a reset, uvloop's RuntimeError once closed. Then the leg is ended
        here with the reason: with its reading paused it would never notice on its own."""
        try:
            leg.transport.write_eof()
        except (OSError, RuntimeError) as e:
            if self.closed_by is None:
                self.closed_by = f"{leg.side} ({describe(e)})"
            leg.transport.abort()

    def eof_from(self, leg: Leg) -> None:
        if self.closed_by is None:
            self.closed_by = leg.side
        if self.client.eof_in and self.upstream.eof_in:
            self.close()

    def leg_lost(self, leg: Leg, exc: Optional[BaseException]) -> None:
        if self.closed_by is None:
            self.closed_by = leg.side if exc is None else f"{leg.side} ({describe(exc)})"
        peer = leg.peer
        if peer.transport is not None and not peer.lost:
            self._close_leg(peer)
        elif leg is self.client:
            self._cancel_connect()
        if self.client.lost and (self.upstream.lost or self.upstream.transport is None):
            self._finish()

    def close(self) -> None:
        """Close both legs, flushing what is queued (bounded by drain_timeout)."""
        if self.native is not None:
            self.native_pump.close(self.native, abort=False)
            return
        self._cancel_connect()
        for leg in (self.client, self.upstream):
            if leg.transport is not None and not leg.lost:
                self._close_leg(leg)

    def abort(self, by: str = "relay") -> None:
        if self.closed_by is None:
            self.closed_by = by
        if self.native is not None:
            self.native_pump.close(self.native, abort=True)
            return
        self._cancel_connect()
        for leg in (self.client, self.upstream):
            if leg.transport is not None and not leg.lost:
                leg.transport.abort()

    def _cancel_connect(self) -> None:
        if self.connect_task is not None and not self.connect_task.done():
            self.connect_task.cancel()

    def _close_leg(self, leg: Leg) -> None:
        t = leg.transport
        if t.is_closing():
            return
        t.close()
        if t.get_write_buffer_size():
            self.drain_timers.append(self.loop.call_later(self.owner.settings.drain_timeout, t.abort))

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.session.ended()
        for timer in self.drain_timers:
            timer.cancel()
        self.held.clear()
        self.owner.finished(self)

    @property
    def duration(self) -> float:
        return time.monotonic() - self.started
