"""What the relay asks TWS over a socket: its API version, the one exchange that proves TWS answers
(a target check, `relay wsl discover`'s proof of the path). The protocol itself is in tws.py."""
from __future__ import annotations

import asyncio
import struct

from .tws import ProtocolError, client_hello, parse_server_hello


class NoReply(Exception):
    """Connected, but TWS sent no version reply in time: it accepts TCP and does not answer (wedged)."""


async def ask_version(host: str, port: int, connect_timeout: float = 2.0, reply_timeout: float = 3.0) -> int:
    """Open a connection, send the client hello, return the server's version; the one place the
    handshake is done over a socket (the probe and the target check use it). Raises OSError,
    asyncio.TimeoutError (no connection), NoReply (connected, no answer), asyncio.IncompleteReadError
    or ProtocolError."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), connect_timeout)
    try:
        writer.write(client_hello())
        try:
            head = await asyncio.wait_for(reader.readexactly(4), reply_timeout)
        except asyncio.TimeoutError:
            raise NoReply(f"connected, but no API version reply within {reply_timeout:g} s") from None
        size = struct.unpack(">I", head)[0]
        if size > 4096:
            raise ProtocolError("reply too long for a version answer")
        return parse_server_hello(await reader.readexactly(size))[0]
    finally:
        writer.close()
