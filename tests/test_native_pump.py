"""The native pump (Linux): which connections it takes, and what the relay still knows and does
about them once it has them. The byte-level checks are the conformance suite's (test_splice.py)."""
import asyncio
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import time

import pytest

from conftest import on_each_loop
from helpers import Backend, address, echo, native_pump_missing, records, reset, relay_for, wait_for
from relay.config import Endpoint
from relay import native_pump
from tws_sessions import session

MISSING = native_pump_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


async def _tws_then_echo(reader, writer, client: bytes, server: bytes, answer: asyncio.Event) -> None:
    """A stand-in TWS: the opening (the version reply, then the rest once `answer` is set), then echo."""
    assert await reader.readexactly(len(client)) == client
    version_reply = server[:4 + int.from_bytes(server[:4], "big")]   # the first frame
    writer.write(version_reply)
    await answer.wait()
    writer.write(server[len(version_reply):])
    await echo(reader, writer)


async def _handed_over_sessions(relay, n: int) -> list:
    """Open `n` sessions through the relay one after another, each settled by a round trip and in
    the native pump's hands: [(splice, reader, writer)]."""
    route, sessions = relay.routes[0], []
    for _ in range(n):
        reader, writer = await asyncio.open_connection(*address(relay))
        writer.write(b"hi")
        assert await reader.readexactly(2) == b"hi"
        splice = next(s for s in route.active if s not in {x for x, _, _ in sessions})
        sessions.append((splice, reader, writer))
        await wait_for(lambda s=splice: s.native is not None, what="hand-over to the native pump")
    return sessions


@on_each_loop
async def test_a_tws_session_moves_to_the_native_pump_once_tws_accepts_it(caplog):
    client, server, _ = session(176, 7)
    answer = asyncio.Event()
    payload = os.urandom(300_000)

    async with Backend(lambda r, w: _tws_then_echo(r, w, client, server, answer)) as backend:
        async with relay_for(backend.endpoint) as relay:
            route = relay.routes[0]
            reader, writer = await asyncio.open_connection(*address(relay))
            writer.write(client)
            await wait_for(lambda: route.active and next(iter(route.active)).session.server_version == 176,
                           what="TWS's version reply")
            splice = next(iter(route.active))
            await asyncio.sleep(0)   # a hand-over would be scheduled by now: there must be none
            assert splice.native is None and splice.session.phase == "hello", "handed over before TWS answered"
            answer.set()
            assert await reader.readexactly(len(server)) == server
            await wait_for(lambda: splice.native is not None, what="hand-over to the native pump")
            assert splice.session.phase == "api-ready" and splice.session.client_id == 7

            writer.write(payload)
            assert await reader.readexactly(len(payload)) == payload
            # the relay still knows each connection's bytes while the native pump moves them
            status = json.loads(await relay.status_answer())
            assert status["pump"] == "native"
            conn = status["routes"][0]["connections"][0]
            assert (conn["bytes_up"], conn["bytes_down"]) == (len(client) + len(payload), len(server) + len(payload))
            assert conn["client_id"] == 7 and conn["phase"] == "api-ready" and conn["pump"] == "native"

            reset(writer)
            await wait_for(lambda: not route.active, what="the relay to finish the connection")
            close = records(caplog, "close")[-1].fields
            assert close["closed_by"] == "client (reset)"
            assert (close["bytes_up"], close["bytes_down"]) == (len(client) + len(payload), len(server) + len(payload))
            assert close["client_id"] == 7



@on_each_loop
async def test_pump_python_keeps_every_byte_in_the_event_loop():
    async with Backend(echo) as backend:
        async with relay_for(backend.endpoint, tws_aware=False, pump="python") as relay:
            reader, writer = await asyncio.open_connection(*address(relay))
            for _ in range(3):   # round trips: a hand-over, were there one, is scheduled after the first
                writer.write(b"ping")
                assert await reader.readexactly(4) == b"ping"
            splice = next(iter(relay.routes[0].active))
            assert splice.native is None and not splice.handed_over
            assert json.loads(await relay.status_answer())["pump"] == "python"
            writer.close()


