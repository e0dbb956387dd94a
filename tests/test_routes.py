"""Route behaviour on real loopback sockets: connect failures, pre-connect hold, allowlist, cap,
wildcard refusal, prompt cleanup, shutdown."""
import asyncio
import ipaddress
import socket

import pytest

from conftest import linux_only_because, on_each_loop
from helpers import (Backend, address, echo, open_fds, read_all, records, reset, sockets_here, relay_for,
                     tcp_states, wait_for)
from relay.config import Endpoint
from relay.route_server import BindError
from relay.pump import HOLD_LIMIT


class FullBacklog:
    """A listener whose accept queue is full, so the kernel drops new SYNs: connects to it hang
    until `open()` turns it into a real server (the connector's SYN retry then gets through)."""

    def __init__(self):
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(0)
        self.filler = socket.create_connection(self.srv.getsockname())   # fills the queue of one
        self.endpoint = Endpoint("127.0.0.1", self.srv.getsockname()[1])

    async def open(self, handler):
        filler_port = self.filler.getsockname()[1]

        async def serve(reader, writer):
            if writer.get_extra_info("peername")[1] == filler_port:
                writer.close()
                return
            await handler(reader, writer)
        self.srv.setblocking(False)
        return await asyncio.start_server(serve, sock=self.srv)

    def close(self):
        self.filler.close()
        self.srv.close()


async def closed_by_relay(reader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), 3) == b""
    except ConnectionResetError:
        return True


@on_each_loop
async def test_refused_target_closes_client_and_names_target(caplog):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                  # nothing listens there now
    async with relay_for(Endpoint("127.0.0.1", port)) as relay:
        reader, writer = await asyncio.open_connection(*address(relay))
        assert await closed_by_relay(reader)
        await wait_for(lambda: records(caplog, "upstream-failed"), what="upstream-failed log line")
        rec = records(caplog, "upstream-failed")[0]
        assert rec.fields["target"] == f"127.0.0.1:{port}"
        assert "refused" in rec.fields["error"].lower()
        writer.close()


@on_each_loop
async def test_unreachable_target_times_out_and_closes_client(caplog):
    hole = FullBacklog()
    try:
        async with relay_for(hole.endpoint, connect_timeout=0.3) as relay:
            loop = asyncio.get_running_loop()
            reader, writer = await asyncio.open_connection(*address(relay))
            t0 = loop.time()
            assert await closed_by_relay(reader)
            assert loop.time() - t0 < 2.0
            rec = records(caplog, "upstream-failed")[0]
            assert rec.fields["error"] == "timed out"
            writer.close()
    finally:
        hole.close()


