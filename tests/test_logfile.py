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
