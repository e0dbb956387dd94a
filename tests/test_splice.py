"""The splice's conformance checks, run against every variant on both event loops: TWS-aware
(the default) and plain, each on the native pump where it is built, the native pump polling busily,
and the Python pump."""
import pytest
from hypothesis import given, settings, strategies as st

import conformance
from tws_sessions import session
from conftest import linux_only_because, on_each_loop
from helpers import native_pump_missing, relay_for


def _variant(native: bool, **kw):
    def make(target, **settings):
        return relay_for(target, pump="auto" if native else "python", **{**kw, **settings})
    make.native = native
    return make


VARIANTS = {
    "tws-aware": _variant(True),                     # the default
    "plain": _variant(True, tws_aware=False),
    "busy-poll": _variant(True, busy_poll=200),
    "python-pump": _variant(False),
}


@pytest.fixture(scope="session", params=sorted(VARIANTS))
def make_relay(request):
    make = VARIANTS[request.param]
    missing = native_pump_missing() if make.native else None
    if missing:
        pytest.skip(missing)
    return make


chunks = st.lists(st.binary(min_size=1, max_size=48 * 1024), max_size=6)


@given(up=chunks, down=chunks, order=st.sampled_from(["client-first", "server-first", "both"]))
@settings(max_examples=25)
def test_bytes_exact_any_chunking_and_close_order(run, make_relay, up, down, order):
    run(conformance.check_exact(make_relay, up, down, order), timeout=10)


@on_each_loop
async def test_large_transfer_exact_both_ways(make_relay):
    import random
    rnd = random.Random(7)
    up = [rnd.randbytes(rnd.randint(1, 300_000)) for _ in range(20)]
    down = [rnd.randbytes(rnd.randint(1, 300_000)) for _ in range(20)]
    await conformance.check_exact(make_relay, up, down, "both")


@pytest.mark.parametrize("who_first", ["client", "server"])
@on_each_loop
async def test_half_close_is_forwarded(make_relay, who_first):
    await conformance.check_half_close(make_relay, who_first)


@pytest.mark.parametrize("direction", ["up", "down"])
@on_each_loop
async def test_slow_reader_bounds_memory(make_relay, direction):
    await conformance.check_slow_reader(make_relay, direction)


@pytest.mark.parametrize("how", conformance.CLOSE_HOWS)
@on_each_loop
async def test_close_or_reset_closes_other_leg(make_relay, how):
    await conformance.check_close_propagates(make_relay, how)


@given(version=st.sampled_from([176, 205, 213]), up=chunks, down=chunks,
       cuts=st.lists(st.integers(1, 60), max_size=5))
@settings(max_examples=25)
def test_tws_session_bytes_exact_while_the_opening_is_read(run, make_relay, version, up, down, cuts):
    """A real TWS opening split anywhere, then arbitrary bytes: nothing is changed or delayed away."""
    client, server, _ = session(version, 11)
    pieces = []
    last = 0
    for c in sorted(set(min(c, len(client)) for c in cuts)):
        pieces.append(client[last:c])
        last = c
    pieces.append(client[last:])
    run(conformance.check_exact(make_relay, [p for p in pieces if p] + up, [server] + down, "both"), timeout=10)


@pytest.mark.parametrize("tws_aware", [True, False])
def test_an_upstream_reset_right_after_its_connect_ends_the_session_cleanly(run, caplog, tws_aware):
    """TWS flapping: the upstream accepts and resets at once while the client's first bytes wait to
    go up. Whatever order the loop sees the connect and the reset in, the session ends with the
    upstream named and no traceback (uvloop raises on a write to a closed transport)."""
    import asyncio
    import logging
    import socket
    import struct
    import threading
    from helpers import records, wait_for
    from relay.config import Endpoint

    flapping = socket.create_server(("127.0.0.1", 0))

    def accept_and_reset():       # its own thread: the reset is out before the relay's loop looks
        while True:
            try:
                sock, _ = flapping.accept()
            except OSError:
                return
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
    thread = threading.Thread(target=accept_and_reset, daemon=True)
    thread.start()

    async def main():
        async with relay_for(Endpoint("127.0.0.1", flapping.getsockname()[1]), tws_aware=tws_aware) as relay:
            host, port = relay.routes[0].address.host, relay.routes[0].address.port
            n = 500
            for i in range(n):
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(b"API\0" + b"x" * 64)          # held until the upstream connects
                if i % 2:
                    writer.write_eof()                       # and a FIN to pass on as well
                try:
                    await reader.read()
                except ConnectionError:
                    pass
                writer.close()
            await wait_for(lambda: len(records(caplog, "close")) == n, what="every session's close line")
        return [r.fields["closed_by"] for r in records(caplog, "close")], len(records(caplog, "upstream-failed"))
    try:
        with caplog.at_level(logging.INFO):
            closed_by, connects_failed = run(main(), timeout=60)
    finally:
        flapping.shutdown(socket.SHUT_RDWR)
        flapping.close()
        thread.join()
    # the upstream named; "relay" where its connect itself failed (reset during the connect), with
    # an upstream-failed line each; "client" where the client's FIN came first
    assert all(c in ("relay", "client") or c.startswith("upstream") for c in closed_by), set(closed_by)
    assert closed_by.count("relay") <= connects_failed
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, bad[0].getMessage()


@linux_only_because("finds the relay's socket through /proc/self/fd to shrink its send buffer")
@on_each_loop
async def test_drain_timeout_cuts_a_client_that_never_takes_what_it_is_owed(make_relay):
    await conformance.check_drain_timeout(make_relay)
