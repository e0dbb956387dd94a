"""Real loopback peers for the relay's tests: backends, a relay started in-process, small waits."""
import asyncio
import contextlib
import os
import queue
import socket
import subprocess
import sys
import struct
import threading
import time
from typing import AsyncContextManager, AsyncIterator, Awaitable, Callable, List, Optional

from relay.config import Config, Endpoint, Route, Settings
from relay.service import Relay

import tws_sessions

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
# How soon a connect to a port nobody listens on is refused on loopback: at once on Linux; Windows
# retries the SYN for about 2 s before it reports the refusal.
REFUSED_WITHIN = 2.5 if sys.platform == "win32" else 0.1


class Backend:
    """A TCP server on 127.0.0.1 running `handler` per connection and counting connections."""

    def __init__(self, handler: Handler):
        self.handler = handler
        self.server: Optional[asyncio.AbstractServer] = None
        self.accepted = 0
        self.finished = 0
        self.done = asyncio.Event()   # set every time a handler returns
        self.errors: List[BaseException] = []

    async def __aenter__(self) -> "Backend":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader, writer) -> None:
        self.accepted += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, OSError) as e:
            self.errors.append(e)
        finally:
            writer.close()
            self.finished += 1
            self.done.set()

    async def wait_finished(self, n: int, timeout: float = 10) -> None:
        async def _wait():
            while self.finished < n:
                self.done.clear()
                await self.done.wait()
        await asyncio.wait_for(_wait(), timeout)


async def echo(reader, writer) -> None:
    while True:
        data = await reader.read(65536)
        if not data:
            break
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


def settings(**kw) -> Settings:
    # connect_timeout: a loopback connect is not what these tests time. Under ThreadSanitizer in CI a
    # Python-pump conformance check once saw its upstream connect outlast 2 s (upstream-failed "timed
    # out", then no backpressure to wait for); tests of the timeout itself set their own.
    base = dict(connect_timeout=10.0, shutdown_grace=1.0, drain_timeout=2.0, discovery_port=None, status_port=None,
                target_check="off")
    base.update(kw)
    return Settings(**base)


@contextlib.asynccontextmanager
async def running(relay: Relay) -> AsyncIterator[Relay]:
    """`relay` started, and shut down (grace 0) however the block ends, so a failed assertion does
    not leave its listeners, timers and sessions to the next test."""
    await relay.start()
    try:
        yield relay
    finally:
        await relay.shutdown(0)


def relay_for(target: Endpoint, *, allow=None, max_connections: int = 32, listen: str = "127.0.0.1",
              name: str = "test", if_addrs: Optional[dict] = None, **kw) -> AsyncContextManager[Relay]:
    """One route to `target` on a free port of `listen`, with the tests' settings, running for the
    block (see `running`)."""
    route = Route(name=name, listen=Endpoint(listen, 0), target=target, allow=allow, max_connections=max_connections)
    config = Config(routes=(route,), settings=settings(**kw))
    return running(Relay(config, if_addrs=if_addrs if if_addrs is not None else {}))


def listen_port(line: str) -> int:
    """The port of a log line's `listen=HOST:PORT` (a relay started on port 0 says which it took)."""
    return int(line.split("listen=")[1].split()[0].rsplit(":", 1)[1])


def address(relay: Relay, i: int = 0):
    a = relay.routes[i].address
    return a.host, a.port


