import asyncio
import functools
import inspect
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading

import pytest
from hypothesis import HealthCheck, settings

from relay import loops

sys.path.insert(0, os.path.dirname(__file__))

# Relays started by the tests (in-process or as child processes, which inherit this) record
# themselves in a folder of this run's own, never in the user's, so they see only each other.
if not os.environ.get("TWS_RELAY_RUN_DIR"):
    os.environ["TWS_RELAY_RUN_DIR"] = tempfile.mkdtemp(prefix="relay-test-run-")

settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False)
settings.load_profile("ci" if os.environ.get("CI") else "default")

# Every async test runs once per event loop the relay supports here: the default loop (Proactor on
# Windows), and uvloop (Linux, macOS) or winloop (Windows) where installed.
LOOP_KINDS = ["asyncio"] + [name for name, version in loops.installed_versions().items() if version]

# Platform-bound tests skip elsewhere with the reason; whole modules that are Linux by nature:
LINUX_MODULES = {
    "test_vanish": "builds Linux network namespaces",
    "test_e2e_wsl": "builds Linux network namespaces",
    "test_forward": "builds Linux network namespaces and plays WSL (a Linux guest)",
    "test_several_relays": "builds Linux network namespaces",
    "test_autostart": "the WSL side's login start: systemd and ~/.profile",
    "test_kick": "checks POSIX file modes and acts as another user with setpriv",
    "test_readme": "runs the bash scripts (Windows runs the .cmd twins)",
}
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="Linux only: POSIX signals sent to a child process")
windows_only = pytest.mark.skipif(sys.platform != "win32", reason="Windows only: runs the real Windows call")


def linux_only_because(why: str):
    """A test that cannot hold elsewhere, with the reason (the README's Tests section lists them)."""
    return pytest.mark.skipif(not sys.platform.startswith("linux"), reason=f"Linux only: {why}")


def pytest_collection_modifyitems(config, items):
    if sys.platform.startswith("linux"):
        return
    for item in items:
        why = LINUX_MODULES.get(item.module.__name__)
        if why:
            item.add_marker(pytest.mark.skip(reason=f"Linux only: {why}"))


# The official TWS API builds on PyPI each ship a top-level `ibapi`: each goes into a folder of its
# own inside this venv, and a bot runs with that folder first on PYTHONPATH.
OFFICIAL_IBAPI = {"ibapi-latest": "10.51.1", "ibapi-stable": "10.50.2", "nautilus-ibapi": "10.46.1"}


@pytest.fixture(scope="session")
def official_ibapi():
    def path(name: str) -> str:
        folder = os.path.join(sys.prefix, "ibapi-builds", f"{name}-{OFFICIAL_IBAPI[name]}")
        if not os.path.isdir(os.path.join(folder, "ibapi")):
            # protobuf: these builds import google.protobuf without declaring it (nautilus-ibapi)
            r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                "--target", folder, f"{name}=={OFFICIAL_IBAPI[name]}", "protobuf"],
                               capture_output=True, text=True, timeout=600)
            if r.returncode != 0:
                pytest.skip(f"could not install {name} from PyPI: {r.stderr.strip()[-300:]}")
        return folder
    return path


@pytest.fixture(autouse=True)
def relay_logs_at_info(caplog):
    """The relay's records from INFO up reach caplog in every test, as the relay logs by default."""
    caplog.set_level(logging.INFO, logger="relay")


@pytest.fixture(scope="session", params=LOOP_KINDS)
def loop_kind(request):
    return request.param


def on_each_loop(test=None, *, timeout: float = 30):
    """An `async def` test, run to completion by the `run` fixture: once per event loop kind, on a
    fresh loop, a hang turned into a failure after `timeout` seconds."""
    if test is None:
        return lambda t: on_each_loop(t, timeout=timeout)
    signature = inspect.signature(test)

    @functools.wraps(test)
    def sync_test(run, *args, **kwargs):
        return run(test(*args, **kwargs), timeout=timeout)
    run_param = inspect.Parameter("run", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    sync_test.__signature__ = signature.replace(parameters=[run_param, *signature.parameters.values()])
    return sync_test


@pytest.fixture(scope="session")
def run(loop_kind):
    """run(coro, timeout=30): run a coroutine to completion on a fresh loop of this session's kind.
    The timeout turns a hang into a failure instead of a stuck suite."""

    def _run(coro, timeout=30):
        loop = loops.factory(loop_kind)()
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(asyncio.wait_for(coro, timeout))
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()

    return _run


@pytest.fixture
def echo_server():
    """A plain echo server on 127.0.0.1 (a thread per connection, blocking sockets, no event loop): its port."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except socket.timeout:
                continue
            threading.Thread(target=_echo, args=(c,), daemon=True).start()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    thread.join()
    srv.close()


def _echo(c):
    with c:
        while True:
            try:
                data = c.recv(65536)
            except OSError:
                return
            if not data:
                return
            c.sendall(data)


@pytest.fixture
def stand_in_tws():
    """A stand-in TWS process on 127.0.0.1 at a free port: (port, Proc)."""
    from helpers import Proc, free_port
    port = free_port()
    p = Proc([sys.executable, os.path.join(os.path.dirname(__file__), "fake_tws.py"), str(port), "--host", "127.0.0.1"])
    p.wait_line("listening")
    yield port, p
    p.kill()