@on_each_loop(timeout=20)
async def test_bytes_before_upstream_connect_are_held_capped_and_sent_first():
    hole = FullBacklog()
    got = []
    payload = bytes(range(256)) * (4 * HOLD_LIMIT // 256)   # more than the hold limit

    async def handler(reader, writer):
        got.append(await read_all(reader))
        writer.write(b"thanks")
        writer.write_eof()
    try:
        async with relay_for(hole.endpoint, connect_timeout=10) as relay:
            reader, writer = await asyncio.open_connection(*address(relay))
            writer.write(payload)
            writer.write_eof()
            splice = await _only_splice(relay)
            # upstream connect is stuck: the relay holds bytes up to the cap, then stops reading
            await wait_for(lambda: not splice.client.transport.is_reading(), what="client paused at the cap")
            assert HOLD_LIMIT <= splice.held_bytes < HOLD_LIMIT + 256 * 1024
            server = await hole.open(handler)
            assert await asyncio.wait_for(read_all(reader), 10) == b"thanks"
            assert got == [payload]
            server.close()
            writer.close()
    finally:
        hole.close()


async def _only_splice(relay):
    route = relay.routes[0]
    await wait_for(lambda: route.active, what="connection admitted")
    return next(iter(route.active))


@on_each_loop
async def test_allowlist_refuses_outsiders_without_touching_target_and_rate_limits_log(caplog):
    async with Backend(echo) as backend:
        async with relay_for(backend.endpoint, allow=(ipaddress.ip_network("10.0.0.0/8"),)) as relay:
            for _ in range(20):
                reader, writer = await asyncio.open_connection(*address(relay))
                assert await closed_by_relay(reader)
                writer.close()
            assert backend.accepted == 0
            refused = records(caplog, "refused")
            assert len(refused) == 5             # burst of 5, the rest suppressed
            assert refused[0].fields["reason"] == "not-in-allowlist"
            assert refused[0].fields["peer"].startswith("127.0.0.1:")


@on_each_loop
async def test_default_allowlist_admits_loopback():
    async with Backend(echo) as backend:
        async with relay_for(backend.endpoint) as relay:  # no allow: loopback + listen subnet
            assert ipaddress.ip_network("127.0.0.0/8") in relay.routes[0].allow
            reader, writer = await asyncio.open_connection(*address(relay))
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            writer.close()


@on_each_loop
async def test_connection_cap_refuses_extra_and_keeps_existing(caplog):
    async with Backend(echo) as backend:
        async with relay_for(backend.endpoint, max_connections=2) as relay:
            conns = [await asyncio.open_connection(*address(relay)) for _ in range(2)]
            await wait_for(lambda: len(relay.routes[0].active) == 2, what="two admitted")
            reader3, writer3 = await asyncio.open_connection(*address(relay))
            assert await closed_by_relay(reader3)
            assert records(caplog, "refused")[0].fields["reason"] == "connection-cap"
            for i, (r, w) in enumerate(conns):
                w.write(b"still here %d" % i)
                assert await r.readexactly(12) == b"still here %d" % i
                w.close()


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
@on_each_loop
async def test_wildcard_listen_refused_unless_explicitly_exposed(host):
    with pytest.raises(BindError, match="expose_to_all_networks"):
        async with relay_for(Endpoint("127.0.0.1", 9), listen=host):
            pass
    async with Backend(echo) as backend:
        async with relay_for(backend.endpoint, listen=host, expose_to_all_networks=True) as relay:
            loopback = "127.0.0.1" if host == "0.0.0.0" else "::1"
            reader, writer = await asyncio.open_connection(loopback, relay.routes[0].address.port)
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            writer.close()


@on_each_loop
async def test_abrupt_resets_leave_no_sockets_or_fds():
    async with Backend(echo) as backend:
        async with relay_for(backend.endpoint) as relay:
            route = relay.routes[0]
            before = open_fds()
            for _ in range(40):
                reader, writer = await asyncio.open_connection(*address(relay))
                writer.write(b"hello")
                await reader.readexactly(5)
                reset(writer)
            await backend.wait_finished(40)
            await wait_for(lambda: not route.active, what="all connections finished")
            await wait_for(lambda: open_fds() <= before, what="fds back to baseline")
            ports = {route.address.port, backend.endpoint.port}
            await wait_for(lambda: not {"CLOSE_WAIT", "ESTABLISHED"} & set(tcp_states(ports)),
                           what="no CLOSE_WAIT/ESTABLISHED sockets left")


@on_each_loop
async def test_shutdown_lets_finishing_connections_end_and_cuts_the_rest():
    async with Backend(echo) as backend:
        async with relay_for(backend.endpoint) as relay:
            r1, w1 = await asyncio.open_connection(*address(relay))
            r2, w2 = await asyncio.open_connection(*address(relay))
            await wait_for(lambda: len(relay.routes[0].active) == 2, what="two admitted")
            shutdown = asyncio.ensure_future(relay.shutdown(grace=1.0))
            w1.write(b"bye")
            w1.write_eof()                       # this one finishes inside the grace period
            assert await read_all(r1) == b"bye"
            cut = await shutdown
            assert cut == 1                      # the idle one was cut
            assert await closed_by_relay(r2)
            with pytest.raises(OSError):          # and nothing listens any more
                await asyncio.open_connection(*address(relay))
            w1.close()
            w2.close()


@linux_only_because("reads the relay's sockets from /proc/self/fd and Linux's TCP_KEEPIDLE / TCP_USER_TIMEOUT "
                    "(Windows sets keepalive through SIO_KEEPALIVE_VALS and TCP_MAXRT: test_platform's plan tests)")
@on_each_loop
async def test_both_legs_get_nodelay_keepalive_and_user_timeout():
    """Read the options back from the relay's real sockets (on Linux the client leg inherits them
    from the listener; this proves it)."""
    from relay.config import Keepalive

    async with Backend(echo) as backend:
        async with relay_for(backend.endpoint, keepalive=Keepalive(idle=7, interval=3, count=4),
                             user_timeout=12.5) as relay:
            reader, writer = await asyncio.open_connection(*address(relay))
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            await _only_splice(relay)
            # the relay's two sockets, wherever they are now (the native pump holds its own copies)
            client_leg = sockets_here(writer.get_extra_info("sockname"))
            upstream_leg = sockets_here((backend.endpoint.host, backend.endpoint.port))
            assert len(client_leg) == 1 and len(upstream_leg) == 1, (client_leg, upstream_leg)
            for side, s in (("client", client_leg[0]), ("upstream", upstream_leg[0])):
                assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1, side
                assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1, side
                assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7, side
                assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3, side
                assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4, side
                assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 12500, side
            for s in client_leg + upstream_leg:
                s.close()
            writer.close()
