"""Valid TWS API session openings, as each server version shapes them, for the tests."""
import struct

from relay import tws

TIME = "20250425 15:23:54 Eastern Standard Time"


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


def server_message(version: int, msg_id: int, fields, proto: bytes) -> bytes:
    """A message from TWS: text fields (raw 4-byte id from 201), protobuf (id + 200) from 213."""
    if version >= 213:
        return tws.frame(struct.pack(">I", msg_id + 200) + proto)
    text = b"".join(str(f).encode() + b"\0" for f in fields)
    if version >= tws.RAW_MSG_ID:
        return tws.frame(struct.pack(">I", msg_id) + text)
    return tws.frame(str(msg_id).encode() + b"\0" + text)


def managed_accounts(version: int, accounts: str) -> bytes:
    return server_message(version, 15, [1, accounts], b"\x0a" + varint(len(accounts)) + accounts.encode())


def next_valid_id(version: int, order_id: int) -> bytes:
    return server_message(version, 9, [1, order_id], b"\x08" + varint(order_id))


def session(version: int, client_id: int, caps: str = "", outcome: str = "ready"):
    """(client bytes, server bytes, expected events) of a whole opening that TWS accepts ('ready',
    after a data-farm notice, the way TWS sends it) or refuses with error 326 ('refused')."""
    client = tws.client_hello(157, 178) + start_api(version, client_id, caps)
    server = tws.fields_message(version, TIME)
    if outcome == "ready":
        server += (managed_accounts(version, "DU1,DU2") + tws.error_message(version, 2104, "Market data farm OK", 0, 1)
                   + next_valid_id(version, 1))
        settled = tws.ApiReady(2)
    else:
        server += tws.client_id_in_use(version, client_id, 1)
        settled = tws.ApiRefused(326, f"Unable to connect as the client id {client_id} is already in use. "
                                      f"Retry with a unique client id.")
    expected = [tws.ClientHello(157, 178, ""), tws.ServerHello(version, TIME),
                tws.StartApi(client_id, caps, "text" if version < 201 else "raw-id" if version < 213 else "protobuf"),
                settled]
    return client, server, expected
