"""Small peers run as separate processes (inside test namespaces). Each prints one line per event.

  python peers.py server PORT idle|stream   listen on 127.0.0.1:PORT; print 'accepted', then
                                             'closed' when the connection ends
  python peers.py client HOST PORT           connect, print 'connected', read until killed
  python peers.py try HOST PORT              one connect: print 'ok', 'refused' or 'error ...'
  python peers.py hold HOST PORT             connect, print 'connected', then 'eof' / 'cut ...' when closed
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


def try_connect(host: str, port: int) -> None:
    """One connection attempt: print ok, refused, or the error."""
    try:
        socket.create_connection((host, port), timeout=2).close()
        say("ok")
    except ConnectionRefusedError:
        say("refused")
    except OSError as e:
        say(f"error {e}")


def hold(host: str, port: int) -> None:
    """Connect, say so, then wait until the connection is closed from the other side."""
    c = socket.create_connection((host, port), timeout=5)
    c.settimeout(None)
    say("connected")
    try:
        while c.recv(65536):
            pass
        say("eof")
    except OSError as e:
        say(f"cut {e}")


if __name__ == "__main__":
    {"server": lambda: server(int(sys.argv[2]), sys.argv[3]),
     "client": lambda: client(sys.argv[2], int(sys.argv[3])),
     "try": lambda: try_connect(sys.argv[2], int(sys.argv[3])),
     "hold": lambda: hold(sys.argv[2], int(sys.argv[3]))}[sys.argv[1]]()