@pytest.mark.parametrize("threads", [1, 2, 3])
@on_each_loop
async def test_sessions_spread_over_the_pump_threads_and_stay_exact(threads):
    """Each new session goes to the pump thread with the fewest sessions; a thread is added only
    while every running one is busy and there are fewer than pump_threads."""
    async with Backend(echo) as backend:
        async with relay_for(backend.endpoint, tws_aware=False, pump_threads=threads) as relay:
            route = relay.routes[0]
            streams = await _handed_over_sessions(relay, 4)
            pumps = [splice.native_pump for splice, _, _ in streams]
            assert len(set(pumps)) == threads
            assert sorted(pumps.count(p) for p in set(pumps)) == {1: [4], 2: [2, 2], 3: [1, 1, 2]}[threads]
            assert json.loads(await relay.status_answer())["pump_threads"] >= threads
            payloads = [os.urandom(200_000 + i) for i in range(4)]
            for (_, _, writer), payload in zip(streams, payloads):
                writer.write(payload)
            for (_, reader, _), payload in zip(streams, payloads):
                assert await reader.readexactly(len(payload)) == payload
            assert await relay.shutdown(0) == 4       # each thread cuts its own sessions
            assert not route.active
            for _, reader, writer in streams:
                try:
                    assert await asyncio.wait_for(reader.read(), 5) == b""
                except ConnectionResetError:
                    pass
                writer.close()


class _PumpThreadSleeps:
    """How often this process's native pump threads have gone to sleep (voluntary context switches;
    a yield is not one), read cheaply enough to sample between two round trips."""

    def __init__(self):
        self.fds = []
        for task in glob.glob("/proc/self/task/*"):
            try:
                with open(f"{task}/comm") as comm:
                    if comm.read().strip() == "relay-pump":
                        self.fds.append(os.open(f"{task}/status", os.O_RDONLY))
            except FileNotFoundError:
                pass
        assert self.fds, "no relay-pump thread"

    def __call__(self) -> int:
        return sum(int(re.search(rb"^voluntary_ctxt_switches:\s+(\d+)", os.pread(fd, 4096, 0), re.M).group(1))
                   for fd in self.fds)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


def _round_trip(sock: socket.socket, msg: bytes) -> None:
    sock.sendall(msg)
    got = b""
    while len(got) < len(msg):
        chunk = sock.recv(len(msg) - len(got))
        assert chunk, "the relay closed the connection"
        got += chunk
    assert got == msg


def _quiet_round_trips(sock: socket.socket, round_trips: int, quiet: float, sleeps: _PumpThreadSleeps) -> list:
    """Round trips of 4 bytes on a blocking socket, each after `quiet` seconds without traffic (waited
    out on the clock: time.sleep overshoots by hundreds of microseconds on a VM): for each, the
    longest the pump thread can have waited for it, and how often the thread slept meanwhile. It
    waits twice, for the client's message and then for the answer: the first wait began after the
    previous send, the second after this one. The first round trip's first wait began before this
    call: not bounded (infinite)."""
    cycles, sent = [], float("-inf")
    for i in range(round_trips):
        before = sleeps()
        resume = time.perf_counter() + quiet
        while time.perf_counter() < resume:
            pass
        now = time.perf_counter()
        _round_trip(sock, i.to_bytes(4, "big"))
        cycles.append((max(now - sent, time.perf_counter() - now), sleeps() - before))
        sent = now
    return cycles


@pytest.mark.parametrize("busy_poll", [0, 1000])
@on_each_loop
async def test_busy_poll_keeps_the_pump_thread_awake_between_messages(echo_server, busy_poll):
    """Round trips through the relay, each after 0.2 ms without traffic: without busy polling the
    pump thread sleeps in such pauses; with busy_poll: 1000 it polls on through them and does not
    sleep. Both ends are plain threads on blocking sockets. Judged on 200 round trips where the
    thread cannot have waited 0.9 ms (more round trips where some took longer): where it waited
    longer (the echo thread held up, the machine busy) the window ran out, and it rightly slept."""
    wanted, window = 200, 0.0009

    async with relay_for(Endpoint("127.0.0.1", echo_server), tws_aware=False, pump_threads=1,
                         busy_poll=busy_poll) as relay:
        with socket.create_connection(address(relay)) as client:
            await _busy_poll_cycles(relay, client, busy_poll, wanted, window)


