"""Logs that survive: a rotating file where no console shows them, `relay logs` to read them."""
import os
import queue
import signal
import socket
import subprocess
import sys
import threading

import pytest

from conftest import linux_only
from helpers import Proc, free_port, wait_until
from relay import logs, registry

RELAY = [sys.executable, "-m", "relay"]


def test_where_the_log_goes():
    win = {"LOCALAPPDATA": "C:\\Users\\me\\AppData\\Local", "APPDATA": "C:\\Users\\me\\AppData\\Roaming"}
    assert logs.log_file_for(None, False, "win32", win) == "C:\\Users\\me\\AppData\\Local\\relay\\logs\\relay.log"
    assert logs.log_file_for(None, True, "win32", win) is None                    # a console: stderr
    assert logs.log_file_for("D:\\logs\\relay.log", True, "win32", win) == "D:\\logs\\relay.log"
    assert logs.log_file_for("off", False, "win32", win) is None
    linux = {"HOME": "/home/me"}
    assert logs.log_file_for(None, False, "linux", linux) == "/home/me/.local/state/relay/relay.log"
    assert logs.log_file_for(None, False, "linux", {"XDG_STATE_HOME": "/s", "HOME": "/h"}) == "/s/relay/relay.log"
    assert logs.log_file_for(None, False, "linux", {}) is None


def test_rotation_keeps_a_few_files_and_follow_reads_across_it_without_losing_a_line(tmp_path):
    path = str(tmp_path / "relay.log")
    logs.setup("info", "text", file=path, max_bytes=2000, backups=2, stream=open(os.devnull, "w"))
    log = logs.logging.getLogger("relay")
    lines: "queue.Queue[str]" = queue.Queue()
    stop = threading.Event()
    log.info("first")

    def reader():
        for line in logs.follow(path, 0, poll=0.01, stop=stop.is_set):
            lines.put(line)
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        assert lines.get(timeout=10).endswith("first")
        got = []
        for i in range(200):           # about 12 KB: several rotations
            log.info(f"line {i:03d}")
            if i % 20 == 0:            # let the follower catch up now and then, as a tail -f does
                while len(got) < i + 1:
                    got.append(lines.get(timeout=10).split()[-1])
        while len(got) < 200:
            got.append(lines.get(timeout=10).split()[-1])
        assert got == [f"{i:03d}" for i in range(200)]
    finally:
        stop.set()
        t.join(5)
        logs.setup("info", "text")
    assert sorted(os.listdir(tmp_path)) == ["relay.log", "relay.log.1", "relay.log.2"]
    assert logs.tail(path, 2)[0][-1].endswith("line 199")


@linux_only
def test_without_a_console_the_relay_logs_to_its_file_and_relay_logs_reads_it(tmp_path):
    """As under pythonw or a windowed relay.exe: no stdout, no stderr. The log goes to the user's state
    folder, the first line says where, relay status and relay logs find it."""
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    echo = socket.create_server(("127.0.0.1", 0))
    port = free_port()
    relay = subprocess.Popen(RELAY + ["serve", "--listen", f"127.0.0.1:{port}", "--target",
                                      f"127.0.0.1:{echo.getsockname()[1]}", "--discovery-port", "off"],
                             env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             preexec_fn=lambda: (os.close(1), os.close(2)))
    logfile = tmp_path / "state" / "relay" / "relay.log"
    follower = None
    try:
        # the relay's record is written once it is up (it cannot tell us on a console: it has none)
        wait_until(lambda: any(r["pid"] == relay.pid for r in registry.live()), what="the relay's record")
        text = logfile.read_text()
        first = text.splitlines()[0]
        assert " starting " in first and f"log_file={logfile}" in first
        status = subprocess.run(RELAY + ["status"], capture_output=True, text=True, timeout=30, env=env)
        assert f"log {logfile}" in status.stdout, status.stdout
        tail = subprocess.run(RELAY + ["logs", "-n", "2"], capture_output=True, text=True, timeout=30, env=env)
        assert tail.returncode == 0 and " ready " in tail.stdout, tail.stdout + tail.stderr
        follower = Proc(RELAY + ["logs", "-f", "-n", "1"])
        follower.wait_line(" ready ")                                 # following from the current end
        with socket.create_connection(("127.0.0.1", port)):
            pass
        assert f"route=to-{echo.getsockname()[1]}" in follower.wait_line(" open ", timeout=10)
        relay.send_signal(signal.SIGINT)
        assert relay.wait(20) == 0
        assert " stopped " in logfile.read_text().splitlines()[-1]
    finally:
        relay.kill()
        echo.close()
        if follower is not None:
            follower.kill()


