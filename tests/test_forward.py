"""`relay wsl forward`: pure planning on recorded inputs, the local process behind a socket, and
end to end across two namespaces with a real ib_async bot whose code says 127.0.0.1:7497."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import Proc
from netns import HostAndGuest, _ip, skip_without_namespaces
from relay import discovery, hostnet
from relay.wsl import discover as wsl
from relay.wsl.forward import Forward, PlanError, mirrored_verdict, plan

HERE = os.path.dirname(__file__)
RELAY = [sys.executable, "-m", "relay"]


def info(name, port, target):
    return discovery.RouteInfo(name, port, target, True)


def test_each_route_forwards_from_tws_own_port_to_the_relay_port():
    routes = [info("tws-paper", 17497, "127.0.0.1:7497"), info("tws-live", 17496, "127.0.0.1:7496"),
              info("gateway-live", 14001, "127.0.0.1:4001"), info("gateway-paper", 14002, "127.0.0.1:4002"),
              info("to-4011", 24011, "127.0.0.1:4011"),          # any other route: its target's port
              info("paper-copy", 27497, "[::1]:7497")]            # would take 7497 again: left out
    forwards, notes = plan(routes)
    assert forwards == [Forward("tws-paper", 7497, 17497), Forward("tws-live", 7496, 17496),
                        Forward("gateway-live", 4001, 14001), Forward("gateway-paper", 4002, 14002),
                        Forward("to-4011", 4011, 24011)]
    assert notes == ["route paper-copy: local port 7497 already forwards route tws-paper; skipped"]
    # a renamed route whose target is TWS paper still gets 7497
    assert plan([info("my-paper", 17000, "127.0.0.1:7497")])[0] == [Forward("my-paper", 7497, 17000)]
    assert plan(routes, ["gateway-live"])[0] == [Forward("gateway-live", 4001, 14001)]
    with pytest.raises(PlanError, match="no route 'nope'.*it has: tws-paper"):
        plan(routes, ["nope"])
    with pytest.raises(PlanError, match="no TWS port can be read"):
        plan([info("odd", 1, "somewhere")])


def verdict(port, status, version=None):
    return wsl.Verdict("127.0.0.1", port, f"TWS port {port}", status, "", version)


def test_mirrored_mode_says_no_forwarder_is_needed_and_what_to_try_when_loopback_hangs():
    code, lines = mirrored_verdict([verdict(7496, "refused"), verdict(7497, "ok", 176)])
    assert code == 0 and "no forwarder (and no relay) is needed" in lines[0]
    assert lines[1] == "TWS API answers at 127.0.0.1:7497 (server version 176): connect there."
    code, lines = mirrored_verdict([verdict(7497, "timeout"), verdict(4001, "refused")])
    assert code == 1 and "tried 7497 (timeout), 4001 (refused)" in lines[1]
    assert "known WSL mirrored-mode bug" in lines[2] and "hostAddressLoopback=true" in lines[2]
    code, lines = mirrored_verdict([verdict(7497, "refused")])
    assert code == 1 and "API enabled" in lines[2]


def test_the_local_process_behind_a_loopback_client_is_named():
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        with client:
            ip, port = client.getsockname()
            found = hostnet.local_process(ip, port, server.getsockname()[1])
            assert found is not None and found[0] == os.getpid()
            assert "pytest" in found[1] or "python" in found[1]
            assert hostnet.local_process(ip, port + 1, server.getsockname()[1]) is None


def test_unmodified_bot_reaches_tws_through_forwarder_and_relay_and_follows_windows(tmp_path):
    pytest.importorskip("ib_async", reason="ib_async is installed by the test extras (pip install -e .[test])")
    skip_without_namespaces()
    with HostAndGuest() as net:
        conf = tmp_path / "relay.yaml"
        conf.write_text(f"""routes:
  - name: tws-paper
    listen: {{interface: {net.win_if}, port: 17497}}
    target: 127.0.0.1:7497
  - name: gateway-paper
    listen: {{interface: {net.win_if}, port: 14002}}
    target: 127.0.0.1:4002
