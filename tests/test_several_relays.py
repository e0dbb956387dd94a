"""Several relays on one machine, run the way users run them: one one-route relay per port (as
Docker users run socat), every flag left at its default, found from the WSL side with no flags."""
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

from helpers import Proc, listen_port
from netns import HostAndGuest, skip_without_namespaces

HERE = os.path.dirname(__file__)
RELAY = [sys.executable, "-m", "relay"]


def test_one_route_relays_side_by_side_are_all_found_from_wsl_without_flags():
    skip_without_namespaces()
    with HostAndGuest() as net:
        procs = []

        def win(*argv):
            p = Proc(["ip", "netns", "exec", net.win, *argv])
            procs.append(p)
            return p

        def in_wsl(*argv):
            return net.run(net.wsl, [*RELAY, "wsl", *argv], capture_output=True, text=True, timeout=60)

        def stop(p):
            p.proc.send_signal(signal.SIGINT)
            assert p.finish() == 0

        try:
            for port in (7497, 4002):   # TWS paper and IB Gateway paper, both localhost-only
                win(sys.executable, os.path.join(HERE, "fake_tws.py"), str(port)).wait_line("listening")

            # 1. A relay with no discovery answer is still found on its well-known port.
            quiet = win(*RELAY, "serve", "--listen", f"{net.win_ip}:17497", "--target", "127.0.0.1:7497",
                        "--discovery-port", "off")
            quiet.wait_line("ready")
            found = in_wsl("discover")
            assert found.returncode == 0, found.stdout + found.stderr
            assert "tried the well-known relay port(s) 17497, 17496, 14001, 14002" in found.stdout
            assert f"Working path: {net.win_ip}:17497 (route tws-paper)" in found.stdout
            stop(quiet)

            # 2. Two one-route relays on ports nobody would guess, every other flag at its default.
            first = win(*RELAY, "serve", "--listen", f"{net.win_ip}:24001", "--target", "127.0.0.1:7497")
            at_start = first.wait_line("discovery-listening")
            assert at_start.split(" INFO    ")[1] == f"discovery-listening listen={net.win_ip}:17400 routes=tws-paper"
            first.wait_line("ready")
            second = win(*RELAY, "serve", "--listen", f"{net.win_ip}:24002", "--target", "127.0.0.1:4002")
            held = f"another tws-relay (pid {first.proc.pid}, config command line)"
            busy = second.wait_line("status-port-busy")
            assert "port=17401" in busy and held in busy and "listen=127.0.0.1:" in busy
            assert held in second.wait_line("discovery-not-listening")
            second.wait_line("ready")                     # both relays serve; neither stopped

            found = in_wsl("discover", "--json")
            assert found.returncode == 0, found.stdout + found.stderr
            report = json.loads(found.stdout)
            assert (report["best"]["port"], report["route"]) == (24001, "tws-paper")
            listed = {(r["name"], r["port"]) for r in report["routes"][net.win_ip]}
            assert listed == {("tws-paper", 24001), ("gateway-paper", 24002)}
            other = in_wsl("discover", "--route", "gateway-paper")
            assert other.returncode == 0 and f"Working path: {net.win_ip}:24002" in other.stdout, other.stdout

            status = net.run(net.win, [*RELAY, "status"], capture_output=True, text=True, timeout=30)
            assert status.returncode == 0, status.stderr
            for p, port in ((first, 24001), (second, 24002)):
                assert f"pid {p.proc.pid}," in status.stdout and f"{net.win_ip}:{port}" in status.stdout

            # 3. The relay holding the discovery port stops: the other takes it over by itself.
            stop(first)
            taken = second.wait_line("discovery-listening", timeout=10)    # same line as at start
            assert taken.split(" INFO    ")[1] == f"discovery-listening listen={net.win_ip}:17400 routes=gateway-paper"
            after = in_wsl("discover", "--json")
            assert after.returncode == 0, after.stdout
            assert json.loads(after.stdout)["routes"][net.win_ip] == [
                {"name": "gateway-paper", "port": 24002, "target": "127.0.0.1:4002", "target_up": True}]
        finally:
            for p in procs:
                p.kill()


def test_answers_hold_up_under_a_burst_of_500_clients(tmp_path):
    """Every one of 500 clients connecting at once gets the answer: none is left connected on its
    side only (asyncio's default backlog of 100 left 10-29% of them hanging)."""
    relay = Proc(RELAY + ["serve", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9",
                          "--discovery-port", "0", "--status-port", "0", "--log-level", "info"])
    try:
        ports = {"discovery": listen_port(relay.wait_line("discovery-listening")),
                 "status": listen_port(relay.wait_line("status-listening"))}
        relay.wait_line("ready")
        for kind, port in ports.items():
            sel = selectors.DefaultSelector()
            got = {}
            for _ in range(500):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                sel.register(s, selectors.EVENT_READ)
                got[s] = b""
            end = time.monotonic() + 20
            open_ = set(got)
            while open_ and time.monotonic() < end:
                for key, _ in sel.select(timeout=0.5):
                    try:
                        data = key.fileobj.recv(65536)
                    except ConnectionError:
                        data = b""
                    got[key.fileobj] += data
                    if not data:
                        sel.unregister(key.fileobj)
                        open_.discard(key.fileobj)
            answered = [json.loads(v) for v in got.values() if v]
            for s in got:
                s.close()
            assert not open_, f"{kind}: {len(open_)} of 500 clients still hanging after 20 s"
            assert len(answered) == 500, f"{kind}: {500 - len(answered)} of 500 got a close without the answer"
            assert all(doc["service"] == "tws-relay" for doc in answered)
        relay.proc.send_signal(signal.SIGINT)
        assert relay.finish() == 0
    finally:
        relay.kill()


def test_status_port_off_and_a_bad_name_are_plain_flags():
    r = subprocess.run(RELAY + ["serve", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--name", "a b"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and "--name: 'a b' is not a valid name" in r.stderr
    r = subprocess.run(RELAY + ["serve", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--status-port", "x"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and "--status-port" in r.stderr and "(a port, 0-65535) or off, got text 'x'" in r.stderr
    relay = Proc(RELAY + ["serve", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9",
                          "--status-port", "off", "--discovery-port", "off"])
    try:
        relay.wait_line("ready")
        relay.proc.send_signal(signal.SIGINT)
        assert relay.finish() == 0
        assert not any("status-listening" in x or "discovery-listening" in x for x in relay.lines), relay.lines
        assert "name=to-9" in " ".join(relay.lines) or "route=to-9" in " ".join(relay.lines)
    finally:
        relay.kill()
