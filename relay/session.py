"""One connection's TWS API session as the relay watches it: its opening read as the bytes pass
(tws.Handshake, bounded), its phase, clientId and server version for the log and `relay status`,
the local process behind it, the version-reply timer that makes a wedged TWS known, the watch's time
bound, and the answer to a clientId clash (TWS's own error 326).

The Splice only moves bytes: it feeds this its bytes while the watch lasts and is told when the
opening is settled, then hands its sockets to the native pump. What concerns the route (its
clientId table, its wedged state) goes to the route through the SessionOwner protocol."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Optional, Protocol, Tuple

from . import tws
from .client_ids import ClientIds
from .config import Route, Settings
from .logs import event

log = logging.getLogger("relay")


class SessionOwner(Protocol):
    """What a session needs from its route (route_server.RouteServer)."""
    route: Route
    settings: Settings
    client_ids: ClientIds

    def target_answered(self) -> None: ...
    def no_version_reply(self, peer: str) -> None: ...


class Connection(Protocol):
    """What a session needs of its connection (pump.Splice)."""
    peer: str
    finished: bool
    closed_by: Optional[str]
    client: Any          # pump.Leg: its watch, out, lost and transport
    upstream: Any

    def close(self) -> None: ...


class TwsSession:
    """The opening of one connection, and what the relay knows of it. For a route that is not
    TWS-aware it only says `relaying`."""

    __slots__ = ("splice", "owner", "loop", "handshake", "client_id", "server_version", "process", "phase",
                 "reason", "hello_seen", "reply_timer", "watch_timer", "on_settled")

    def __init__(self, splice: Connection, owner: SessionOwner, loop: asyncio.AbstractEventLoop,
                 on_settled: Callable[[], None]):
        self.splice = splice
        self.owner = owner
        self.loop = loop
        self.on_settled = on_settled              # the opening is over: the bytes only need moving now
        self.handshake: Optional[tws.Handshake] = tws.Handshake() if owner.settings.tws_aware else None
        self.client_id: Optional[int] = None
        self.server_version: Optional[int] = None
        self.process: Optional[Tuple[int, str]] = None   # (pid, command line) of a local client, when known
        # connecting -> hello -> api-ready | refused | unsettled; 'relaying' when not read
        self.phase = "connecting"
        self.reason: Optional[str] = None          # why it was refused, in TWS's words or ours
        self.hello_seen = False
        self.reply_timer: Optional[asyncio.TimerHandle] = None
        self.watch_timer: Optional[asyncio.TimerHandle] = None

    @property
    def watching(self) -> bool:
        return self.handshake is not None

    # -- what the Splice tells it -----------------------------------------------------------------

    def connected(self) -> None:
        """The upstream connect finished: TWS may answer from now on."""
        self.phase = "hello" if self.handshake is not None else "relaying"
        if self.handshake is not None:
            self.watch_timer = self.loop.call_later(tws.WATCH_TIMEOUT, self._watch_expired)
        self._expect_reply()
        if self.handshake is None:
            self.on_settled()

    def from_client(self, data: bytes) -> None:
        self._events(self.handshake.from_client, data)

    def from_server(self, data: bytes) -> None:
        self._events(self.handshake.from_server, data)

    def ended(self) -> None:
        """The connection is over: the timers go."""
        self._cancel_reply_timer()
        self._cancel_watch_timer()

    # -- reading the opening ----------------------------------------------------------------------

    def _watch_expired(self) -> None:
        self.watch_timer = None
        if self.handshake is not None and not self.splice.finished:
            self._events(self.handshake.expire, f"{tws.WATCH_TIMEOUT:g} s")

    def _events(self, feed: Callable[..., list], data: object) -> None:
        handshake = self.handshake
        try:
            for ev in feed(data):
                if isinstance(ev, tws.ClientHello):
                    self.hello_seen = True
                    self._expect_reply()
                elif isinstance(ev, tws.ServerHello):
                    self._cancel_reply_timer()
                self._saw(ev)
        except Exception:   # knowing the session is a bonus: it must never break the connection
            log.debug("tws-parse-error", exc_info=True)
            handshake.done = True
        if handshake.done:
            self.splice.client.watch = self.splice.upstream.watch = None
            self.handshake = None
            self._cancel_reply_timer()
            self._cancel_watch_timer()
            if self.phase == "hello":
                self.phase = "relaying"
            self.on_settled()   # accepted, refused or unread: from here the bytes only need moving
        elif handshake.start is not None:
            self.splice.client.watch = None   # TWS's answer settles it; the client's bytes need no more reading

    def _saw(self, ev: object) -> None:
        owner, peer = self.owner, self.splice.peer
        name = owner.route.name
        if isinstance(ev, tws.ServerHello):
            self.server_version = ev.version
            owner.target_answered()
        elif isinstance(ev, tws.ApiReady):
            self.phase = "api-ready"
            event(log, logging.INFO, "api-ready", route=name, peer=peer, client_id=self.client_id,
                  server_version=self.server_version, accounts=ev.accounts)
        elif isinstance(ev, tws.ApiRefused):
            self.phase, self.reason = "refused", f"TWS error {ev.code}: {ev.text}"
            event(log, logging.WARNING, "api-refused", route=name, peer=peer, client_id=self.client_id, code=ev.code,
                  text=ev.text)
        elif isinstance(ev, tws.StartApi):
            self.client_id = ev.client_id
            event(log, logging.INFO, "api-start", route=name, peer=peer, client_id=ev.client_id,
                  server_version=self.server_version)
            if self.process is not None:
                self._log_client()
            self._claim(ev.client_id)
        elif isinstance(ev, tws.Unsettled):
            self.phase = "unsettled"
            event(log, logging.WARNING, "api-unsettled", route=name, peer=peer, client_id=self.client_id,
                  saw=",".join(ev.saw) or "nothing", missing=",".join(ev.missing), after=ev.bound,
                  note="the opening did not settle; the session is relayed untouched")
        elif isinstance(ev, tws.NotTws):
            event(log, logging.DEBUG, "not-tws", route=name, peer=peer, side=ev.side, reason=ev.reason)

    # -- a clientId held by another connection ----------------------------------------------------

    def _claim(self, client_id: int) -> None:
        owner = self.owner
        holder = owner.client_ids.claim(str(owner.route.target), client_id, self.splice)
        if holder is None:
            return
        rejecting = owner.settings.reject_duplicate_client_id
        event(log, logging.WARNING, "client-id-clash", route=owner.route.name, client_id=client_id,
              peer=self.splice.peer, held_by=holder.peer,
              action=f"answered with error 326 ({tws.error_form(self.server_version)}) and closed"
              if rejecting else "passed on; TWS will refuse or time out the newcomer")
        if rejecting:
            self._reject()

    def _reject(self) -> None:
        """Answer with TWS's error 326, in the session's own form, and close both legs."""
        splice = self.splice
        splice.closed_by = splice.closed_by or "relay (client id in use)"
        self.phase, self.reason = "refused", f"clientId {self.client_id} is in use through this relay (error 326)"
        client = splice.client
        if self.server_version is not None and not client.lost and not client.transport.is_closing():
            client.transport.write(tws.client_id_in_use(self.server_version, self.client_id))
        splice.close()

    def release(self) -> None:
        """The connection is over: its clientId is free again in the route's table."""
        if self.client_id is not None:
            self.owner.client_ids.release(str(self.owner.route.target), self.client_id, self.splice)

    # -- the local process behind a client --------------------------------------------------------

    def found_process(self, process: Tuple[int, str]) -> None:
        self.process = process
        if self.client_id is not None:
            self._log_client()

    def _log_client(self) -> None:
        pid, command = self.process
        event(log, logging.INFO, "api-client", route=self.owner.route.name, peer=self.splice.peer,
              client_id=self.client_id, pid=pid, command=command)

    # -- TWS's version reply ----------------------------------------------------------------------

    def _expect_reply(self) -> None:
        """Once the hello went upstream, TWS has tws.REPLY_TIMEOUT to send its version reply."""
        if self.hello_seen and self.splice.client.out is not None and self.server_version is None \
                and self.reply_timer is None and not self.splice.finished:
            self.reply_timer = self.loop.call_later(tws.REPLY_TIMEOUT, self._no_reply)

    def _no_reply(self) -> None:
        self.reply_timer = None
        if not self.splice.finished and self.server_version is None:
            self.owner.no_version_reply(self.splice.peer)

    def _cancel_reply_timer(self) -> None:
        if self.reply_timer is not None:
            self.reply_timer.cancel()
            self.reply_timer = None

    def _cancel_watch_timer(self) -> None:
        if self.watch_timer is not None:
            self.watch_timer.cancel()
            self.watch_timer = None

    # -- the end ----------------------------------------------------------------------------------

    def diagnose(self) -> None:
        """The connection ended: if it ended after the hello but before TWS settled the session,
        say the likely causes (TWS refuses some bots without a word)."""
        if self.phase != "hello" or not self.hello_seen:
            return
        splice = self.splice
        id_text = f"clientId {self.client_id}" if self.client_id is not None else "the clientId"
        by_tws = bool(splice.closed_by) and splice.closed_by.startswith("upstream")
        if self.server_version is None:
            if not by_tws:
                return      # the bot gave up waiting for the version reply: the wedge timer speaks of that
            why = ("TWS accepted the connection and closed it before answering the API handshake: the API is not "
                   "enabled on that port (Configure > API > Settings), or this is not TWS's API port")
        elif self.client_id is None:
            why = "the bot left before sending startApi"
        elif by_tws:
            why = (f"TWS closed the session after startApi without a message: {id_text} already in use, or the "
                   f"API is not enabled for this port (Configure > API > Settings)")
        else:
            why = (f"TWS stayed silent after startApi until the bot gave up: an 'accept incoming connection?' "
                   f"dialog may be waiting on the Windows desktop, or {id_text} is already in use")
        self.phase, self.reason = "refused", why
        event(log, logging.WARNING, "api-refused", route=self.owner.route.name, peer=splice.peer,
              client_id=self.client_id, reason=why)