def test_a_log_file_that_cannot_be_opened_is_a_clean_exit_2(tmp_path):
    r = subprocess.run(RELAY + ["serve", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--log-file",
                                str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and f"cannot open the log file {tmp_path}" in r.stderr and "Traceback" not in r.stderr
    conf = tmp_path / "relay.yaml"
    conf.write_text("routes:\n  - {name: a, listen: '127.0.0.1:0', target: '127.0.0.1:9'}\nlog: {file: 7}\n")
    r = subprocess.run(RELAY + ["check", "--config", str(conf)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "log.file: expected a file path, or false, got int" in r.stderr


@pytest.mark.parametrize("setting", [None, "log.txt"])
def test_with_a_console_stderr_stays_and_log_file_adds_a_file(tmp_path, setting):
    args = ["--log-file", str(tmp_path / setting)] if setting else []
    # 192.0.2.1 (TEST-NET) is no address of this machine: the relay starts, logs, and exits 2 at the bind
    r = subprocess.run(RELAY + ["serve", "--listen", "192.0.2.1:17999", "--target", "127.0.0.1:9", *args,
                                "--status-port", "off", "--discovery-port", "off"],
                       capture_output=True, text=True, timeout=30,
                       env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")})
    assert r.returncode == 2 and " starting " in r.stderr            # the console still gets it all
    assert not (tmp_path / "state").exists()                          # no file unless asked, with a console
    if setting:
        assert (tmp_path / setting).read_text().splitlines()[0] == r.stderr.splitlines()[0]


def start_without_a_console(args, env, cwd=None):
    """As the logon task starts relayw: no stdout, no stderr (sys.stderr is None)."""
    return subprocess.run(RELAY + args, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, preexec_fn=lambda: (os.close(1), os.close(2)), timeout=30)


@linux_only
@pytest.mark.parametrize("problem, words", [
    ("routes:\n  - {name: a, listen: '127.0.0.1:0', target: '127.0.0.1:9'}\nloop: fast\n", "loop: 'fast' is not one of"),
    ("routes: [\n", "YAML syntax error"),
    ("routes:\n  - {name: a, listen: '127.0.0.1:0', target: '127.0.0.1:9'}\nlog: {file: .}\n",
     "cannot open the log file"),
])
def test_a_start_that_fails_with_no_console_leaves_its_reason_in_the_default_log(tmp_path, problem, words):
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    conf = tmp_path / "relay.yaml"
    conf.write_text(problem)
    r = start_without_a_console(["serve", "--config", str(conf)], env, cwd="/")
    assert r.returncode == 2
    (line,) = (tmp_path / "state" / "relay" / "relay.log").read_text().splitlines()
    assert " ERROR   cannot-start error=" in line and words in line and "pid=" in line
    status = subprocess.run(RELAY + ["status", "--port", str(free_port())], capture_output=True, text=True,
                            timeout=30, env=env)
    assert status.returncode == 1 and "the last start without a console failed" in status.stderr and words in status.stderr
    shown = subprocess.run(RELAY + ["logs", "-n", "1"], capture_output=True, text=True, timeout=30, env=env)
    assert shown.returncode == 0 and words in shown.stdout


def test_doctor_says_the_last_start_failed(tmp_path, monkeypatch, run):
    from relay import doctor
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert logs.record_start_failure("relay.yaml: log.file: cannot open the log file /nowhere/x", "linux")
    conf = tmp_path / "relay.yaml"
    conf.write_text("routes:\n  - {name: a, listen: '127.0.0.1:0', target: '127.0.0.1:9'}\nstatus_port: false\n"
                    "discovery_port: false\n")
    checks = {c.name: c for c in run(doctor.host_checks(str(conf), platform="linux"))}
    running = checks["relay running"]
    assert running.status == doctor.FAIL and "cannot open the log file /nowhere/x" in running.detail
    # a later start that got going clears it
    with open(logs.default_log_file("linux", os.environ), "a") as f:
        f.write("2026-12-06 10:00:00.000 INFO    starting version=x\n")
    assert logs.last_start_failure(logs.default_log_file("linux", os.environ)) is None


@pytest.mark.parametrize("value, config, expected", [
    ("logs\\relay.log", "C:\\Users\\me\\relay\\relay.yaml", "C:\\Users\\me\\relay\\logs\\relay.log"),
    ("..\\relay.log", "C:\\Users\\me\\relay\\relay.yaml", "C:\\Users\\me\\relay.log"),
    ("D:\\logs\\relay.log", "C:\\Users\\me\\relay\\relay.yaml", "D:\\logs\\relay.log"),
    ("%TEST_RELAY_HOME%\\relay.log", "C:\\relay\\relay.yaml", "C:\\Users\\me\\relay.log"),
])
def test_a_relative_path_in_relay_yaml_is_beside_the_file_on_windows(monkeypatch, value, config, expected):
    import ntpath
    from relay.config import beside
    monkeypatch.setenv("TEST_RELAY_HOME", "C:\\Users\\me")
    assert beside(value, config, ntpath) == expected


def test_a_relative_log_file_lands_beside_relay_yaml_whatever_the_working_folder(tmp_path):
    from relay import config as cfg
    conf = tmp_path / "relay.yaml"
    conf.write_text("routes:\n  - {name: a, listen: '127.0.0.1:0', target: '127.0.0.1:9'}\nlog: {file: logs/relay.log}\n")
    assert cfg.load(str(conf)).settings.log_file == str(tmp_path / "logs" / "relay.log")
    conf.write_text("routes:\n  - {name: a, listen: '127.0.0.1:0', target: '127.0.0.1:9'}\nlog: {file: off}\n")
    assert cfg.load(str(conf)).settings.log_file == "off"


def test_a_rollover_windows_refuses_loses_no_line_says_so_once_and_tries_again(tmp_path):
    """On Windows the rename fails while another process has the file open (WinError 32)."""
    import logging
    path = tmp_path / "relay.log"
    now = [0.0]
    handler = logs.RotatingLog(str(path), maxBytes=2000, backupCount=2, encoding="utf-8", clock=lambda: now[0])
    handler.setFormatter(logs.TextFormatter())
    locked = [True]

    def rename(source, dest):
        if locked[0]:
            e = PermissionError(13, "The process cannot access the file because it is being used by another process")
            e.winerror = 32
            raise e
        os.rename(source, dest)
    handler.rotator = rename
    log = logging.getLogger("test-rotation")
    log.handlers[:], log.propagate = [handler], False
    log.setLevel(logging.INFO)
    try:
        for i in range(100):                                 # about 6 KB: three rollovers' worth
            log.info(f"line {i:03d}")
        lines = path.read_text().splitlines()
        assert [line.split()[-1] for line in lines if " line " in line] == [f"{i:03d}" for i in range(100)]
        (warning,) = [line for line in lines if "log-rotation-failed" in line]
        assert "being used by another process" in warning and "trying again every 60 s" in warning
        locked[0] = False                                    # the other process let go
        log.info("line 100")                                 # before the retry time: still this file
        assert not (tmp_path / "relay.log.1").exists()
        now[0] = 61.0
        log.info("line 101")
        assert (tmp_path / "relay.log.1").exists()
        kept = (tmp_path / "relay.log.1").read_text() + path.read_text()
        assert [line.split()[-1] for line in kept.splitlines() if " line " in line] == [f"{i:03d}" for i in range(102)]
        assert "log-rotated" in path.read_text()
    finally:
        log.handlers[:] = []
        handler.close()


def test_the_follower_holds_no_handle_on_the_log_between_reads(tmp_path):
    """On Windows an open handle (Python's open() does not share delete access) blocks the rename."""
    import psutil
    path = tmp_path / "relay.log"
    path.write_text("one\n")
    lines = logs.follow(str(path), 0, poll=0.01)
    try:
        assert next(lines) == "one"
        assert str(path) not in [f.path for f in psutil.Process().open_files()]
        with open(path, "a") as f:
            f.write("two\n")
        os.rename(path, str(path) + ".1")                   # rotated, with a line the follower has not read
        path.write_text("three\n")
        assert [next(lines), next(lines)] == ["two", "three"]
    finally:
        lines.close()
