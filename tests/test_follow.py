"""The Windows side: picking the WSL adapter (recorded Windows-shaped data), following a real
interface that appears, changes and disappears (in a namespace), and not listening while the
target is down (a real target that goes down and comes back)."""
import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import namedtuple

import pytest

from conftest import on_each_loop
from helpers import REFUSED_WITHIN, Proc, echo, records, relay_for, running, wait_for
from netns import HostAndGuest, _ip, skip_without_namespaces
from relay import hostnet
from relay.config import Endpoint

HERE = os.path.dirname(__file__)
Addr = namedtuple("snicaddr", "family address netmask broadcast ptp")
Stats = namedtuple("snicstats", "isup duplex speed mtu flags")
UP, DOWN = Stats(True, 0, 0, 1500, ""), Stats(False, 0, 0, 1500, "")


def v4(address, mask="255.255.240.0"):
    return Addr(socket.AF_INET, address, mask, None, None)


LAN = {"Ethernet": [v4("192.168.1.20", "255.255.255.0")]}
DEFAULT_SWITCH = {"vEthernet (Default Switch)": [v4("172.29.64.1")]}


@pytest.mark.parametrize("if_addrs, stats, expect", [
    ({**LAN}, {}, None),                                                                   # WSL not started yet
    ({**LAN, **DEFAULT_SWITCH}, {}, None),                                                 # never Hyper-V's switch
    ({**LAN, "vEthernet (WSL)": [v4("172.24.32.1")]}, {"vEthernet (WSL)": UP}, ("vEthernet (WSL)", "172.24.32.1")),
    ({"vEthernet (WSL (Hyper-V firewall))": [v4("172.31.250.1")]}, {}, ("vEthernet (WSL (Hyper-V firewall))",
                                                                        "172.31.250.1")),   # renamed (WSL 2.x)
    ({"vEthernet (WSL)": [v4("172.24.32.1")], "vEthernet (WSL (Hyper-V firewall))": [v4("172.31.250.1")]},
     {"vEthernet (WSL)": UP, "vEthernet (WSL (Hyper-V firewall))": DOWN}, ("vEthernet (WSL)", "172.24.32.1")),
    ({"vEthernet (WSL)": [], "vEthernet (WSL (Hyper-V firewall))": [v4("172.31.250.1")]},
     {}, ("vEthernet (WSL (Hyper-V firewall))", "172.31.250.1")),                          # one has no address
    ({"vethernet (wsl)": [v4("172.20.16.1")]}, {}, ("vethernet (wsl)", "172.20.16.1")),    # case differs
])
def test_wsl_adapter_is_picked_from_windows_shaped_data(if_addrs, stats, expect):
    found = hostnet.find_adapter("wsl", if_addrs, stats)
    assert (found.name, found.address) == expect if expect else found is None


def test_address_change_is_seen_between_two_polls():
    before = hostnet.find_adapter("wsl", {"vEthernet (WSL)": [v4("172.24.32.1")]}, {})
    after = hostnet.find_adapter("wsl", {"vEthernet (WSL)": [v4("172.27.128.1")]}, {})   # after a VPN clash
    assert (before.address, str(before.network)) == ("172.24.32.1", "172.24.32.0/20")
    assert (after.address, str(after.network)) == ("172.27.128.1", "172.27.128.0/20")


def test_adapter_subnet_becomes_the_default_allowlist_and_named_adapters_match_exactly():
    a = hostnet.find_adapter("wsl", {"vEthernet (WSL)": [v4("172.24.32.1")]}, {})
    assert [str(n) for n in hostnet.adapter_default_allow(a)] == ["127.0.0.0/8", "::1/128", "172.24.32.0/20"]
    assert hostnet.find_adapter("Ethernet", {**LAN, "Ethernet 2": [v4("10.0.0.2")]}, {}).address == "192.168.1.20"
    assert hostnet.find_adapter("Ethernet 3", LAN, {}) is None


# -- fail fast while the target is down (real target on loopback)

