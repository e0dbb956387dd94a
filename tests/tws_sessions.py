"""Valid TWS API session openings, as each server version shapes them, for the tests. The bytes are
encoded here from the official API's layouts (ibapi comm.py, decoder.py, server_versions.py), never
with relay.tws, so a test that reads them back with relay.tws can catch a bug in either direction;
relay.tws is used only for the events it is expected to return."""
import struct

from relay import tws

TIME = "20250425 15:23:54 Eastern Standard Time"
RAW_MSG_ID, PROTOBUF, ERROR_TIME, ADVANCED_REJECT = 201, 213, 194, 166    # ibapi server_versions.py


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def text_fields(*fields) -> bytes:
    return b"".join(str(f).encode() + b"\0" for f in fields)


def client_hello(low: int, high: int) -> bytes:
    return b"API\0" + frame(f"v{low}..{high}".encode())


def version_reply(version: int, when: str = TIME) -> bytes:
    return frame(text_fields(version, when))


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
    if version < RAW_MSG_ID:
        return frame(text_fields(71, 2, client_id, caps))
    if version < PROTOBUF:
        return frame(struct.pack(">I", 71) + text_fields(2, client_id, caps))
    body = b"\x08" + varint(client_id) + (b"\x12" + varint(len(caps)) + caps.encode() if caps else b"")
    return frame(struct.pack(">I", 271) + body)


def server_message(version: int, msg_id: int, fields, proto: bytes) -> bytes:
    """A message from TWS: text fields (raw 4-byte id from 201), protobuf (id + 200) from 213."""
    if version >= PROTOBUF:
        return frame(struct.pack(">I", msg_id + 200) + proto)
    text = text_fields(*fields)
    if version >= RAW_MSG_ID:
        return frame(struct.pack(">I", msg_id) + text)
    return frame(str(msg_id).encode() + b"\0" + text)


def managed_accounts(version: int, accounts: str) -> bytes:
    return server_message(version, 15, [1, accounts], b"\x0a" + varint(len(accounts)) + accounts.encode())


def next_valid_id(version: int, order_id: int) -> bytes:
    return server_message(version, 9, [1, order_id], b"\x08" + varint(order_id))


def error(version: int, code: int, text: str, req_id: int = -1, when_ms: int = 0) -> bytes:
    """An error message (id 4) as TWS sends it at `version` (decoder.processErrorMsg and
    processErrorMsgProtoBuf): a version field below 194, the error time from 194, a raw id from 201,
    protobuf ErrorMessage (id 204: reqId 1, errorTime 2, errorCode 3, errorMsg 4) from 213."""
    fields = ([] if version >= ERROR_TIME else [2]) + [req_id, code, text]
    fields += [""] if version >= ADVANCED_REJECT else []
    fields += [when_ms] if version >= ERROR_TIME else []
    raw = text.encode()
    proto = (b"\x08" + varint(req_id) + b"\x10" + varint(when_ms) + b"\x18" + varint(code) + b"\x22" + varint(len(raw))
             + raw)
    return server_message(version, 4, fields, proto)


def session(version: int, client_id: int, caps: str = "", outcome: str = "ready"):
    """(client bytes, server bytes, expected events) of a whole opening that TWS accepts ('ready',
    after a data-farm notice, the way TWS sends it) or refuses with error 326 ('refused')."""
    client = client_hello(157, 178) + start_api(version, client_id, caps)
    server = version_reply(version)
    if outcome == "ready":
        server += (managed_accounts(version, "DU1,DU2") + error(version, 2104, "Market data farm OK", 0, 1)
                   + next_valid_id(version, 1))
        settled = tws.ApiReady(2)
    else:
        server += error(version, 326, f"Unable to connect as the client id {client_id} is already in use. "
                                      f"Retry with a unique client id.", when_ms=1)
        settled = tws.ApiRefused(326, f"Unable to connect as the client id {client_id} is already in use. "
                                      f"Retry with a unique client id.")
    expected = [tws.ClientHello(157, 178, ""), tws.ServerHello(version, TIME),
                tws.StartApi(client_id, caps, "text" if version < 201 else "raw-id" if version < 213 else "protobuf"),
                settled]
    return client, server, expected
