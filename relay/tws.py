"""What the relay knows of the TWS / IB Gateway API socket protocol. Pure: bytes in, values out (the one
exchange over a socket, the version probe, is in probe.py). Over 400 lines: the framing, the reader
of a session's opening and the messages the relay writes share one set of version rules (text, raw
id from 201, protobuf from 213), kept together so they cannot drift apart.

Framing: a 4-byte big-endian length, then the payload; up to server version 200 the payload is
NUL-terminated ASCII fields. The client opens with b"API\\0" and one framed "v<min>..<max>" string;
the server answers with one framed message of exactly two fields: the negotiated version and a
connection-time string.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import List, Optional, Tuple

MAGIC = b"API\0"
MAX_MESSAGE = 0xFFFFFF
DEFAULT_PORTS = {"tws-live": 7496, "tws-paper": 7497, "gateway-live": 4001, "gateway-paper": 4002}


class ProtocolError(ValueError):
    """Bytes that are not the TWS API protocol."""


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def fields_message(*fields: object) -> bytes:
    """A framed message of NUL-terminated text fields (the classic, pre-201 form)."""
    return frame(b"".join(str(f).encode() + b"\0" for f in fields))


def client_hello(min_version: int = 100, max_version: int = 178, options: str = "") -> bytes:
    versions = f"v{min_version}..{max_version}" + (f" {options}" if options else "")
    return MAGIC + frame(versions.encode())


def split_frame(buf: bytes) -> Tuple[Optional[bytes], bytes]:
    """(payload of the first complete frame or None if incomplete, bytes after it)."""
    if len(buf) < 4:
        return None, buf
    (n,) = struct.unpack(">I", buf[:4])
    if n > MAX_MESSAGE:
        raise ProtocolError(f"frame length {n} exceeds the API's maximum {MAX_MESSAGE}")
    if len(buf) < 4 + n:
        return None, buf
    return buf[4:4 + n], buf[4 + n:]


def split_fields(payload: bytes) -> List[str]:
    if not payload.endswith(b"\0"):
        raise ProtocolError("message fields are not NUL-terminated")
    try:
        return payload[:-1].decode("ascii").split("\0")
    except UnicodeDecodeError:
        raise ProtocolError("message is not ASCII text") from None


def parse_server_hello(payload: bytes) -> Tuple[int, str]:
    """The server's first message: (negotiated version, connection time)."""
    fields = split_fields(payload)
    if len(fields) != 2 or not fields[0].isdigit():
        raise ProtocolError(f"expected version and time, got {len(fields)} field(s)")
    return int(fields[0]), fields[1]


# ---------------------------------------------------------------------------- the opening of a session
# Server versions that change how messages look (ibapi server_versions.py).
RAW_MSG_ID = 201          # from here a message id is a 4-byte big-endian int, not text
PROTOBUF_OFFSET = 200     # a protobuf message's id is the text id + 200 (startApi: 271, error: 204)
PROTOBUF_OPENING = 213    # from here startApi itself travels as protobuf: the relay answers in protobuf too
ADVANCED_REJECT = 166     # error messages carry advancedOrderRejectJson
ERROR_TIME = 194          # error messages carry the error time and lose their version field
START_API = 71
ERROR = 4
NEXT_VALID_ID = 9
MANAGED_ACCOUNTS = 15
CLIENT_ID_IN_USE = 326
LIMIT = 16 * 1024         # bytes the watch reads from each side of a session, at most: an opening settles
                          # in a few hundred; every byte before the hand-over goes through Python
WATCH_TIMEOUT = 10.0      # seconds the watch may last before the session is relayed unread
REPLY_TIMEOUT = 3.0       # seconds TWS gets to answer a hello before it counts as wedged


def is_notice(code: int) -> bool:
    """TWS's informational 'errors' (data farm OK, connectivity restored...), not refusals."""
    return 2100 <= code <= 2199 or code in (1100, 1101, 1102, 1300)


@dataclass(frozen=True)
class ClientHello:
    min_version: int
    max_version: int
    options: str


@dataclass(frozen=True)
class ServerHello:
    version: int
    time: str


@dataclass(frozen=True)
class StartApi:
    client_id: int
    capabilities: str
    form: str                 # "text", "raw-id" or "protobuf"


@dataclass(frozen=True)
class ApiReady:
    """TWS accepted the session: nextValidId and managedAccounts arrived."""
    accounts: int             # how many accounts (never their numbers)


@dataclass(frozen=True)
class ApiRefused:
    """TWS answered startApi with an error before accepting the session."""
    code: int
    text: str