async def attempt(port):
    """(outcome, seconds): 'ok' if a connection was accepted and works, else 'refused'/'closed'."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return "refused", loop.time() - t0
    try:
        writer.write(b"ping")
        got = await asyncio.wait_for(reader.readexactly(4), 2)
        return ("ok" if got == b"ping" else "closed"), loop.time() - t0
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
        return "closed", loop.time() - t0
    finally:
        writer.close()


def test_downed_target_means_refused_at_once_and_back_within_a_second(run, caplog):
    async def main():
        backend = await asyncio.start_server(echo, "127.0.0.1", 0)
        tport = backend.sockets[0].getsockname()[1]
        async with relay_for(Endpoint("127.0.0.1", tport), target_check="connect") as relay:  # default intervals
            route = relay.routes[0]
            rport = route.address.port
            assert (await attempt(rport))[0] == "ok"
            backend.close()                                       # TWS goes down (its daily restart)
            await backend.wait_closed()
            await wait_for(lambda: route.state == "target-down", timeout=5, what="route to notice")
            outcome, took = await attempt(rport)
            assert outcome == "refused" and took < REFUSED_WITHIN, (outcome, took)
            backend = await asyncio.start_server(echo, "127.0.0.1", tport, reuse_address=True)   # TWS is back
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            while (await attempt(rport))[0] != "ok":
                assert loop.time() - t0 < 3, "route did not come back"
                await asyncio.sleep(0.05)
            back = loop.time() - t0
            assert back < 1.5, f"first client got through after {back:.2f}s"
            downs = [r for r in caplog.records if r.getMessage() == "target-down"]
            ups = [r for r in caplog.records if r.getMessage() == "listening"]
            assert len(downs) == 1 and len(ups) == 2            # one line per transition
        backend.close()
        return back
    back = run(main(), timeout=30)
    print(f"route back {back:.2f}s after the target")


@on_each_loop
async def test_refused_upstream_wakes_the_check_at_once():
    backend = await asyncio.start_server(echo, "127.0.0.1", 0)
    tport = backend.sockets[0].getsockname()[1]
    async with relay_for(Endpoint("127.0.0.1", tport), target_check="connect", check_interval=60) as relay:
        route = relay.routes[0]
        backend.close()
        await backend.wait_closed()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert (await attempt(route.address.port))[0] == "closed"   # this one was accepted: TWS just died
        await wait_for(lambda: route.state == "target-down", timeout=5, what="target-down")
        assert loop.time() - t0 < 1.5                                  # not the 60 s interval


@on_each_loop
async def test_target_down_at_start_still_validates_the_address_then_waits():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    tport = s.getsockname()[1]
    s.close()
    async with relay_for(Endpoint("127.0.0.1", tport), target_check="connect") as relay:
        assert relay.routes[0].state == "target-down" and relay.routes[0].server is None


# -- following a real interface (inside a namespace: the relay, the target and the clients)

def test_relay_follows_an_interface_that_appears_changes_and_disappears(tmp_path):
    skip_without_namespaces()
    with HostAndGuest() as net:
        ns, dev = net.win, "rad" + net.win[-6:]
        base = net.win_ip.rsplit(".", 2)[0].replace("10.231", "10.232")
        first, second = f"{base}.{net.win_ip.split('.')[2]}.1", f"{base}.{net.win_ip.split('.')[2]}.5"
        conf = tmp_path / "relay.yaml"
        conf.write_text(f"""routes:
  - name: paper
    listen: {{interface: {dev}, port: 17497}}
    target: 127.0.0.1:7497
