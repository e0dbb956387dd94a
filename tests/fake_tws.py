"""A stand-in TWS: the API handshake, startApi, the answers ib_async's connect() waits for, and
reqCurrentTime, in the form of the negotiated server version (text fields; a raw 4-byte message id
from 201; startApi and requests as protobuf from 213). Like TWS with "Allow connections from
localhost only", it resets every peer that is not loopback. Modes play the failures users meet:
  normal     accepts the session
  silent     accepts TCP and never answers (a wedged TWS / Gateway)
  close      answers the version, then closes at startApi without a message
  refuse     answers the version, then sends its own error 326 at startApi and closes
  stream     at startApi streams `stream_bytes` of market data at once, without nextValidId or
             managedAccounts (a session whose opening never settles), then serves requests
  refuse-stream  at startApi an error (not a notice), then streams the same market data
Used in-process (FakeTws) and as a script inside test namespaces:

    python fake_tws.py PORT [--version N] [--host H] [--mode M]   (default host 0.0.0.0, as TWS does)
"""
import asyncio
import ipaddress
import socket
import struct
import sys
import time

from tws_sessions import frame, text_fields

SERVER_VERSION = 176          # inside ib_async 2.1's v157..178
ACCOUNT = "DU1234567"


def msg(*fields) -> bytes:
    return frame(text_fields(*fields))


def raw_msg(version, msg_id, *fields) -> bytes:
    """A message in the form of `version`: text fields, with a raw 4-byte id from 201."""
    if version < 201:
        return msg(msg_id, *fields)
    return frame(struct.pack(">I", msg_id) + text_fields(*fields))


def read_request(payload: bytes, version: int):
    """(message id, text fields or protobuf bytes) of a client message."""
    if version < 201:
        fields = payload.decode().split("\0")[:-1]
        return int(fields[0]), fields[1:]
    msg_id = struct.unpack(">I", payload[:4])[0]
    if msg_id > 200:
        return msg_id - 200, payload[4:]
    return msg_id, payload[4:].decode().split("\0")[:-1]


def proto_client_id(body: bytes) -> int:
    """Field 1 (a varint) of StartApiRequest."""
    assert body[:1] == b"\x08"
    value = shift = 0
    for b in body[1:]:
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return value - (1 << 64) if value >= 1 << 63 else value


def market_data(version, size: int) -> bytes:
    """tickPrice messages (id 1) of about `size` bytes in all, each price different."""
    out, i = [], 0
    total = 0
    while total < size:
        m = raw_msg(version, 1, 6, 1, 4, f"{100 + i / 100:.2f}", 100 + i % 50, 0)
        out.append(m)
        total += len(m)
        i += 1
    return b"".join(out)


class FakeTws:
    def __init__(self, version: int = SERVER_VERSION, local_only: bool = True, mode: str = "normal"):
        self.version = version
        self.local_only = local_only
        self.mode = mode
        self.server = None
        self.client_ids = []     # clientIds seen in startApi
        self.connected = asyncio.Event()
        self.resets = 0
        self.hellos = 0          # connections that sent the API hello (bots and handshake probes)
        self.accepted = 0        # every TCP connection (bots, connect checks, handshake checks)
        self.eofs = 0            # sessions past the hello whose client side sent FIN
        self.linger = None       # an asyncio.Event: after a client's FIN, keep its session open until it is set
        self.stream_bytes = 1 << 20
        self.streamed = b""      # what the stream modes sent, for the tests to compare

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.server = await asyncio.start_server(self._serve, host, port)
        return self.server.sockets[0].getsockname()[1]

    def close(self):
        self.server.close()

    async def _serve(self, reader, writer):
        self.accepted += 1
        peer = writer.get_extra_info("peername")[0]
        if self.local_only and not ipaddress.ip_address(peer).is_loopback:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.resets += 1
            writer.transport.abort()          # what users see as "connection reset by peer"
            return
        in_session = False
        try:
            if self.mode == "silent":
                if await reader.read(4) == b"API\0":
                    self.hellos += 1
                await reader.read()                # accepts and never says a word
                return
            if await reader.readexactly(4) != b"API\0":
                writer.close()
                return
            self.hellos += 1
            n = struct.unpack(">I", await reader.readexactly(4))[0]
            hello = (await reader.readexactly(n)).decode()           # "v157..178[ options]"
            client_max = int(hello.split(" ")[0].split("..")[1])
            version = min(self.version, client_max)                  # never above the client's max
            writer.write(msg(version, time.strftime("%Y%m%d %H:%M:%S") + " Greenwich Mean Time"))
            in_session = True
            while True:
                n = struct.unpack(">I", await reader.readexactly(4))[0]
                mid, body = read_request(await reader.readexactly(n), version)
                if not self._answer(version, mid, body, writer):
                    return
                await writer.drain()
        except asyncio.IncompleteReadError:
            if not in_session:
                return
            self.eofs += 1
            if self.linger is not None:
                await self.linger.wait()     # a TWS slow to notice the bot left
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _answer(self, v, mid, f, writer) -> bool:
        """Answer one request; False: close the connection."""
        if mid == 71:                              # startApi: version, clientId, capabilities (or protobuf)
            client_id = proto_client_id(f) if isinstance(f, bytes) else int(f[1])
            self.client_ids.append(client_id)
            if self.mode == "close":
                return False
            if self.mode in ("stream", "refuse-stream"):
                if self.mode == "refuse-stream":
                    fields = [-1, 504, "Not connected", ""] + ([int(time.time() * 1000)] if v >= 194 else [])
                    self.streamed = raw_msg(v, 4, *(fields if v >= 194 else [2] + fields))
                else:
                    self.streamed = b""
                self.streamed += market_data(v, self.stream_bytes)
                writer.write(self.streamed)
                return True
            if self.mode == "refuse":
                text = f"Unable to connect as the client id {client_id} is already in use. Retry with a unique client id."
                fields = [-1, 326, text, ""] + ([int(time.time() * 1000)] if v >= 194 else [])
                writer.write(raw_msg(v, 4, *(fields if v >= 194 else [2] + fields)))
                return False
            self.connected.set()
            writer.write(raw_msg(v, 15, 1, ACCOUNT) + raw_msg(v, 9, 1, 1))
            notice = [-1, 2104, "Market data farm connection is OK:usfarm", ""]
            writer.write(raw_msg(v, 4, *(notice + [int(time.time() * 1000)] if v >= 194 else [2] + notice)))
        elif mid == 61:
            writer.write(raw_msg(v, 62, 1))               # positionEnd
        elif mid == 5:
            writer.write(raw_msg(v, 53, 1))               # openOrderEnd
        elif mid == 99:
            writer.write(raw_msg(v, 102))                 # completedOrdersEnd
        elif mid == 6:
            writer.write(raw_msg(v, 54, 1, f[2]))         # accountDownloadEnd
        elif mid == 76:
            writer.write(raw_msg(v, 74, 1, f[1]))         # accountUpdateMultiEnd
        elif mid == 7:
            writer.write(raw_msg(v, 55, 1, f[1]))         # execDetailsEnd
        elif mid == 49:
            writer.write(raw_msg(v, 49, 1, int(time.time())))   # currentTime (asked in any form)
        return True


async def _main(port: int, version: int, host: str, mode: str) -> None:
    tws = FakeTws(version, mode=mode)
    await tws.start(host, port)
    print("listening", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    def opt(name, default):
        return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default
    asyncio.run(_main(int(sys.argv[1]), int(opt("--version", SERVER_VERSION)), opt("--host", "0.0.0.0"),
                      opt("--mode", "normal")))