@dataclass(frozen=True)
class NotTws:
    side: str                 # "client" or "server"
    reason: str


@dataclass(frozen=True)
class Unsettled:
    """The watch reached its bound (LIMIT bytes from a side, or the caller's time limit) before TWS
    settled the session: which steps of the opening arrived and which were missing."""
    saw: Tuple[str, ...]
    missing: Tuple[str, ...]
    bound: str                # what ended the watch, in words


OPENING = ("hello", "version", "startApi", "managedAccounts", "nextValidId")


class _Side:
    """One direction's bytes as the watch takes them: at most LIMIT in all, each frame cut out of
    one buffer at an offset (never a copy of everything still buffered), so reading is linear."""

    __slots__ = ("buf", "pos", "taken")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.pos = 0              # the next unread byte in buf
        self.taken = 0            # bytes taken since the session began

    def take(self, data: bytes) -> None:
        room = LIMIT - self.taken
        if room > 0:
            chunk = data[:room]
            self.buf += chunk
            self.taken += len(chunk)

    @property
    def full(self) -> bool:
        return self.taken >= LIMIT

    def __len__(self) -> int:
        return len(self.buf) - self.pos

    def head(self, n: int) -> bytes:
        return bytes(self.buf[self.pos:self.pos + n])

    def frame(self, after: int = 0) -> Optional[bytes]:
        """The payload of the frame that starts `after` bytes on, consuming both; None while incomplete."""
        buf, start = self.buf, self.pos + after
        if len(buf) - start < 4:
            return None
        (n,) = struct.unpack_from(">I", buf, start)
        if n > MAX_MESSAGE:
            raise ProtocolError(f"frame length {n} exceeds the API's maximum {MAX_MESSAGE}")
        end = start + 4 + n
        if len(buf) < end:
            return None
        self.pos = end
        return bytes(buf[start + 4:end])

    def compact(self) -> None:
        if self.pos:
            del self.buf[:self.pos]
            self.pos = 0

    def clear(self) -> None:
        self.taken -= len(self)      # taken but never read
        self.buf.clear()
        self.pos = 0


