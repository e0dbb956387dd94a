"""What the relay knows of the TWS / IB Gateway API socket protocol. Pure: bytes in, values out.

Framing: a 4-byte big-endian length, then the payload; up to server version 200 the payload is
NUL-terminated ASCII fields. The client opens with b"API\\0" and one framed "v<min>..<max>" string;
the server answers with one framed message of exactly two fields: the negotiated version and a
connection-time string.
"""
from __future__ import annotations

import struct
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
