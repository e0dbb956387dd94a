"""What the relay knows of the TWS / IB Gateway API socket protocol. Pure: bytes in, values out.

Framing: a 4-byte big-endian length, then the payload; up to server version 200 the payload is
NUL-terminated ASCII fields. The client opens with b"API\\0" and one framed "v<min>..<max>" string;
the server answers with one framed message of exactly two fields: the negotiated version and a
connection-time string.
"""
from __future__ import annotations

import asyncio
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


async def ask_version(host: str, port: int) -> int:
    """Open a connection, send the client hello, return the server's version; the one place the
    handshake is done over a socket (the probe and the target check use it). Raises OSError,
    asyncio.IncompleteReadError or ProtocolError; the caller bounds the time."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(client_hello())
        size = struct.unpack(">I", await reader.readexactly(4))[0]
        if size > 4096:
            raise ProtocolError("reply too long for a version answer")
        return parse_server_hello(await reader.readexactly(size))[0]
    finally:
        writer.close()


def parse_server_hello(payload: bytes) -> Tuple[int, str]:
    """The server's first message: (negotiated version, connection time)."""
    fields = split_fields(payload)
    if len(fields) != 2 or not fields[0].isdigit():
        raise ProtocolError(f"expected version and time, got {len(fields)} field(s)")
    return int(fields[0]), fields[1]


# ---------------------------------------------------------------------------- the opening of a session
# Server versions that change how the client's messages look (ibapi server_versions.py).
RAW_MSG_ID = 201          # from here a message id is a 4-byte big-endian int, not text
PROTOBUF_OFFSET = 200     # a protobuf message's id is the text id + 200 (startApi: 271)
ADVANCED_REJECT = 166     # error messages carry advancedOrderRejectJson
ERROR_TIME = 194          # error messages carry the error time
START_API = 71
ERROR = 4
CLIENT_ID_IN_USE = 326
LIMIT = 64 * 1024         # bytes buffered per direction before giving up on a connection


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
class NotTws:
    side: str                 # "client" or "server"
    reason: str


class Handshake:
    """Sans-IO reader of a TWS API session's opening: the client hello, the server's version reply
    and startApi. Feed each direction's bytes as they pass (nothing is held back: it only reads);
    it returns events, and is `done` once startApi was seen or it gave up (NotTws). It never raises
    on bad input."""

    def __init__(self) -> None:
        self.client = bytearray()
        self.server = bytearray()
        self.hello: Optional[ClientHello] = None
        self.version: Optional[int] = None
        self.done = False

    def from_client(self, data: bytes) -> List[object]:
        if self.done:
            return []
        self.client += data
        return self._advance()

    def from_server(self, data: bytes) -> List[object]:
        if self.done:
            return []
        if self.version is None:
            self.server += data
        return self._advance()

    def _give_up(self, side: str, reason: str) -> List[object]:
        self.done = True
        self.client.clear()
        self.server.clear()
        return [NotTws(side, reason)]

    def _advance(self) -> List[object]:
        events: List[object] = []
        for step, side in ((self._client_hello, "client"), (self._server_hello, "server"),
                           (self._start_api, "client")):
            try:
                event = step()
            except ProtocolError as e:
                return events + self._give_up(side, str(e))
            if event is not None:
                events.append(event)
        if not self.done and (len(self.client) > LIMIT or len(self.server) > LIMIT):
            return events + self._give_up("client", "no startApi within the first 64 KiB")
        return events

    def _client_hello(self) -> Optional[ClientHello]:
        if self.hello is not None:
            return None
        if not MAGIC.startswith(bytes(self.client[:4])):
            raise ProtocolError("does not start with API\\0")
        if len(self.client) < 4:
            return None
        payload, rest = split_frame(bytes(self.client[4:]))
        if payload is None:
            return None
        self.hello = _parse_versions(payload)
        del self.client[:len(self.client) - len(rest)]
        return self.hello

    def _server_hello(self) -> Optional[ServerHello]:
        # TWS answers only after the hello; waiting for it keeps events in protocol order
        if self.version is not None or not self.server or self.hello is None:
            return None
        payload, _ = split_frame(bytes(self.server))
        if payload is None:
            return None
        self.version, when = parse_server_hello(payload)
        self.server.clear()
        return ServerHello(self.version, when)

    def _start_api(self) -> Optional[StartApi]:
        if self.hello is None or self.version is None:
            return None     # its form depends on the negotiated version
        payload, _ = split_frame(bytes(self.client))
        if payload is None:
            return None
        self.done = True
        self.client.clear()
        return _parse_start_api(payload, self.version)


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
            client_id, caps = _decode_start_api_proto(payload[4:])
            return StartApi(client_id, caps, "protobuf")
        if msg_id != START_API:
            raise ProtocolError(f"first client message is {msg_id}, not startApi")
        fields, form = split_fields(payload[4:]), "raw-id"
    if len(fields) < 2 or not fields[1].lstrip("-").isdigit():
        raise ProtocolError("startApi without a clientId")
    return StartApi(int(fields[1]), fields[2] if len(fields) > 2 else "", form)


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


def _decode_start_api_proto(data: bytes) -> Tuple[int, str]:
    """StartApiRequest: field 1 clientId (int32), field 2 optionalCapabilities (string)."""
    client_id, caps, i = 0, "", 0
    while i < len(data):
        key, i = _varint(data, i)
        field_no, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
            if field_no == 1:
                client_id = value - (1 << 64) if value >= 1 << 63 else value   # negative int32s
        elif wire == 2:
            size, i = _varint(data, i)
            if i + size > len(data):
                raise ProtocolError("truncated protobuf field")
            if field_no == 2:
                caps = data[i:i + size].decode("utf-8", "replace")
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ProtocolError(f"unsupported protobuf wire type {wire}")
    if i > len(data):
        raise ProtocolError("truncated protobuf field")
    return client_id, caps


def client_id_in_use(version: int, client_id: int) -> bytes:
    """TWS's own error 326, framed for a text-protocol session (server version below 201)."""
    text = f"Unable to connect as the client id {client_id} is already in use. Retry with a unique client id."
    fields: List[object] = [ERROR, 2, -1, CLIENT_ID_IN_USE, text]
    if version >= ADVANCED_REJECT:
        fields.append("")
    if version >= ERROR_TIME:
        import time
        fields.append(int(time.time() * 1000))
    return fields_message(*fields)
