"""Generic checks every relay variant must pass (after trio's check_half_closeable_stream).

Each check takes `make_relay(target_endpoint, **settings)`, an async context manager of a running
Relay, and uses real loopback sockets.
A maker whose `native` attribute is true runs the native pump: where a check looks inside the
relay, it waits for the hand-over first, so it proves the pump it names.
"""
import asyncio
from typing import List

from helpers import Backend, address, read_all, reset, sockets_here, tcp_states, wait_for
from relay.pump import MAX_BUFFERED_PER_CONNECTION


async def _write_chunks(writer: asyncio.StreamWriter, chunks: List[bytes]) -> None:
    for c in chunks:
        writer.write(c)
        await writer.drain()


async def _send_then_eof(writer: asyncio.StreamWriter, chunks: List[bytes]) -> None:
    await _write_chunks(writer, chunks)
    writer.write_eof()


async def settled(make_relay, splice) -> None:
    """For a native maker: wait until the connection is in the native pump's hands."""
    if getattr(make_relay, "native", False):
        await wait_for(lambda: splice.native is not None, what="hand-over to the native pump")


def _stalled(splice, direction: str):
    """(relay stopped reading the fast side, bytes the relay holds for it, bytes read from it)."""
    k = 0 if direction == "up" else 1
    if splice.native is not None:
        counts = splice.native_pump.counts(splice.native)
        return counts[2 + k] >= splice.native_pump.marks()[0], counts[2 + k], counts[k]   # then it reads no more
    reading_leg, writing_leg = (splice.client, splice.upstream) if k == 0 else (splice.upstream, splice.client)
    if not writing_leg.write_paused:
        return False, 0, reading_leg.nbytes
    return not reading_leg.transport.is_reading(), writing_leg.transport.get_write_buffer_size(), reading_leg.nbytes


async def check_exact(make_relay, up: List[bytes], down: List[bytes], order: str) -> None:
    """Bytes arrive exactly, in order, both ways, for any chunking and close order.
    order: 'client-first' (client FIN, then server answers and closes), 'server-first', 'both'."""
    got_up = []

    async def handler(reader, writer):
        if order == "server-first":
            await _write_chunks(writer, down)
            writer.write_eof()
            got_up.append(await read_all(reader))
        elif order == "client-first":
            got_up.append(await read_all(reader))
            await _write_chunks(writer, down)
            writer.write_eof()
        else:
            sender = asyncio.ensure_future(_send_then_eof(writer, down))
            got_up.append(await read_all(reader))
            await sender

    async with Backend(handler) as backend:
        async with make_relay(backend.endpoint) as relay:
            reader, writer = await asyncio.open_connection(*address(relay))
            if order == "server-first":
                got_down = await read_all(reader)
                await _write_chunks(writer, up)
                writer.write_eof()
            elif order == "client-first":
                await _write_chunks(writer, up)
                writer.write_eof()
                got_down = await read_all(reader)
            else:
                sender = asyncio.ensure_future(_send_then_eof(writer, up))
                got_down = await read_all(reader)
                await sender
            await backend.wait_finished(1)
            writer.close()
            assert got_up == [b"".join(up)], "client -> server bytes differ"
            assert got_down == b"".join(down), "server -> client bytes differ"
            route = relay.routes[0]
            await wait_for(lambda: not route.active, what="relay to drop the finished connection")


async def check_half_close(make_relay, who_first: str) -> None:
    """After one side's FIN the other direction keeps flowing until it closes too."""
    events = []
    go = asyncio.Event()   # the FIN waits for the hand-over, so the pump under test forwards it

    async def handler(reader, writer):
        if who_first == "client":
            assert await reader.read() == b"question"   # EOF arrived: client half-closed
            events.append("server saw client EOF")
            for i in range(50):      # the other direction still flows, in many writes
                writer.write(b"answer-%03d;" % i)
                await writer.drain()
            writer.write_eof()
        else:
            assert await reader.readexactly(2) == b"hi"   # (a client's first bytes settle the opening)
            writer.write(b"hello")
            await go.wait()
            writer.write_eof()
            events.append("server sent EOF")
            events.append(await read_all(reader))

    async with Backend(handler) as backend:
        async with make_relay(backend.endpoint) as relay:
            reader, writer = await asyncio.open_connection(*address(relay))
            await wait_for(lambda: relay.routes[0].active, what="connection to open")
            splice = next(iter(relay.routes[0].active))
            if who_first == "client":
                writer.write(b"question")
                await settled(make_relay, splice)
                writer.write_eof()
                body = await read_all(reader)
                assert body == b"".join(b"answer-%03d;" % i for i in range(50))
                assert events == ["server saw client EOF"]
            else:
                writer.write(b"hi")
                assert await reader.readexactly(5) == b"hello"
                await settled(make_relay, splice)
                go.set()
                assert await read_all(reader) == b""      # server's FIN forwarded as EOF
                for i in range(20):        # the client may keep talking after the server's FIN
                    writer.write(b"late-%02d;" % i)
                    await writer.drain()
                writer.write_eof()
                await backend.wait_finished(1)
                assert events[0] == "server sent EOF"
                assert events[1] == b"".join(b"late-%02d;" % i for i in range(20))
            writer.close()


