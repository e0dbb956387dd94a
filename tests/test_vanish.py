"""A client that vanishes without FIN or RST (WSL shut down, laptop asleep) must be noticed so TWS
frees its clientId: by keepalive when the connection is idle, by the user timeout when TWS is
streaming to it (keepalive never fires while data is unacknowledged)."""
import os
import re
import sys
import time

import pytest

from helpers import Proc
from netns import HostAndGuest, skip_without_namespaces

PEERS = os.path.join(os.path.dirname(__file__), "peers.py")


@pytest.mark.parametrize("mode, expect, bound", [
    ("idle", "keepalive: idle 1 s + 2 probes x 1 s", 8.0),
    ("stream", "user timeout 3 s (plus retransmit timer granularity)", 10.0),
])
def test_vanished_client_frees_both_legs(tmp_path, mode, expect, bound):
    skip_without_namespaces()
    with HostAndGuest() as net:
        conf = tmp_path / "relay.yaml"
        conf.write_text(f"""routes:
  - name: paper
    listen: {net.win_ip}:17497
    target: 127.0.0.1:7497
    allow: [{net.subnet}]
keepalive: {{idle: 1, interval: 1, count: 2}}
user_timeout: 3
target_check: off     # the one-shot peer serves a single connection
""")
        procs = []
        try:
            tws = Proc(["ip", "netns", "exec", net.win, sys.executable, PEERS, "server", "7497", mode])
            procs.append(tws)
            tws.wait_line("listening")
            relay = Proc(["ip", "netns", "exec", net.win, sys.executable, "-m", "relay", "serve", "--config", str(conf)])
            procs.append(relay)
            relay.wait_line("ready")
            bot = Proc(["ip", "netns", "exec", net.wsl, sys.executable, PEERS, "client", net.win_ip, "17497"])
            procs.append(bot)
            bot.wait_line("connected")
            tws.wait_line("accepted")
            assert f"peer={net.wsl_ip}:" in relay.wait_line(" open ")   # the real peer is logged
            t0 = time.monotonic()
            net.vanish_guest()
            closed = relay.wait_line(" close ", timeout=bound + 10)
            elapsed = time.monotonic() - t0
            tws.wait_line("closed", timeout=5)          # TWS's side was closed too: clientId freed
            # the kernel gave up on the silent peer: ETIMEDOUT, or its last soft error once the
            # link's neighbour entry failed (EHOSTUNREACH), never a FIN or RST from the client
            assert re.search(r'closed_by="client \((timed out|No route to host)\)"', closed), closed
            assert elapsed < bound, f"{mode}: took {elapsed:.1f}s; expected about {expect}"
            print(f"{mode}: vanished client freed in {elapsed:.1f}s ({expect})")
        finally:
            for p in procs:
                p.kill()