check_interval: 0.5
discovery_port: false
status_port: false
""")
        procs = []

        def start(*argv):
            p = Proc(["ip", "netns", "exec", ns, *argv])
            procs.append(p)
            return p

        def try_at(host):
            return net.run(ns, [sys.executable, os.path.join(HERE, "peers.py"), "try", host, "17497"],
                           capture_output=True, text=True, timeout=20).stdout.strip()
        try:
            start(sys.executable, os.path.join(HERE, "fake_tws.py"), "7497", "--host", "127.0.0.1").wait_line("listening")
            relay = start(sys.executable, "-m", "relay", "serve", "--config", str(conf))
            relay.wait_line("waiting-for-adapter")                       # said once, at start
            # WSL starts: its adapter appears (a veth pair: this kernel has no dummy devices)
            _ip("-n", ns, "link", "add", dev, "type", "veth", "peer", "name", dev + "p")
            _ip("-n", ns, "addr", "add", f"{first}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev + "p", "up")
            _ip("-n", ns, "link", "set", dev, "up")
            t0 = time.monotonic()
            assert f"listen={first}:17497" in relay.wait_line(" listening ", timeout=5)
            assert time.monotonic() - t0 < 3
            assert f"{base}.{net.win_ip.split('.')[2]}.0/24" in relay.wait_line(" listening ")   # allowlist follows
            assert try_at(first) == "ok"
            holder = start(sys.executable, os.path.join(HERE, "peers.py"), "hold", first, "17497")
            holder.wait_line("connected")
            relay.wait_line(" open ")

            _ip("-n", ns, "addr", "del", f"{first}/24", "dev", dev)     # the address changes
            _ip("-n", ns, "addr", "add", f"{second}/24", "dev", dev)
            changed = relay.wait_line("address-changed", timeout=5)
            assert f"old={first}" in changed and f"new={second}" in changed and "connections_cut=1" in changed
            # the relay closed both legs of the old connection (TWS side freed); the holder itself cannot
            # hear of it: its own address vanished with the old one, as a WSL guest's would
            cut = relay.wait_line('closed_by="relay (address changed)"', timeout=5)
            assert f"peer={first}:" in cut
            relay.wait_line(f"listen={second}:17497", timeout=5)
            assert try_at(second) == "ok"

            _ip("-n", ns, "link", "del", dev)                           # wsl --shutdown
            relay.wait_line("adapter-gone", timeout=5)
            relay.wait_count("waiting-for-adapter", 2, timeout=5)       # said once per wait, not per poll
            assert try_at(second) != "ok"
            assert sum("waiting-for-adapter" in line for line in relay.lines) == 2
        finally:
            for p in procs:
                p.kill()


@on_each_loop
async def test_an_adapter_address_that_a_route_targets_keeps_that_route_from_listening(caplog, monkeypatch):
    """Known only at run time: the adapter's address is where a route listens, and a route's target
    (its own, or another's) points there. Those routes do not listen, each says why once; the
    others are not affected."""
    from helpers import free_port, settings
    from relay.config import Config, Route
    from relay.service import Relay
    port = free_port()
    monkeypatch.setattr(hostnet, "interfaces", lambda: {"fake0": [v4("127.0.0.2", "255.0.0.0")]})
    monkeypatch.setattr(hostnet, "interface_stats", lambda: {})

    backend = await asyncio.start_server(echo, "127.0.0.1", 0)
    tws = Endpoint("127.0.0.1", backend.sockets[0].getsockname()[1])
    routes = (Route("self", Endpoint("", port), Endpoint("127.0.0.2", port), interface="fake0"),
              Route("feeds", Endpoint("127.0.0.1", 0), Endpoint("127.0.0.2", port)),
              Route("fine", Endpoint("127.0.0.1", 0), tws))
    async with running(Relay(Config(routes, settings(target_check="connect")))) as relay:
        await relay.tick()
        await relay.tick()
        this, feeds, fine = relay.routes
        assert this.state == feeds.state == "target-is-this-relay" and this.server is None and feeds.server is None
        assert fine.state == "listening" and (await attempt(fine.address.port))[0] == "ok"
        for host, p in (("127.0.0.2", port), ("127.0.0.1", feeds.address.port)):
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(host, p)
        lines = {r.fields["route"]: r for r in caplog.records if r.getMessage() == "target-is-this-relay"}
        assert len(lines) == 2 == len([r for r in caplog.records if r.getMessage() == "target-is-this-relay"])
        assert lines["self"].levelno == logging.ERROR and "its own listen address" in lines["self"].fields["error"]
        assert "where route 'self' listens" in lines["feeds"].fields["error"]
        assert lines["feeds"].fields["listener"] == "self"
        status = json.loads(await relay.status_answer())
        assert [r["state"] for r in status["routes"]] == ["target-is-this-relay"] * 2 + ["listening"]
    backend.close()


# -- a listener that stops under the relay (the Proactor loop closes it after a failed accept,
#    cpython#93821; here the same condition is made with `ss -K`, which destroys the socket)

def ss_kill(port: int) -> None:
    r = subprocess.run(["ss", "-K", "state", "listening", "src", f"127.0.0.1:{port}"], capture_output=True, text=True)
    assert r.returncode == 0 and f":{port}" in r.stdout, r.stdout + r.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("ss") is None,
                    reason="Linux only: destroys a listening socket with ss -K (iproute2)")
@pytest.mark.parametrize("which", ["route", "status", "control", "discovery"])
def test_a_listener_destroyed_under_the_relay_is_said_once_and_bound_again(run, caplog, which):
    async def main():
        backend = await asyncio.start_server(echo, "127.0.0.1", 0)
        async with relay_for(Endpoint("127.0.0.1", backend.sockets[0].getsockname()[1]), check_interval=0.3,
                             status_port=0, discovery_port=0) as relay:
            route = relay.routes[0]
            server = {"route": route, "status": relay.status, "control": relay.control,
                      "discovery": relay.discovery[0][0] if relay.discovery else None}[which]
            port = route.address.port if which == "route" else server.port
            loop = asyncio.get_running_loop()
            ss_kill(port)
            t0 = loop.time()
            if which == "route":
                assert json.loads(await relay.status_answer())["routes"][0]["state"] == "listener-lost"
                await wait_for(lambda: records(caplog, "listener-lost") and route.server is not None
                               and route.state == "listening", timeout=5, what="the route listening again")
                assert (await attempt(port))[0] == "ok"
            else:
                await wait_for(lambda: records(caplog, f"{which}-listener-lost") and server.server is not None
                               and hostnet.listener_problem(server.server) is None, timeout=5,
                               what="the lost line, then listening again")
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                if which == "control":
                    writer.write(b"{}\n")                           # answered with a refusal
                assert await asyncio.wait_for(reader.read(), 5)      # the status or discovery document
                writer.close()
            assert loop.time() - t0 < 0.3 + 1.0                     # within one check interval (and a margin)
            lost = records(caplog, "listener-lost" if which == "route" else f"{which}-listener-lost")
            assert len(lost) == 1 and lost[0].fields["error"].startswith("the socket no longer listens")
            assert len(records(caplog, "loop-error")) <= 3           # the spinning loop's reports, rate-limited
            if which == "control":
                assert json.load(open(relay.record))["control_port"] == relay.control.port
        backend.close()
    with caplog.at_level(logging.INFO):
        run(main())


def test_a_failed_accept_on_the_proactor_loop_wakes_the_supervisor_in_one_line(run, caplog):
    """As the Proactor loop reports it when a client resets while Windows accepts it (WinError 64),
    then closes the listening socket for good (cpython#93821): recorded context, fed to the handler."""
    async def main():
        async with relay_for(Endpoint("127.0.0.1", 9)) as relay:
            relay.wake.clear()
            error = OSError(22, "The specified network name is no longer available")
            context = {"message": "Accept failed on a socket", "exception": error,
                       "socket": "<asyncio.TransportSocket fd=-1, family=2, type=1, proto=6>"}
            for _ in range(20):
                asyncio.get_running_loop().call_exception_handler(context)
            assert relay.wake.is_set() and "no longer available" in relay.accept_error
    with caplog.at_level(logging.INFO):
        run(main())
    lines = records(caplog, "loop-error")
    assert len(lines) == 3 and not any(r.exc_info for r in lines)
    assert lines[0].fields == {"message": "Accept failed on a socket",
                               "error": "The specified network name is no longer available"}


def test_the_loop_library_logs_in_the_relays_format():
    import io
    from relay import logs
    out = io.StringIO()
    logs.setup("info", "text", stream=out)
    try:
        logging.getLogger("asyncio").warning("socket.send() raised exception.")
        logging.getLogger("asyncio").debug("a debug line the relay does not want")
    finally:
        for name in ("relay", "asyncio"):
            logging.getLogger(name).handlers[:] = []
            logging.getLogger(name).propagate = True
        logging.getLogger("asyncio").setLevel(logging.NOTSET)
    (line,) = out.getvalue().splitlines()
    assert line.split()[2:] == ["WARNING", "socket.send()", "raised", "exception."]