async def check_slow_reader(make_relay, direction: str, total: int = 32 * 1024 * 1024) -> None:
    """A reader that stops reading makes the relay stop reading the other side: the relay's own
    buffers stay under MAX_BUFFERED_PER_CONNECTION, then every byte arrives once reading resumes."""
    release = asyncio.Event()
    got = []
    payload = bytes(range(256)) * (total // 256)

    async def handler(reader, writer):
        if direction == "up":            # server is the slow reader
            await release.wait()
            got.append(await read_all(reader))
        else:                            # server floods, client is the slow reader
            assert await reader.readexactly(1) == b"!"
            writer.write(payload)
            await writer.drain()
            writer.write_eof()
            await reader.read()

    async with Backend(handler) as backend:
        async with make_relay(backend.endpoint) as relay:
            reader, writer = await asyncio.open_connection(*address(relay))
            route = relay.routes[0]
            await wait_for(lambda: route.active, what="connection to open")
            splice = next(iter(route.active))
            # the first byte settles the opening (not TWS); the flood starts after the hand-over
            writer.write(payload[:1] if direction == "up" else b"!")
            await settled(make_relay, splice)
            stalled = None
            if direction == "up":
                stalled = asyncio.ensure_future(_write_chunks(writer, [payload[1:]]))
            # wait until the relay has paused reading the fast side: then nothing more enters the relay
            await wait_for(lambda: _stalled(splice, direction)[0], what="relay to pause the fast side")
            _, peak, read = _stalled(splice, direction)
            assert peak <= MAX_BUFFERED_PER_CONNECTION, f"relay buffered {peak} bytes"
            assert read < total, "relay read everything: no backpressure"
            if direction == "up":
                assert not stalled.done()
                release.set()
                await stalled
                writer.write_eof()
                await backend.wait_finished(1)
                assert got == [payload]
            else:
                body = await read_all(reader)
                assert body == payload
                writer.write_eof()
            writer.close()


async def check_close_propagates(make_relay, how: str) -> None:
    """When either leg closes or resets, the other is closed promptly and no socket is left behind."""
    server_saw = []
    server_close = asyncio.Event()

    async def handler(reader, writer):
        assert await reader.readexactly(2) == b"hi"   # (a client's first bytes settle the opening)
        writer.write(b"ready")
        await writer.drain()
        if how.startswith("server"):
            await server_close.wait()
            if how == "server-reset":
                reset(writer)
                return
            writer.close()        # full close, not half-close
            return
        server_saw.append(await read_all(reader))

    async with Backend(handler) as backend:
        async with make_relay(backend.endpoint) as relay:
            route = relay.routes[0]
            port = route.address.port
            reader, writer = await asyncio.open_connection(*address(relay))
            writer.write(b"hi")
            assert await reader.readexactly(5) == b"ready"
            await settled(make_relay, next(iter(route.active)))
            if how == "client-reset":
                reset(writer)
                await backend.wait_finished(1)
                assert server_saw == [b""]
            elif how == "client-close":
                writer.close()
                await backend.wait_finished(1)
                assert server_saw == [b""]
            else:
                server_close.set()
                try:
                    rest = await asyncio.wait_for(reader.read(), 5)
                except ConnectionResetError:
                    rest = b""
                assert rest == b""
                writer.close()
            await wait_for(lambda: not route.active, what="relay to finish the connection")
            await wait_for(lambda: "CLOSE_WAIT" not in tcp_states({port, backend.endpoint.port}),
                           what="no CLOSE_WAIT sockets")


CLOSE_HOWS = ("client-close", "client-reset", "server-close", "server-reset")


def _held_for_client(splice) -> int:
    """Bytes the relay holds for the client, in whichever pump carries the session."""
    if splice.native is not None:
        return splice.native_pump.counts(splice.native)[3]
    return splice.client.transport.get_write_buffer_size()


async def check_drain_timeout(make_relay) -> None:
    """TWS resets while the relay still holds bytes for a client that does not read (below the high
    mark, so the relay keeps reading and sees the reset): the client leg gets drain_timeout to take
    them, then the connection is cut."""
    import socket
    go, send = asyncio.Event(), asyncio.Event()

    async def send_then_reset(reader, writer):
        await send.wait()
        writer.write(b"z" * 100_000)
        await writer.drain()
        await go.wait()
        reset(writer)
    async with Backend(send_then_reset) as backend:
        async with make_relay(backend.endpoint, drain_timeout=0.5) as relay:
            route = relay.routes[0]
            loop = asyncio.get_running_loop()
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)      # and it never reads
            client.setblocking(False)
            await loop.sock_connect(client, address(relay))
            await loop.sock_sendall(client, b"!")          # not TWS: the opening is settled at once
            await wait_for(lambda: route.active, what="the connection")
            splice = next(iter(route.active))
            await settled(make_relay, splice)
            for sock in sockets_here(client.getsockname()):   # the relay's leg, wherever it is now
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                sock.close()
            send.set()
            await wait_for(lambda: splice.counts()[1] == 100_000, what="the relay to read what TWS sent")
            await wait_for(lambda: _held_for_client(splice) > 0, what="bytes the client does not take")
            t0 = loop.time()
            go.set()
            await wait_for(lambda: not route.active, timeout=5, what="the relay to cut the client leg")
            assert 0.4 < loop.time() - t0 < 3, loop.time() - t0
            assert splice.closed_by.startswith("upstream"), splice.closed_by
            client.close()