async def wait_for(predicate: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    """Poll a condition on the event loop (cheap, bounded); fail with `what` if it never holds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


def wait_until(predicate: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    """wait_for for code outside an event loop: poll a condition (cheap, bounded)."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


async def read_all(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while True:
        data = await reader.read(1 << 16)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    writer.transport.abort()


def open_fds() -> int:
    """This process's open descriptors (handles on Windows), through psutil on every OS."""
    import psutil
    me = psutil.Process()
    return me.num_handles() if hasattr(me, "num_handles") else me.num_fds()


def records(caplog, name: str) -> list:
    """The relay's log records of one event (`event(...)` name), in order."""
    return [r for r in caplog.records if r.getMessage() == name]


def native_pump_missing() -> Optional[str]:
    """Why the native pump cannot be tested here, or None when it can. CI's Linux builds it, so
    there its absence fails the test that asks instead of skipping it."""
    from relay import native_pump
    if native_pump.available():
        return None
    if not sys.platform.startswith("linux"):
        return "the native pump is Linux only (epoll); this platform always runs the Python pump"
    assert not os.environ.get("CI"), "CI on Linux must build the native pump (is gcc installed?)"
    return "the native pump was not built: no C compiler when the package was installed"


def sockets_here(peer) -> List[socket.socket]:
    """This process's TCP sockets connected to `peer` (host, port), whoever holds them (an asyncio
    transport or the native pump): duplicates to read options from; close them after."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = os.dup(int(name))
        except OSError:
            continue                       # the listing's own descriptor, closed by now
        try:
            s = socket.socket(fileno=fd)
        except OSError:                    # not a socket: close the duplicate, or it leaks
            os.close(fd)
            continue
        try:
            if s.type == socket.SOCK_STREAM and s.getpeername()[:2] == tuple(peer):
                found.append(s)
                continue
        except OSError:
            pass
        s.close()
    return found


def tcp_states(ports) -> List[str]:
    """TCP states of this machine's sockets whose local port is in `ports`, through psutil on
    every OS ('ESTABLISHED', 'CLOSE_WAIT', 'LISTEN', 'TIME_WAIT', ...)."""
    import psutil
    return [c.status for c in psutil.net_connections(kind="tcp") if c.laddr and c.laddr.port in ports]


class Proc:
    """A child process whose output lines are collected as they come, for waiting on log lines."""

    def __init__(self, argv, cwd=None):
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: List[str] = []
        self.q: "queue.Queue" = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def _pull(self, end: float, waiting_for: str) -> str:
        """The next output line, or an AssertionError naming what was awaited."""
        try:
            line = self.q.get(timeout=max(0.0, end - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"timed out waiting for {waiting_for}; got:\n" + "\n".join(self.lines)) from None
        if line is None:
            self.q.put(None)
            raise AssertionError(f"process exited before {waiting_for}:\n" + "\n".join(self.lines))
        self.lines.append(line)
        return line

    def wait_line(self, needle: str, timeout: float = 10) -> str:
        """The first line (already seen or still to come) containing `needle`."""
        for line in self.lines:
            if needle in line:
                return line
        end = time.monotonic() + timeout
        while True:
            line = self._pull(end, f"a line with {needle!r}")
            if needle in line:
                return line

    def wait_count(self, needle: str, n: int, timeout: float = 10) -> None:
        """Wait until `needle` has appeared in `n` lines."""
        end = time.monotonic() + timeout
        while sum(needle in line for line in self.lines) < n:
            self._pull(end, f"{n} lines with {needle!r}")

    def finish(self, timeout: float = 10) -> int:
        rc = self.proc.wait(timeout)
        while True:
            line = self.q.get(timeout=5)
            if line is None:
                self.q.put(None)
                return rc
            self.lines.append(line)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -- a relay.yaml and a bot session for the CLI tests

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path, tws_port, **extra):
    ports = {"listen": free_port(), "discovery": free_port(), "status": free_port()}
    conf = tmp_path / "relay.yaml"
    conf.write_text(f"routes:\n  - name: tws-paper\n    listen: 127.0.0.1:{ports['listen']}\n"
                    f"    target: 127.0.0.1:{tws_port}\n"
                    f"discovery_port: {ports['discovery']}\nstatus_port: {ports['status']}\n"
                    + "".join(f"{k}: {v}\n" for k, v in extra.items()))
    return conf, ports


def bot_session(port, client_id):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(tws_sessions.client_hello(157, 178))
    size = struct.unpack(">I", s.recv(4))[0]
    s.recv(size)
    s.sendall(tws_sessions.start_api(176, client_id))
    s.recv(4096)       # managedAccounts / nextValidId: the session is up
    return s
