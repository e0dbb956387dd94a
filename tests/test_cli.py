"""The relay as a user runs it: a real process, real signals, real sockets."""
import json
import signal
import socket
import subprocess
import sys

import pytest

from conftest import linux_only, windows_only
from helpers import Proc, listen_port, tcp_states
from relay import cli, config as cfg, native_pump

RELAY = [sys.executable, "-m", "relay"]


def RelayProcess(*args, cwd=None):
    return Proc(RELAY + list(args), cwd=cwd)


def run_relay(*args, cwd=None, timeout=20):
    return subprocess.run(RELAY + list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_help_lists_commands_and_one_route_form():
    top = run_relay("--help")
    assert top.returncode == 0 and "serve" in top.stdout and "check" in top.stdout
    serve = run_relay("serve", "--help")
    for flag in ("--listen", "--target", "--allow", "--max-connections", "--loop", "--pump", "--pump-threads", "--busy-poll",
                 "--log-format", "--expose-to-all-networks", "--config"):
        assert flag in serve.stdout


@pytest.mark.parametrize("yaml_text, words", [
    ("routes:\n  - name: a\n    listen: 127.0.0.1:99999\n    target: 127.0.0.1:7497\n", "routes[0].listen: port 99999"),
    ("routes: [\n", "YAML syntax error"),
    ("routes:\n  - name: a\n    listen: 127.0.0.1:17497\n    target: 127.0.0.1:7497\n    allow: [10.0.0.1/8]\n",
     "routes[0].allow[0]: '10.0.0.1/8' has host bits set"),
])
def test_config_errors_exit_2_with_one_line_and_no_traceback(tmp_path, yaml_text, words):
    path = tmp_path / "relay.yaml"
    path.write_text(yaml_text)
    for cmd in (["check", "--config", str(path)], ["serve", "--config", str(path)], []):
        r = run_relay(*cmd, cwd=tmp_path)
        assert r.returncode == 2, (cmd, r.stderr)
        assert "Traceback" not in r.stderr
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and words in err[0] and str(path) in err[0], err


def test_a_route_that_points_at_the_relay_itself_exits_2_naming_both_routes(tmp_path):
    path = tmp_path / "relay.yaml"
    path.write_text("routes:\n  - {name: x, listen: 127.0.0.1:17000, target: 127.0.0.1:17000}\n")
    for cmd in (["check", "--config", str(path)], ["serve", "--config", str(path)]):
        r = run_relay(*cmd)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (cmd, r.stderr)
        assert "routes[0].target: target 127.0.0.1:17000 is its own listen address (routes[0].listen" in r.stderr
    path.write_text("routes:\n  - {name: a, listen: 127.0.0.1:17001, target: 127.0.0.1:7497}\n"
                    "  - {name: b, listen: 127.0.0.1:17002, target: localhost:17001}\n")
    r = run_relay("check", "--config", str(path))
    assert r.returncode == 2 and "routes[1].target" in r.stderr and "where route 'a' listens (routes[0].listen" in r.stderr
    r = run_relay("serve", "--listen", "127.0.0.1:17000", "--target", "127.0.0.1:17000")
    assert r.returncode == 2 and "--target: target 127.0.0.1:17000 is its own listen address (--listen" in r.stderr


def test_missing_config_says_where_it_looked(tmp_path):
    r = run_relay(cwd=tmp_path)
    assert r.returncode == 2
    assert "no relay.yaml found" in r.stderr and str(tmp_path) in r.stderr


def test_wildcard_without_explicit_flag_exits_2():
    r = run_relay("serve", "--listen", "0.0.0.0:0", "--target", "127.0.0.1:7497")
    assert r.returncode == 2 and "expose_to_all_networks" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_bad_one_route_arguments_exit_2():
    assert run_relay("serve", "--listen", "127.0.0.1:1").returncode == 2
    r = run_relay("serve", "--listen", "127.0.0.1:1", "--target", "x:1", "--allow", "banana")
    assert r.returncode == 2 and "--allow" in r.stderr
    # a setting on the command line is read by relay.yaml's own reader: the same words for the same mistake
    for option, value, words in [("--pump-threads", "0", "0 is out of range (1-64)"),
                                 ("--pump-threads", "many", "or 'auto', got 'many'"),
                                 ("--busy-poll", "1001", "1001 is out of range (0-1000)"),
                                 ("--busy-poll", "0.5", "expected a whole number, got text"),
                                 ("--loop", "fast", "'fast' is not one of: auto, asyncio"),
                                 ("--discovery-port", "70000", "70000 is out of range (0-65535)")]:
        r = run_relay("serve", "--listen", "127.0.0.1:1", "--target", "x:1", option, value)
        assert r.returncode == 2 and option in r.stderr and words in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_serve_options_come_from_the_settings_table():
    """Each setting the table gives a command-line form is a `relay serve` option with the table's help."""
    serve = run_relay("serve", "--help").stdout
    flat = " ".join(serve.split())
    for s in cfg.SETTINGS:
        assert (s.option in serve) == bool(s.help), s.key
        if s.help:
            assert " ".join(s.help.split()[:4]) in flat, s.key


def test_port_in_use_exits_2_with_hint():
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        r = run_relay("serve", "--listen", f"127.0.0.1:{port}", "--target", "127.0.0.1:7497")
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "already listens" in out and "Traceback" not in out


@linux_only
def test_default_command_serves_relay_yaml_of_current_folder_and_stops_on_sigterm(tmp_path, echo_server):
    (tmp_path / "relay.yaml").write_text(
        f"routes:\n  - name: paper\n    listen: 127.0.0.1:0\n    target: 127.0.0.1:{echo_server}\n"
        "discovery_port: 0\n")
    relay = RelayProcess(cwd=tmp_path)
    try:
        first = relay.wait_line("starting")
        assert str(tmp_path / "relay.yaml") in first      # the first line says which file is used
        port = listen_port(relay.wait_line("listening"))
        relay.wait_line("ready")
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.sendall(b"through the relay")
            assert c.recv(100) == b"through the relay"
            opened = relay.wait_line(" open ")
            assert "route=paper" in opened and "peer=127.0.0.1:" in opened
            relay.proc.send_signal(signal.SIGTERM)
            relay.wait_line("draining")
            assert c.recv(100) == b""                     # cut after the grace period
        assert relay.finish() == 0
        closed = relay.wait_line(" close ")
        assert "bytes_up=17" in closed and "bytes_down=17" in closed
        assert "connections_cut=1" in relay.wait_line("stopped")
        assert "LISTEN" not in tcp_states({port})
    finally:
        relay.kill()


@linux_only
def test_one_route_form_with_json_logs_and_sigint(echo_server):
    relay = RelayProcess("serve", "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{echo_server}",
                         "--allow", "127.0.0.0/8", "--max-connections", "3", "--log-format", "json", "--loop", "asyncio",
                         "--pump-threads", "1", "--busy-poll", "50", "--discovery-port", "off", "--status-port", "0")
    try:
        doc = json.loads(relay.wait_line('"listening"'))
        assert doc["allow"] == "127.0.0.0/8" and doc["max_connections"] == 3
        relay.wait_line('"ready"')
        with socket.create_connection(("127.0.0.1", listen_port(f" listen={doc['listen']} "))) as c:
            c.sendall(b"x")
            assert c.recv(1) == b"x"
        relay.wait_line('"close"')
        relay.proc.send_signal(signal.SIGINT)
        assert relay.finish() == 0
        starting = json.loads(relay.wait_line('"starting"'))
        assert starting["loop"] == "asyncio"
        assert starting.get("pump_threads") == (1 if native_pump.available() else None)
        assert starting.get("busy_poll_us") == (50 if native_pump.available() else None)
        assert any('"busy-poll-unused"' in x for x in relay.lines) == (native_pump.available() is None)
        assert not any('"discovery-listening"' in x for x in relay.lines)    # --discovery-port off
        assert any('"status-listening"' in x for x in relay.lines)
    finally:
        relay.kill()


def test_status_text_names_the_pump_threads_and_busy_polling():
    native = {"pump": "native", "pump_threads": 2, "busy_poll_us": 0}
    assert cli._threads_running(native) == " (2 threads running)"
    assert cli._threads_running({**native, "pump_threads": 1, "busy_poll_us": 200}) == \
        " (1 thread running, polling busily 200 us)"
    assert cli._threads_running({"pump": "python", "pump_threads": 0, "busy_poll_us": 200}) == ""
    assert cli._threads_running({"pump": "native"}) == ""      # an older relay's answer


@linux_only
def test_busy_poll_with_the_python_pump_says_it_is_unused(echo_server):
    relay = RelayProcess("serve", "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{echo_server}",
                         "--pump", "python", "--busy-poll", "100")
    try:
        line = relay.wait_line("busy-poll-unused")
        assert "WARNING" in line and "busy_poll_us=100" in line
        assert "busy_poll_us" not in relay.lines[0] and "pump_threads" not in relay.lines[0]
        relay.wait_line("ready")
        relay.proc.send_signal(signal.SIGINT)
        assert relay.finish() == 0
    finally:
        relay.kill()


@linux_only
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("first", ["SIGTERM", "SIGINT"])
def test_second_signal_cuts_connections_at_once_without_a_traceback(tmp_path, echo_server, loop, first):
    """Ctrl+C twice (or SIGTERM, then Ctrl+C): connections cut at once, exit 0, nothing but log lines."""
    (tmp_path / "relay.yaml").write_text(
        f"routes:\n  - name: paper\n    listen: 127.0.0.1:0\n    target: 127.0.0.1:{echo_server}\n"
        f"discovery_port: false\nstatus_port: false\nshutdown_grace: 60\nloop: {loop}\n")
    relay = RelayProcess(cwd=tmp_path)
    try:
        port = listen_port(relay.wait_line("listening"))
        relay.wait_line("ready")
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.sendall(b"x")
            assert c.recv(1) == b"x"
            relay.proc.send_signal(getattr(signal, first))
            relay.wait_line("draining")                    # would wait 60 s for the connection
            relay.proc.send_signal(signal.SIGINT)          # a second Ctrl+C: cut now
            assert relay.finish(timeout=5) == 0
        assert any("cutting connections now" in x for x in relay.lines)
        assert "connections_cut=1" in relay.wait_line("stopped")
        assert f"loop={loop}" in relay.lines[0]
        if native_pump.available():
            assert f" pump=native pump_threads={native_pump.threads_default()} " in relay.lines[0]
        else:
            assert "pump=\"python" in relay.lines[0] and "pump_threads" not in relay.lines[0]
        noise = [x for x in relay.lines if "Traceback" in x or "never retrieved" in x or "Error" in x]
        assert not noise, "\n".join(relay.lines)
        assert all(x[:4].isdigit() for x in relay.lines), "\n".join(relay.lines)   # every line a log line
    finally:
        relay.kill()


def test_out_of_range_ports_and_check_without_a_file_say_what_is_wrong(tmp_path):
    r = run_relay("serve", "--listen", "127.0.0.1:291010", "--target", "127.0.0.1:7497")
    assert r.returncode == 2 and "--listen: port 291010 is out of range (0-65535)" in r.stderr, r.stderr
    r = run_relay("serve", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:" + "9" * 5000)
    assert r.returncode == 2 and "--target: port" in r.stderr and "out of range" in r.stderr
    r = run_relay("check", cwd=tmp_path)
    assert r.returncode == 2 and "no relay.yaml found" in r.stderr and "--listen" not in r.stderr
    r = run_relay("serve", "--status-port", "17999", cwd=tmp_path)
    assert r.returncode == 2 and "--status-port belong(s) to the one-route form" in r.stderr


@windows_only
def test_ctrl_break_stops_the_relay_cleanly_on_windows(echo_server):
    """Windows has no SIGTERM/SIGINT to send: Ctrl+Break (SIGBREAK) to the relay's own process group."""
    import subprocess as sp
    relay = sp.Popen(RELAY + ["serve", "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{echo_server}",
                              "--status-port", "off", "--discovery-port", "off"],
                     stdout=sp.PIPE, stderr=sp.STDOUT, text=True, creationflags=sp.CREATE_NEW_PROCESS_GROUP)
    try:
        for line in relay.stdout:
            if " ready " in line:
                break
        relay.send_signal(signal.CTRL_BREAK_EVENT)
        out, _ = relay.communicate(timeout=20)
        assert relay.returncode == 0 and "signal=SIGBREAK" in out and " stopped " in out, out
    finally:
        relay.kill()