check_interval: 0.5
""")
        procs = []

        def start(ns, *argv):
            p = Proc(["ip", "netns", "exec", ns, *argv])
            procs.append(p)
            return p

        def bot(*args):
            return net.run(net.wsl, [sys.executable, os.path.join(HERE, "momentum_bot.py"), *args],
                           capture_output=True, text=True, timeout=60)
        try:
            tws = start(net.win, sys.executable, os.path.join(HERE, "fake_tws.py"), "7497")
            tws.wait_line("listening")
            relay = start(net.win, *RELAY, "serve", "--config", str(conf))
            relay.wait_line("ready")
            # a Gateway already runs inside WSL on 4002: that route is reported, the others start
            gateway = start(net.wsl, sys.executable, "-c", "import socket,time\n"
                            "s=socket.create_server(('127.0.0.1',4002)); print('listening', flush=True); time.sleep(600)")
            gateway.wait_line("listening")

            fwd = start(net.wsl, *RELAY, "wsl", "forward")
            assert f"windows={net.win_ip} found_by=\"discovery answer\"" in fwd.wait_line("forwarding")
            assert "listen=127.0.0.1:7497" in fwd.wait_line("listening route=tws-paper")
            taken = fwd.wait_line("bind-failed route=gateway-paper")
            assert "127.0.0.1:4002 is already taken by python" in taken and f"(pid {gateway.proc.pid})" in taken
            fwd.wait_line("ready")

            # the bot's code says 127.0.0.1:7497 and it gets TWS's time back
            held = subprocess.Popen(["ip", "netns", "exec", net.wsl, sys.executable,
                                     os.path.join(HERE, "momentum_bot.py"), "7", "hold"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                line = held.stdout.readline()
                assert line.startswith("time "), line
                assert abs(int(line.split()[1]) - time.time()) < 60
                named = fwd.wait_line(" api-client ")
                assert "client_id=7" in named and f"pid={held.pid}" in named and "momentum_bot.py" in named
                status = net.run(net.wsl, [*RELAY, "status"], capture_output=True, text=True, timeout=30)
                assert "client_id 7" in status.stdout and "momentum_bot.py" in status.stdout, status.stdout
                assert f"pid {held.pid}" in status.stdout
                doctor = net.run(net.wsl, [*RELAY, "doctor", "--side", "wsl"], capture_output=True, text=True,
                                 timeout=60)
                assert "forwarder: pid" in doctor.stdout and "tws-paper 127.0.0.1:7497 (listening)" in doctor.stdout, \
                    doctor.stdout
                peer = relay.wait_line(f"api-start route=tws-paper peer={net.wsl_ip}:")   # the relay sees WSL
                assert "client_id=7" in peer
            finally:
                held.stdin.close()
                held.wait(30)

            # Windows moves (the WSL adapter gets another address): relay and forwarder follow
            n = int(net.win_ip.split(".")[2])
            new_win, new_wsl = f"10.233.{n}.1", f"10.233.{n}.2"
            _ip("-n", net.win, "addr", "add", f"{new_win}/24", "dev", net.win_if)
            _ip("-n", net.win, "addr", "del", f"{net.win_ip}/24", "dev", net.win_if)
            _ip("-n", net.wsl, "addr", "add", f"{new_wsl}/24", "dev", net.wsl_if)
            _ip("-n", net.wsl, "addr", "del", f"{net.wsl_ip}/24", "dev", net.wsl_if)
            _ip("-n", net.wsl, "route", "replace", "default", "via", new_win)
            relay.wait_line(f"new={new_win}", timeout=10)
            moved = fwd.wait_line("windows-moved route=tws-paper", timeout=15)
            assert f"old={net.win_ip}:17497 new={new_win}:17497 state=listening" in moved, moved
            again = bot("8")
            assert again.stdout.startswith("time "), again.stdout + again.stderr
            assert sum("windows-moved route=tws-paper" in x for x in fwd.lines) == 1   # one line per change

            # TWS stops: once the relays notice, a bot is refused at once, not after its 4 s timeout
            downs = sum("target-down route=tws-paper" in x for x in fwd.lines)
            tws.kill()
            fwd.wait_count("target-down route=tws-paper", downs + 1, timeout=15)
            refused = bot("9")
            assert refused.returncode == 3 and refused.stdout.startswith("refused after"), refused.stdout
            assert float(refused.stdout.split()[2]) < 0.1
            # TWS comes back: the forwarder listens again within about a second
            tws = start(net.win, sys.executable, os.path.join(HERE, "fake_tws.py"), "7497")
            tws.wait_line("listening")
            t0 = time.monotonic()
            ups = sum("listening route=tws-paper" in x for x in fwd.lines)
            fwd.wait_count("listening route=tws-paper", ups + 1, timeout=10)
            assert time.monotonic() - t0 < 2.5
            assert bot("10").stdout.startswith("time ")

            fwd.proc.send_signal(signal.SIGINT)
            assert fwd.finish() == 0
        finally:
            for p in procs:
                p.kill()


def test_forward_in_mirrored_mode_exits_without_listening():
    """Mirrored mode, played by a namespace with WSL's fingerprints: a loopback0 interface and
    WSL_DISTRO_NAME. A stand-in TWS on its 127.0.0.1:7497 is Windows' TWS as mirrored mode shows it."""
    skip_without_namespaces()
    with HostAndGuest() as net:
        _ip("-n", net.wsl, "link", "add", "loopback0", "type", "veth", "peer", "name", "lb0peer")
        env = {**os.environ, "WSL_DISTRO_NAME": "Ubuntu"}
        run = lambda: subprocess.run(["ip", "netns", "exec", net.wsl, *RELAY, "wsl", "forward", "--timeout", "1"],
                                     capture_output=True, text=True, timeout=60, env=env)
        r = run()
        assert r.returncode == 1 and "mirrored networking mode" in r.stdout and "Not listening" in r.stdout
        assert "no TWS API answered at 127.0.0.1" in r.stdout
        tws = Proc(["ip", "netns", "exec", net.wsl, sys.executable, os.path.join(HERE, "fake_tws.py"), "7497",
                    "--host", "127.0.0.1"])
        try:
            tws.wait_line("listening")
            r = run()
            assert r.returncode == 0, r.stdout + r.stderr
            assert "TWS API answers at 127.0.0.1:7497 (server version 176): connect there." in r.stdout
        finally:
            tws.kill()