class Handshake:
    """Sans-IO reader of a TWS API session's opening: the client hello, the server's version reply,
    startApi, and TWS's first answer that settles it (accepted: nextValidId + managedAccounts;
    refused: an error message). Feed each direction's bytes as they pass (nothing is held back: it
    only reads); it returns events, and is `done` once the session is settled or the watch ended
    (NotTws: bytes that are not the protocol; Unsettled: a bound reached first). It takes at most
    LIMIT bytes from each side and reads each byte once; after startApi the client's bytes are no
    longer read; `expire()` ends the watch from outside (a time limit). It never raises on bad input."""

    def __init__(self) -> None:
        self._client = _Side()
        self._server = _Side()
        self.hello: Optional[ClientHello] = None
        self.version: Optional[int] = None
        self.start: Optional[StartApi] = None
        self.accounts: Optional[int] = None
        self.next_id = False
        self.done = False

    @property
    def client(self) -> bytes:
        """The client's bytes taken and not read yet."""
        return bytes(self._client.buf[self._client.pos:])

    @property
    def server(self) -> bytes:
        return bytes(self._server.buf[self._server.pos:])

    @property
    def read(self) -> Tuple[int, int]:
        """Bytes taken from the client and from the server; once done, those read up to the end
        of the watch (what came after in the same read is not counted: it does not depend on
        how the bytes were split into reads)."""
        return self._client.taken, self._server.taken

    def from_client(self, data: bytes) -> List[object]:
        if self.done or self.start is not None:
            return []
        self._client.take(data)
        return self._advance()

    def from_server(self, data: bytes) -> List[object]:
        if self.done:
            return []
        self._server.take(data)
        return self._advance()

    def expire(self, bound: str) -> List[object]:
        """End the watch now (the caller's time limit): [Unsettled], or [] if it already ended."""
        return [] if self.done else self._unsettled(bound)

    def saw(self) -> Tuple[str, ...]:
        got = (self.hello is not None, self.version is not None, self.start is not None,
               self.accounts is not None, self.next_id)
        return tuple(step for step, seen in zip(OPENING, got) if seen)

    def _end(self) -> None:
        self.done = True
        self._client.clear()
        self._server.clear()

    def _give_up(self, side: str, reason: str) -> List[object]:
        self._end()
        return [NotTws(side, reason)]

    def _unsettled(self, bound: str) -> List[object]:
        saw = self.saw()
        self._end()
        return [Unsettled(saw, tuple(step for step in OPENING if step not in saw), bound)]

    def _advance(self) -> List[object]:
        events: List[object] = []
        for step, side in ((self._client_hello, "client"), (self._server_hello, "server"),
                           (self._start_api, "client"), (self._answers, "server")):
            try:
                event = step()
            except ProtocolError as e:
                return events + self._give_up(side, str(e))
            if event is not None:
                events.append(event)
            if self.done:
                self._end()
                return events
        self._client.compact()
        self._server.compact()
        # all that was taken is read: if the side the next step waits on is at its bound, it can
        # bring nothing more, and the watch ends
        waits_on_client = self.hello is None or (self.version is not None and self.start is None)
        if (self._client if waits_on_client else self._server).full:
            who = "client" if waits_on_client else "server"
            return events + self._unsettled(f"{LIMIT // 1024} KiB from the {who}")
        return events

    def _client_hello(self) -> Optional[ClientHello]:
        if self.hello is not None:
            return None
        c = self._client
        if not MAGIC.startswith(c.head(4)):
            raise ProtocolError("does not start with API\\0")
        payload = c.frame(after=len(MAGIC)) if len(c) >= len(MAGIC) else None
        if payload is None:
            return None
        self.hello = _parse_versions(payload)
        return self.hello

    def _server_hello(self) -> Optional[ServerHello]:
        # TWS answers only after the hello; waiting for it keeps events in protocol order
        if self.version is not None or self.hello is None:
            return None
        payload = self._server.frame()
        if payload is None:
            return None
        self.version, when = parse_server_hello(payload)
        return ServerHello(self.version, when)

    def _start_api(self) -> Optional[StartApi]:
        if self.start is not None or self.hello is None or self.version is None:
            return None     # its form depends on the negotiated version
        payload = self._client.frame()
        if payload is None:
            return None
        self._client.clear()
        self.start = _parse_start_api(payload, self.version)
        return self.start

    def _answers(self) -> Optional[object]:
        """TWS's messages after startApi, until one settles the session."""
        if self.start is None:
            return None
        while True:
            payload = self._server.frame()
            if payload is None:
                return None
            msg_id, body = split_message(payload, self.version)
            if msg_id == ERROR:
                code, text = decode_error(body, self.version)
                if not is_notice(code):
                    self.done = True
                    return ApiRefused(code, text)
            elif msg_id == MANAGED_ACCOUNTS:
                self.accounts = _accounts(body)
            elif msg_id == NEXT_VALID_ID:
                self.next_id = True
            if self.next_id and self.accounts is not None:
                self.done = True
                return ApiReady(self.accounts)


def split_message(payload: bytes, version: int) -> Tuple[int, object]:
    """(message id, body) of a server message at `version`: body is the list of text fields after
    the id, or for a protobuf message (id above 200, reported as id - 200) its bytes."""
    if version < RAW_MSG_ID:
        fields = split_fields(payload)
        if not fields[0].isdigit():
            raise ProtocolError(f"message id {fields[0][:20]!r} is not a number")
        return int(fields[0]), fields[1:]
    if len(payload) < 4:
        raise ProtocolError("message too short for a raw message id")
    (msg_id,) = struct.unpack(">I", payload[:4])
    if msg_id > PROTOBUF_OFFSET:
        return msg_id - PROTOBUF_OFFSET, bytes(payload[4:])
    return msg_id, split_fields(payload[4:])


def decode_error(body: object, version: int) -> Tuple[int, str]:
    """(code, text) of an error message body in any of its forms."""
    if isinstance(body, bytes):
        fields = _proto_fields(body)
        return _int32(fields.get(3, 0)), _text(fields.get(4, b""))
    fields = list(body)
    if version < ERROR_TIME:
        fields = fields[1:]          # the old version field
    if len(fields) < 3 or not fields[1].lstrip("-").isdigit():
        raise ProtocolError("error message without a code")
    return int(fields[1]), fields[2]


def _accounts(body: object) -> int:
    if isinstance(body, bytes):
        text = _text(_proto_fields(body).get(1, b""))
    else:
        text = body[1] if len(body) > 1 else ""
    return len([a for a in text.split(",") if a.strip()])


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _int32(value: object) -> int:
    v = int(value) if isinstance(value, int) else 0
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse_versions(payload: bytes) -> ClientHello:
    try:
        text = payload.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("client hello is not ASCII") from None
    versions, _, options = text.partition(" ")
    low, sep, high = versions[1:].partition("..")
    if not versions.startswith("v") or not sep or not low.isdigit() or not high.isdigit():
        raise ProtocolError(f"client hello {text[:40]!r} is not v<min>..<max>")
    return ClientHello(int(low), int(high), options)