async def _busy_poll_cycles(relay, client, busy_poll: int, wanted: int, window: float) -> None:
    """The busy-poll test's measurement: quiet round trips until `wanted` of them fit in `window`."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, _round_trip, client, b"ping")    # settles the session: hand-over
    splice = next(iter(relay.routes[0].active))
    await wait_for(lambda: splice.native is not None, what="hand-over to the native pump")
    assert splice.native_pump.busy_poll == busy_poll
    assert json.loads(await relay.status_answer())["busy_poll_us"] == busy_poll
    sleeps = _PumpThreadSleeps()
    cycles = []
    try:    # until enough were short, where the machine is busy too
        while sum(waited < window for waited, _ in cycles) < wanted and len(cycles) < 5 * wanted:
            cycles += await loop.run_in_executor(None, _quiet_round_trips, client, 100, 0.0002, sleeps)
    finally:
        sleeps.close()
    short = [slept for waited, slept in cycles if waited < window]
    assert len(short) >= wanted, sorted(round(waited * 1e6) for waited, _ in cycles)[::50]
    slept = sum(1 for n in short if n)
    if busy_poll:
        assert slept < len(short) // 10, (slept, len(short))
    else:     # about once a pause; less where the kernel preempted the thread before it slept
        assert slept >= len(short) // 2, (slept, len(short))


@on_each_loop
async def test_ended_pairs_are_freed_without_a_wake_up_each_and_never_pile_up():
    """The pump thread frees an ended pair with its next command (the next hand-over), or once 64
    of them wait: it is not woken once per closed connection, and memory does not grow with them."""
    async with Backend(echo) as backend:
        async with relay_for(backend.endpoint, tws_aware=False, pump_threads=1, max_connections=200) as relay:
            route = relay.routes[0]
            streams = await _handed_over_sessions(relay, 100)
            pump = streams[0][0].native_pump
            assert pump.pairs_in_memory() == 100
            for splice, _, writer in streams[:10]:
                writer.close()
                await wait_for(lambda s=splice: s not in route.active, what="the relay to finish the connection")
            # a round trip through the same thread: a release that woke it would have run by now
            _, reader, writer = streams[-1]
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            assert pump.pairs_in_memory() == 100, "the thread was woken to free each ended pair"
            for _, _, writer in streams[10:]:
                writer.close()
            await wait_for(lambda: not route.active, what="the relay to finish every connection")
            await wait_for(lambda: pump.pairs_in_memory() < 64, what="the pump thread to free a batch")
            (_, _, writer), = await _handed_over_sessions(relay, 1)   # its hand-over frees the rest
            await wait_for(lambda: pump.pairs_in_memory() == 1, what="the pump thread to free every ended pair")
            writer.close()


def test_shutdown_closes_native_connections_and_logs_them(run, caplog):
    async def main():
        async with Backend(echo) as backend:
            async with relay_for(backend.endpoint, tws_aware=False) as relay:
                route = relay.routes[0]
                reader, writer = await asyncio.open_connection(*address(relay))
                writer.write(b"ping")
                assert await reader.readexactly(4) == b"ping"
                splice = next(iter(route.active))
                await wait_for(lambda: splice.native is not None, what="hand-over to the native pump")
                assert await relay.shutdown(0) == 1
                assert not route.active
                try:
                    assert await asyncio.wait_for(reader.read(), 5) == b""
                except ConnectionResetError:
                    pass                      # cut: a reset is as good as a FIN here
                close = records(caplog, "close")[-1].fields
                assert close["closed_by"] == "relay (shutdown)" and close["bytes_up"] == 4
                writer.close()

        run(main())


@on_each_loop
async def test_a_reader_that_never_reads_is_cut_after_drain_timeout_once_its_peer_is_gone(caplog):
    """Bytes owed to a client get drain_timeout to go; a client that never reads does not hold the
    connection (and its memory) open past it."""
    flooding = asyncio.Event()

    async def flood_then_reset(reader, writer):
        assert await reader.readexactly(1) == b"!"

        async def flood():
            while True:
                writer.write(b"x" * 65536)
                await writer.drain()
        flood_task = asyncio.ensure_future(flood())
        await flooding.wait()
        flood_task.cancel()
        reset(writer)

    async with Backend(flood_then_reset) as backend:
        async with relay_for(backend.endpoint, tws_aware=False, drain_timeout=0.5) as relay:
            route = relay.routes[0]
            loop = asyncio.get_running_loop()
            client = socket.socket()   # never read: a small receive buffer that stays full
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            client.setblocking(False)
            await loop.sock_connect(client, address(relay))
            await loop.sock_sendall(client, b"!")
            await wait_for(lambda: route.active, what="connection to open")
            splice = next(iter(route.active))
            await wait_for(lambda: splice.native is not None, what="hand-over to the native pump")
            await wait_for(lambda: splice.native_pump.counts(splice.native)[3] >= splice.native_pump.marks()[0],
                           what="the relay to hold bytes for the client that does not read")
            flooding.set()
            started = time.monotonic()
            await wait_for(lambda: not route.active, timeout=10, what="the relay to give up on the client")
            took = time.monotonic() - started
            assert 0.4 <= took < 5, f"closed after {took:.2f} s, drain_timeout 0.5 s"
            assert records(caplog, "close")[-1].fields["closed_by"] == "upstream (reset)"
            client.close()



def test_a_pump_thread_that_cannot_start_leaves_the_python_pump_in_charge(run, caplog, monkeypatch):
    """Fault injection: the thread cannot be made (EAGAIN, as pthread_create says under a thread
    limit). Bytes still flow, one warning says why, and the relay reports the Python pump."""
    def cannot_start(self, lib, marks):
        raise OSError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(native_pump.NativePump, "__init__", cannot_start)
    monkeypatch.setattr(native_pump, "_pumps", [])
    monkeypatch.setattr(native_pump, "_failed", None)

    async def main():
        async with Backend(echo) as backend:
            async with relay_for(backend.endpoint, tws_aware=False) as relay:
                for _ in range(2):
                    reader, writer = await asyncio.open_connection(*address(relay))
                    for _ in range(3):
                        writer.write(b"ping")
                        assert await reader.readexactly(4) == b"ping"
                    assert next(iter(relay.routes[0].active)).native is None
                    writer.close()
                    await wait_for(lambda: not relay.routes[0].active, what="the connection to finish")
                assert json.loads(await relay.status_answer())["pump"] == "python"

    run(main())
    warnings = records(caplog, "native-pump-off")
    assert len(warnings) == 1 and warnings[0].fields["error"] == "Resource temporarily unavailable"


def test_a_further_thread_that_cannot_start_leaves_the_running_ones_in_charge(run, caplog, monkeypatch):
    """Fault injection: the first pump thread starts, the second cannot. Both sessions move to the
    running thread, byte-exact, and one warning says so."""
    monkeypatch.setattr(native_pump, "_pumps", [])
    monkeypatch.setattr(native_pump, "_short_of", None)
    real_init = native_pump.NativePump.__init__

    def first_only(self, lib, marks):
        if native_pump._pumps:
            raise OSError(11, "Resource temporarily unavailable")
        real_init(self, lib, marks)
    monkeypatch.setattr(native_pump.NativePump, "__init__", first_only)

    async def main():
        async with Backend(echo) as backend:
            async with relay_for(backend.endpoint, tws_aware=False, pump_threads=2) as relay:
                route = relay.routes[0]
                streams = await _handed_over_sessions(relay, 3)
                assert len({splice.native_pump for splice, _, _ in streams}) == 1
                for _, reader, writer in streams:
                    payload = os.urandom(100_000)
                    writer.write(payload)
                    assert await reader.readexactly(len(payload)) == payload
                    writer.close()
                await wait_for(lambda: not route.active, what="the connections to finish")

    run(main())
    warnings = records(caplog, "native-pump-thread-off")
    assert len(warnings) == 1 and warnings[0].fields["threads"] == 1
    assert not records(caplog, "native-pump-off")


def test_a_library_built_from_older_source_is_not_loaded(tmp_path):
    """A stale _pump*.so (from a checkout of before a new call) must leave the Python pump in charge,
    not fail the import; the library of this source loads."""
    older = tmp_path / "older"
    older.mkdir()
    src = older / "old.c"
    src.write_text("void *relay_pump_start(void) { return 0; }\nint relay_pump_report_fd(void *p) { return -1; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(older / "_pump.so"), str(src)], check=True)
    assert native_pump._load(str(older)) is None
    current = tmp_path / "current"
    current.mkdir()
    shutil.copy(native_pump.available(), current / "_pump.so")
    assert native_pump._load(str(current)) is not None


def test_the_native_pump_runs_with_the_python_pumps_marks(run):
    """One source for the backpressure numbers: pump.py's, handed to each pump thread at its start."""
    from relay import pump

    async def main():
        return native_pump.pump(asyncio.get_running_loop(), (pump.HIGH_WATER, pump.LOW_WATER)).marks()
    assert run(main()) == (pump.HIGH_WATER, pump.LOW_WATER)



@on_each_loop
async def test_a_close_the_pump_cannot_queue_is_asked_again(caplog, monkeypatch):
    """Fault injection: the command queue cannot grow once (relay_pump_close returns -1, as on
    ENOMEM). The kick still closes both legs, on the second try, and the session ends."""
    async with Backend(echo) as backend:
        async with relay_for(backend.endpoint, tws_aware=False) as relay:
            streams = await _handed_over_sessions(relay, 1)
            splice = streams[0][0]
            pump = splice.native_pump
            real, failures = pump.lib, []

            class FailsOnce:
                def __getattr__(self, name):
                    return getattr(real, name)

                def relay_pump_close(self, *args):
                    if not failures:
                        failures.append(args)
                        return -1
                    return real.relay_pump_close(*args)
            monkeypatch.setattr(pump, "lib", FailsOnce())
            splice.abort("relay (kicked)")
            await wait_for(lambda: not relay.routes[0].active, timeout=5, what="the session to end")
            assert len(failures) == 1 and splice.closed_by == "relay (kicked)"
            for _, _, writer in streams:
                writer.close()
