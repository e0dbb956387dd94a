"""The control port (`relay kick` / `relay stop`) against whatever a local process sends: an answer
or a close, never a traceback; bounded in what it holds and logs. Real sockets on loopback."""
import asyncio
import json
import logging

from hypothesis import given, settings, strategies as st

from conftest import on_each_loop
from helpers import records, wait_for
from relay import control
from relay.logs import RateLimit

TOKEN = "ab" * 32


def served(answers: list):
    def act(request: dict) -> dict:
        answers.append(request)
        return {"ok": True, "did": request.get("action")}
    return control.ControlServer(TOKEN, act)


async def exchange(port: int, data: bytes, eof: bool = True) -> bytes:
    """Send `data` (then FIN), read until the server closes; b"" for a close without an answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        if eof:
            writer.write_eof()
        return await reader.read()
    except ConnectionError:
        return b""
    finally:
        writer.close()


def no_traceback(caplog) -> None:
    for r in caplog.records:
        assert not r.exc_info, r.getMessage()
        assert "Unhandled exception" not in r.getMessage() and "Traceback" not in r.getMessage()


BAD = [
    b"not json\n",
    b"[1, 2]\n",
    b"\"token\"\n",
    b"{}\n",
    json.dumps({"token": "\u00e9" * 64, "action": "kick", "client_id": 1}).encode() + b"\n",   # non-ASCII token
    json.dumps({"token": "\ud800", "action": "stop"}).encode() + b"\n",                        # a lone surrogate
    json.dumps({"token": 7, "action": "stop"}).encode() + b"\n",
    json.dumps({"token": ["x"], "action": "stop"}).encode() + b"\n",
    b"[" * 3000 + b"]" * 3000 + b"\n",                                                         # deeper than json allows
    b"\xff\xfe{}\n",
    b"{\"token\": \"" + TOKEN.encode() + b"\", \"action\":",                                   # half-sent, then EOF
    b"x" * 70000 + b"\n",                                                                      # longer than any limit
]


def test_every_malformed_request_gets_an_error_or_a_close_never_a_traceback(run, caplog):
    async def main():
        acted = []
        server = served(acted)
        await server.bind()
        for data in BAD:
            got = await exchange(server.port, data)
            if got:
                answer = json.loads(got)
                assert answer["ok"] is False and isinstance(answer["error"], str), (data[:40], answer)
        assert acted == [] and server.clients == 0
        server.close()
    with caplog.at_level(logging.DEBUG):
        run(main())
    no_traceback(caplog)


@on_each_loop
async def test_the_right_secret_still_acts_and_wrong_types_are_refused_by_the_relay():
    acted = []
    server = served(acted)
    await server.bind()
    got = json.loads(await exchange(server.port, json.dumps({"token": TOKEN, "action": "stop"}).encode() + b"\n"))
    assert got == {"ok": True, "did": "stop"} and acted == [{"token": TOKEN, "action": "stop"}]
    server.close()


@on_each_loop
async def test_a_slow_or_silent_client_is_closed_after_the_read_timeout():
    server = served([])
    server.read_timeout = 0.2
    await server.bind()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b'{"token": "')                    # and nothing more, no FIN
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert server.clients == 0
    server.close()


@on_each_loop
async def test_more_than_max_clients_at_once_are_closed_and_the_rest_still_answered():
    server = served([])
    await server.bind()
    held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(control.MAX_CLIENTS)]
    await wait_for(lambda: server.clients == control.MAX_CLIENTS, what="the held requests")
    assert await exchange(server.port, b"{}\n") == b""              # one too many: closed unanswered
    for _, w in held:
        w.write(b"{}\n")
    answers = [json.loads(await r.read()) for r, _ in held]
    assert all(a["ok"] is False for a in answers)
    for _, w in held:
        w.close()
    server.close()


def test_refusals_are_logged_a_few_times_a_minute_with_a_count(caplog):
    now = [0.0]
    server = control.ControlServer(TOKEN, lambda r: {"ok": True}, RateLimit(burst=3, window=60.0, clock=lambda: now[0]))
    with caplog.at_level(logging.WARNING, logger="relay"):
        for _ in range(50):
            assert server.handle(b'{"token": "nope"}')["ok"] is False
        assert len(records(caplog, "control-refused")) == 3
        now[0] = 61.0
        server.handle(b"junk")
    lines = records(caplog, "control-refused")
    assert len(lines) == 4 and lines[-1].fields == {"reason": "not a control request", "suppressed": 47}


@given(st.binary(max_size=600))
@settings(max_examples=300)
def test_arbitrary_request_bytes_are_refused_with_an_answer(data):
    server = control.ControlServer(TOKEN, lambda r: {"ok": True})
    answer = server.handle(data)
    assert answer["ok"] is False and isinstance(answer["error"], str)
    json.dumps(answer)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                    max_leaves=20))
@settings(max_examples=300)
def test_arbitrary_json_documents_are_refused_with_an_answer(doc):
    server = control.ControlServer(TOKEN, lambda r: {"ok": True})
    answer = server.handle(json.dumps(doc).encode())
    assert answer["ok"] is False and isinstance(answer["error"], str)


class Kept(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@given(data=st.binary(min_size=1, max_size=300), eof=st.booleans())
@settings(max_examples=60)
def test_arbitrary_bytes_over_the_socket_get_an_answer_or_a_close(run, data, eof):
    kept = Kept()
    for name in ("relay", "asyncio"):
        logging.getLogger(name).addHandler(kept)

    async def main():
        server = served([])
        server.read_timeout = 0.05       # a request that never ends is closed: not what this test times
        await server.bind()
        got = await exchange(server.port, data, eof)
        if got:
            assert json.loads(got)["ok"] is False
        await wait_for(lambda: server.clients == 0, what="the request's end")
        server.close()
    try:
        run(main())
    finally:
        for name in ("relay", "asyncio"):
            logging.getLogger(name).removeHandler(kept)
    assert not [r for r in kept.records if r.exc_info or r.levelno >= logging.ERROR]


@on_each_loop
async def test_the_relay_refuses_a_kick_whose_fields_have_the_wrong_types():
    from helpers import relay_for
    from relay.config import Endpoint

    async with relay_for(Endpoint("127.0.0.1", 9)) as relay:
        for request, words in (({"action": "kick", "client_id": "7"}, "client_id must be a whole number"),
                               ({"action": "kick", "client_id": True}, "client_id must be a whole number"),
                               ({"action": "kick", "client_id": 7, "route": ["test"]}, "route must be"),
                               ({"action": {"x": 1}}, "unknown action"),
                               ({"action": "kick", "client_id": 7, "route": "test"}, "no connection holds")):
            answer = relay.act(request)
            assert answer["ok"] is False and words in answer["error"], (request, answer)
