"""A stand-in TWS: the API handshake, startApi, the answers ib_async's connect() waits for, and
reqCurrentTime. Like TWS with "Allow connections from localhost only", it resets every peer that
is not loopback. Used in-process (FakeTws) and as a script inside test namespaces:

    python fake_tws.py PORT [--version N] [--host H]   listens on H:PORT (default 0.0.0.0, as TWS does)
"""
import asyncio
import ipaddress
import socket
import struct
import sys
import time

SERVER_VERSION = 176          # inside ib_async 2.1's v157..178
ACCOUNT = "DU1234567"


def msg(*fields) -> bytes:
    payload = b"".join(str(f).encode() + b"\0" for f in fields)
    return struct.pack(">I", len(payload)) + payload


class FakeTws:
    def __init__(self, version: int = SERVER_VERSION, local_only: bool = True):
        self.version = version
        self.local_only = local_only
        self.server = None
        self.client_ids = []     # clientIds seen in startApi
        self.connected = asyncio.Event()
        self.resets = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.server = await asyncio.start_server(self._serve, host, port)
        return self.server.sockets[0].getsockname()[1]

    def close(self):
        self.server.close()

    async def _serve(self, reader, writer):
        peer = writer.get_extra_info("peername")[0]
        if self.local_only and not ipaddress.ip_address(peer).is_loopback:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.resets += 1
            writer.transport.abort()          # what users see as "connection reset by peer"
            return
        try:
            if await reader.readexactly(4) != b"API\0":
                writer.close()
                return
            n = struct.unpack(">I", await reader.readexactly(4))[0]
            hello = (await reader.readexactly(n)).decode()           # "v157..178[ options]"
            client_max = int(hello.split(" ")[0].split("..")[1])
            version = min(self.version, client_max)                  # never above the client's max
            writer.write(msg(version, time.strftime("%Y%m%d %H:%M:%S") + " Greenwich Mean Time"))
            while True:
                n = struct.unpack(">I", await reader.readexactly(4))[0]
                fields = (await reader.readexactly(n)).decode().split("\0")[:-1]
                self._answer(fields, writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _answer(self, f, writer):
        mid = int(f[0])
        if mid == 71:                              # startApi: version, clientId, capabilities
            self.client_ids.append(int(f[2]))
            self.connected.set()
            writer.write(msg(15, 1, ACCOUNT) + msg(9, 1, 1))
            writer.write(msg(4, 2, -1, 2104, "Market data farm connection is OK:usfarm", ""))
        elif mid == 61:
            writer.write(msg(62, 1))               # positionEnd
        elif mid == 5:
            writer.write(msg(53, 1))               # openOrderEnd
        elif mid == 99:
            writer.write(msg(102))                 # completedOrdersEnd
        elif mid == 6:
            writer.write(msg(54, 1, f[3]))         # accountDownloadEnd
        elif mid == 76:
            writer.write(msg(74, 1, f[2]))         # accountUpdateMultiEnd
        elif mid == 7:
            writer.write(msg(55, 1, f[2]))         # execDetailsEnd
        elif mid == 49:
            writer.write(msg(49, 1, int(time.time())))   # currentTime


async def _main(port: int, version: int, host: str) -> None:
    tws = FakeTws(version)
    await tws.start(host, port)
    print("listening", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    def opt(name, default):
        return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default
    asyncio.run(_main(int(sys.argv[1]), int(opt("--version", SERVER_VERSION)), opt("--host", "0.0.0.0")))