def _parse_start_api(payload: bytes, version: int) -> StartApi:
    if version < RAW_MSG_ID:
        fields, form = split_fields(payload), "text"
        msg_id = fields.pop(0) if fields else ""
        if msg_id != str(START_API):
            raise ProtocolError(f"first client message is {msg_id!r}, not startApi")
    else:
        if len(payload) < 4:
            raise ProtocolError("message too short for a raw message id")
        (msg_id,) = struct.unpack(">I", payload[:4])
        if msg_id == START_API + PROTOBUF_OFFSET:
            fields_pb = _proto_fields(payload[4:])
            return StartApi(_int32(fields_pb.get(1, 0)), _text(fields_pb.get(2, b"")), "protobuf")
        if msg_id != START_API:
            raise ProtocolError(f"first client message is {msg_id}, not startApi")
        fields, form = split_fields(payload[4:]), "raw-id"
    if len(fields) < 2 or not fields[1].lstrip("-").isdigit():
        raise ProtocolError("startApi without a clientId")
    return StartApi(int(fields[1]), fields[2] if len(fields) > 2 else "", form)


# ---------------------------------------------------------------------------- protobuf, the little we need

def _varint(data: bytes, i: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ProtocolError("truncated protobuf varint")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _proto_fields(data: bytes) -> dict:
    """{field number: int (varint/fixed) or bytes (length-delimited)} of one protobuf message."""
    out: dict = {}
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        field_no, wire = key >> 3, key & 7
        if wire == 0:
            out[field_no], i = _varint(data, i)
        elif wire == 2:
            size, i = _varint(data, i)
            if i + size > len(data):
                raise ProtocolError("truncated protobuf field")
            out[field_no] = bytes(data[i:i + size])
            i += size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if i + width > len(data):
                raise ProtocolError("truncated protobuf field")
            out[field_no] = int.from_bytes(data[i:i + width], "little")
            i += width
        else:
            raise ProtocolError(f"unsupported protobuf wire type {wire}")
    return out


def _put_varint(n: int) -> bytes:
    n &= (1 << 64) - 1            # a negative int32 is ten bytes, as protobuf writes it
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _proto_int(field_no: int, value: int) -> bytes:
    return _put_varint(field_no << 3) + _put_varint(value)


def _proto_text(field_no: int, text: str) -> bytes:
    data = text.encode("utf-8")
    return _put_varint(field_no << 3 | 2) + _put_varint(len(data)) + data


# ---------------------------------------------------------------------------- what the relay says itself

def error_form(version: int) -> str:
    """How an error message is encoded for a session at `version` (for the log)."""
    if version >= PROTOBUF_OPENING:
        return "protobuf message 204"
    if version >= RAW_MSG_ID:
        return "raw message id with text fields"
    return "text fields" + (" with version field" if version < ERROR_TIME else "")


def client_id_in_use(version: int, client_id: int, now_ms: Optional[int] = None) -> bytes:
    """TWS's own error 326, encoded as a session at server `version` reads it."""
    return error_message(version, CLIENT_ID_IN_USE, f"Unable to connect as the client id {client_id} is already "
                         f"in use. Retry with a unique client id.", now_ms=now_ms)


def error_message(version: int, code: int, text: str, req_id: int = -1, now_ms: Optional[int] = None) -> bytes:
    """An error message (id 4) in the form a session at server `version` reads."""
    import time
    when = int(time.time() * 1000) if now_ms is None else now_ms
    if version >= PROTOBUF_OPENING:     # ErrorMessage: id 1, errorTime 2, errorCode 3, errorMsg 4
        body = _proto_int(1, req_id) + _proto_int(2, when) + _proto_int(3, code) + _proto_text(4, text)
        return frame(struct.pack(">I", ERROR + PROTOBUF_OFFSET) + body)
    fields: List[object] = [] if version >= ERROR_TIME else [2]    # the version field went away at 194
    fields += [req_id, code, text]
    if version >= ADVANCED_REJECT:
        fields.append("")
    if version >= ERROR_TIME:
        fields.append(when)
    text_fields = b"".join(str(f).encode() + b"\0" for f in fields)
    if version >= RAW_MSG_ID:
        return frame(struct.pack(">I", ERROR) + text_fields)
    return frame(str(ERROR).encode() + b"\0" + text_fields)
