"""`relay wsl configure` / `discover` as a user runs them, on loopback only (--host 127.0.0.1)."""
import os
import socket
import subprocess
import sys

import pytest

from helpers import Proc, listen_port

HERE = os.path.dirname(__file__)
RELAY = [sys.executable, "-m", "relay"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def relay_and_tws():
    tws_port = free_port()
    tws = Proc([sys.executable, os.path.join(HERE, "fake_tws.py"), str(tws_port), "--host", "127.0.0.1"])
    tws.wait_line("listening")
    relay = Proc(RELAY + ["serve", "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{tws_port}",
                          "--name", "tws-paper", "--discovery-port", "0"])
    line = relay.wait_line("discovery-listening")
    dport = int(line.split("listen=")[1].split()[0].rsplit(":", 1)[1])
    rport = listen_port(relay.wait_line(" listening "))
    yield dport, rport
    relay.kill()
    tws.kill()


def wslcmd(*args, dport):
    return subprocess.run(RELAY + ["wsl", *args, "--host", "127.0.0.1", "--discovery-port", str(dport)],
                          capture_output=True, text=True, timeout=60)


def test_discover_human_output(relay_and_tws):
    dport, rport = relay_and_tws
    r = wslcmd("discover", dport=dport)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Working path: 127.0.0.1:{rport} (route tws-paper)" in r.stdout
    assert "Candidate 127.0.0.1 (--host)" in r.stdout


def test_configure_dry_run_writes_nothing(relay_and_tws, tmp_path):
    dport, rport = relay_and_tws
    env = tmp_path / ".env"
    env.write_text("# bot\nIBKR_PORT=7497\n")
    r = wslcmd("configure", "--env", str(env), "--dry-run", dport=dport)
    assert r.returncode == 0
    assert f"+IBKR_PORT={rport}" in r.stdout and "-IBKR_PORT=7497" in r.stdout and "dry run" in r.stdout
    assert env.read_text() == "# bot\nIBKR_PORT=7497\n"
    assert not (tmp_path / ".env.bak").exists()


def test_configure_creates_missing_file_with_custom_keys(relay_and_tws, tmp_path):
    dport, rport = relay_and_tws
    env = tmp_path / "new.env"
    r = wslcmd("configure", "--env", str(env), "--host-key", "TWS_HOST", "--port-key", "TWS_PORT", dport=dport)
    assert r.returncode == 0 and "(created)" in r.stdout
    assert env.read_text() == f"TWS_HOST=127.0.0.1\nTWS_PORT={rport}\n"


def test_configure_yaml(relay_and_tws, tmp_path):
    dport, rport = relay_and_tws
    conf = tmp_path / "bot.yaml"
    conf.write_text("ibkr:\n  host: 1.2.3.4  # where TWS is\n  port: 7497\nother: true\n")
    r = wslcmd("configure", "--yaml", str(conf), dport=dport)
    assert r.returncode == 0, r.stdout + r.stderr
    assert conf.read_text() == f"ibkr:\n  host: 127.0.0.1  # where TWS is\n  port: {rport}\nother: true\n"


@pytest.mark.parametrize("setup, words", [
    ("folder", "is a folder"),
    ("binary", "not a text file"),
])
def test_configure_refuses_bad_targets_and_writes_nothing(relay_and_tws, tmp_path, setup, words):
    dport, _ = relay_and_tws
    target = tmp_path / "target"
    if setup == "folder":
        target.mkdir()
    else:
        target.write_bytes(b"IBKR_PORT=1\x00\x01")
    before = sorted(os.listdir(tmp_path))
    r = wslcmd("configure", "--env", str(target), dport=dport)
    assert r.returncode == 2 and words in r.stderr and "nothing written" in r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(os.listdir(tmp_path)) == before


def test_configure_never_writes_an_unverified_value(tmp_path):
    env = tmp_path / ".env"
    env.write_text("IBKR_PORT=7497\n")
    dead = free_port()   # nothing listens: discovery is refused
    r = subprocess.run(RELAY + ["wsl", "configure", "--env", str(env), "--host", "127.0.0.1",
                                "--discovery-port", str(dead), "--timeout", "1"], capture_output=True, text=True)
    assert r.returncode == 1 and "nothing written" in r.stderr
    assert "is the relay running" in r.stdout
    assert env.read_text() == "IBKR_PORT=7497\n"
    forced = subprocess.run(RELAY + ["wsl", "configure", "--env", str(env), "--host", "127.0.0.1", "--port",
                                     str(dead), "--no-verify", "--timeout", "1"], capture_output=True, text=True)
    assert forced.returncode == 0 and env.read_text() == f"IBKR_PORT={dead}\nIBKR_HOST_IP=127.0.0.1\n"
