"""Smoke test of a built relay executable: a real loopback splice through it, then a clean stop.
    python scripts/smoke_exe.py dist/tws-relay/relay[.exe]
Runs on Linux and on Windows (where the stop is Ctrl+Break to the executable's own process group)."""
import os
import signal
import socket
import subprocess
import sys
import threading


def echo(server: socket.socket) -> None:
    """Echo every connection (the relay's own target checks connect too)."""
    while True:
        conn, _ = server.accept()
        threading.Thread(target=echo_one, args=(conn,), daemon=True).start()


def echo_one(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def main(exe: str) -> int:
    server = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=echo, args=(server,), daemon=True).start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    windows = sys.platform == "win32"
    relay = subprocess.Popen([exe, "serve", "--listen", f"127.0.0.1:{port}", "--target",
                              f"127.0.0.1:{server.getsockname()[1]}", "--status-port", "off",
                              "--discovery-port", "off", "--log-file", "off"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             creationflags=subprocess.CREATE_NEW_PROCESS_GROUP if windows else 0)
    try:
        lines = []
        for line in relay.stdout:
            lines.append(line)
            if " ready " in line:
                break
        payload = os.urandom(1 << 20)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            threading.Thread(target=c.sendall, args=(payload,), daemon=True).start()
            got = b""
            while len(got) < len(payload):
                got += c.recv(65536)
        assert got == payload, "bytes through the executable differ"
        if sys.platform.startswith("linux") and os.environ.get("CI"):   # CI builds the native pump
            assert "pump=native" in lines[0], lines[0]
        # the loop the build decided on, said in the first line: Proactor on Windows, uvloop elsewhere
        loop = "loop=asyncio" if windows else "loop=uvloop"
        assert loop in lines[0], lines[0]
        # one process: a onefile build's bootloader would have the real relay as its child
        import psutil
        assert psutil.Process(relay.pid).children() == [], "the executable runs as more than one process"
        relay.send_signal(signal.CTRL_BREAK_EVENT if windows else signal.SIGINT)
        out, _ = relay.communicate(timeout=20)
        assert relay.returncode == 0 and " stopped " in out, "".join(lines) + out
        print(f"smoke: 1 MiB spliced through {exe} byte for byte, one process, {loop}, stopped cleanly")
        return 0
    finally:
        relay.kill()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
