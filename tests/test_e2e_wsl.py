"""The seed's machine, end to end: a "windows" namespace runs a stand-in TWS (localhost-only: it
resets non-local peers) and the relay on the veth address; a "wsl" namespace runs the helper,
which discovers the relay and writes .env, and a real ib_async bot that reads it and gets the time."""
import json
import os
import sys
import time

import pytest

from helpers import Proc
from netns import HostAndGuest, skip_without_namespaces

HERE = os.path.dirname(__file__)
RELAY = [sys.executable, "-m", "relay"]

SEED_ENV = """# IBKR Connection Settings (Canonical WSL Fix)
IBKR_HOST_IP=172.24.32.1          # Primary (default gateway)
IBKR_HOST_IP_ALT=10.255.255.254   # Alternative (nameserver)
IBKR_PORT=7497
IBKR_CLIENT_ID=1
"""

DIRECT = """
import socket, sys
try:   # the reset can come during connect, send or receive: each is the seed's error
    s = socket.create_connection((sys.argv[1], 7497), timeout=5)
    s.sendall(b"API\\0\\0\\0\\0\\tv157..178")
    print("answered" if s.recv(100) else "closed")
except (ConnectionResetError, BrokenPipeError) as e:
    print("reset:", e)
"""


def test_wsl_bot_reaches_localhost_only_tws_through_relay(tmp_path):
    pytest.importorskip("ib_async", reason="ib_async is installed by the test extras (pip install -e .[test])")
    skip_without_namespaces()
    with HostAndGuest() as net:
        conf = tmp_path / "relay.yaml"
        conf.write_text(f"routes:\n  - name: tws-paper\n    listen: {net.win_ip}:17497\n"
                        f"    target: 127.0.0.1:7497\n")            # default allowlist: loopback + veth subnet
        env = tmp_path / ".env"
        env.write_text(SEED_ENV)
        procs = []

        def win(*argv):
            p = Proc(["ip", "netns", "exec", net.win, *argv])
            procs.append(p)
            return p

        def in_wsl(*argv, timeout=60):
            return net.run(net.wsl, list(argv), capture_output=True, text=True, timeout=timeout)
        try:
            tws = win(sys.executable, os.path.join(HERE, "fake_tws.py"), "7497")
            tws.wait_line("listening")
            # as in the seed: straight to TWS from WSL is reset
            direct = in_wsl(sys.executable, "-c", DIRECT, net.win_ip)
            assert direct.stdout.startswith("reset:"), direct.stdout + direct.stderr
            relay = win(*RELAY, "serve", "--config", str(conf))
            relay.wait_line("ready")
            assert net.subnet in relay.wait_line("listening")

            found = in_wsl(*RELAY, "wsl", "discover", "--json")
            assert found.returncode == 0, found.stdout + found.stderr
            report = json.loads(found.stdout)
            assert report["situation"]["candidates"][0] == {"host": net.win_ip, "source": "default gateway"}
            assert any("10.255.255.254" in n for n in report["situation"]["notes"])
            assert (report["best"]["host"], report["best"]["port"], report["route"]) == (net.win_ip, 17497, "tws-paper")

            told = in_wsl(*RELAY, "wsl", "discover", "--port", "7497")    # pointing at TWS itself
            assert told.returncode == 1 and "reached TWS directly" in told.stdout

            done = in_wsl(*RELAY, "wsl", "configure", "--env", str(env))
            assert done.returncode == 0, done.stdout + done.stderr
            assert env.read_text() == SEED_ENV.replace("IBKR_HOST_IP=172.24.32.1 ", f"IBKR_HOST_IP={net.win_ip} ") \
                .replace("IBKR_PORT=7497", "IBKR_PORT=17497")
            assert (tmp_path / ".env.bak").read_text() == SEED_ENV
            again = in_wsl(*RELAY, "wsl", "configure", "--env", str(env))
            assert again.returncode == 0 and "nothing changed" in again.stdout

            bot = in_wsl(sys.executable, os.path.join(HERE, "bot.py"), str(env), "7")
            assert bot.returncode == 0, bot.stdout + bot.stderr
            epoch = int(bot.stdout.split("time ")[1].split()[0])
            assert abs(epoch - time.time()) < 60
            opened = relay.wait_line(f"peer={net.wsl_ip}:")           # the relay logs the real peer
            assert "route=tws-paper" in opened
            started = relay.wait_line(" api-start ")                   # and which bot it is
            assert f"peer={net.wsl_ip}:" in started and "client_id=7 server_version=176" in started
        finally:
            for p in procs:
                p.kill()
