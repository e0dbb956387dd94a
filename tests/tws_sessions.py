"""Valid TWS API session openings, as each server version shapes them, for the tests."""
import struct

from relay import tws


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def start_api(version: int, client_id: int, caps: str = "") -> bytes:
    """startApi as each client library sends it for a negotiated server version."""
    if version < tws.RAW_MSG_ID:
        return tws.fields_message(71, 2, client_id, caps)
    if version < 213:
        return tws.frame(struct.pack(">I", 71) + b"".join(str(f).encode() + b"\0" for f in (2, client_id, caps)))
    body = b"\x08" + varint(client_id) + (b"\x12" + varint(len(caps)) + caps.encode() if caps else b"")
    return tws.frame(struct.pack(">I", 271) + body)


def session(version: int, client_id: int, caps: str = ""):
    client = tws.client_hello(157, 178) + start_api(version, client_id, caps)
    server = tws.fields_message(version, "20250425 15:23:54 Eastern Standard Time") + tws.fields_message(15, 1, "DU1")
    expected = [tws.ClientHello(157, 178, ""), tws.ServerHello(version, "20250425 15:23:54 Eastern Standard Time"),
                tws.StartApi(client_id, caps, "text" if version < 201 else "raw-id" if version < 213 else "protobuf")]
    return client, server, expected
