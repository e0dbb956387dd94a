"""Small peers run as separate processes (inside test namespaces). Each prints one line per event.

  python peers.py server PORT idle|stream   listen on 127.0.0.1:PORT; print 'accepted', then
                                             'closed' when the connection ends
  python peers.py client HOST PORT           connect, print 'connected', read until killed
"""
import select
import socket
import sys


def say(word):
    print(word, flush=True)


def server(port: int, mode: str) -> None:
    srv = socket.create_server(("127.0.0.1", port))
    say("listening")
    conn, _ = srv.accept()
    say("accepted")
    conn.setblocking(False)
    chunk = b"t" * 16384
    while True:
        want_write = [conn] if mode == "stream" else []
        readable, writable, _ = select.select([conn], want_write, [], 1.0)
        try:
            if readable and not conn.recv(65536):
                break
            if writable:
                conn.send(chunk)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            break
    say("closed")


def client(host: str, port: int) -> None:
    c = socket.create_connection((host, port), timeout=5)
    c.settimeout(None)
    say("connected")
    while c.recv(65536):
        pass
    say("eof")


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(int(sys.argv[2]), sys.argv[3])
    else:
        client(sys.argv[2], int(sys.argv[3]))
