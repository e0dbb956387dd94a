"""The TWS session reader (pure) and the relay's use of it (real loopback sockets)."""
import asyncio
import struct

import pytest
from hypothesis import given, settings, strategies as st

from conftest import on_each_loop
from fake_tws import FakeTws
from helpers import address, native_pump_missing, records, relay_for, wait_for
from relay import tws
from relay.config import Endpoint
from tws_sessions import (client_hello, managed_accounts, next_valid_id, server_message, session, start_api,
                          version_reply)


def chunked(data: bytes, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0] + points + [len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:]) if b > a]


@given(version=st.sampled_from([157, 176, 178, 194, 200, 201, 212, 213, 225]), client_id=st.integers(-5, 2**31 - 1),
       caps=st.sampled_from(["", "+PACEAPI"]), outcome=st.sampled_from(["ready", "refused"]),
       cuts_c=st.lists(st.integers(0, 200), max_size=12),
       cuts_s=st.lists(st.integers(0, 400), max_size=10), order=st.lists(st.booleans(), max_size=30))
@settings(max_examples=500)
def test_any_chunking_and_interleaving_of_a_valid_session_gives_the_same_events(
        version, client_id, caps, outcome, cuts_c, cuts_s, order):
    client, server, expected = session(version, client_id, caps, outcome)
    c, s = chunked(client, cuts_c), chunked(server, cuts_s)
    hs, events = tws.Handshake(), []
    for take_client in order + [True] * len(c) + [False] * len(s):
        if take_client and c:
            events += hs.from_client(c.pop(0))
        elif not take_client and s:
            events += hs.from_server(s.pop(0))
    for rest in c:
        events += hs.from_client(rest)
    for rest in s:
        events += hs.from_server(rest)
    assert events == expected
    assert hs.done and not hs.client and not hs.server     # nothing kept once done


@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=300)), max_size=20))
@settings(max_examples=400)
def test_arbitrary_bytes_never_raise_and_stay_bounded(feeds):
    hs = tws.Handshake()
    for to_client, data in feeds:
        events = hs.from_client(data) if to_client else hs.from_server(data)
        assert all(isinstance(e, (tws.ClientHello, tws.ServerHello, tws.StartApi, tws.ApiReady, tws.ApiRefused,
                                  tws.NotTws, tws.Unsettled)) for e in events)
        assert len(hs.client) <= tws.LIMIT and len(hs.server) <= tws.LIMIT and max(hs.read) <= tws.LIMIT


@given(version=st.sampled_from([176, 205, 213]), junk=st.binary(min_size=1, max_size=50))
@settings(max_examples=200)
def test_valid_opening_then_anything_still_yields_the_same_events(version, junk):
    client, server, expected = session(version, 9)
    hs = tws.Handshake()
    events = hs.from_client(client + junk) + hs.from_server(server + junk)
    assert events == expected


@given(version=st.sampled_from([157, 176, 196, 205, 213, 226]), code=st.integers(-(2**31), 2**31 - 1),
       text=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126)))
def test_error_messages_read_back_in_every_form(version, code, text):
    msg_id, body = tws.split_message(tws.split_frame(tws.error_message(version, code, text))[0], version)
    assert msg_id == tws.ERROR and tws.decode_error(body, version) == (code, text)


@pytest.mark.parametrize("client, reason", [
    (b"GET / HTTP/1.1\r\n\r\n", "does not start with API"),
    (b"API\0" + tws.frame(b"hello"), "is not v<min>..<max>"),
    (b"API\0\xff\xff\xff\xff", "exceeds"),
])
def test_not_tws_is_given_up_with_a_reason(client, reason):
    hs = tws.Handshake()
    (event,) = hs.from_client(client)
    assert isinstance(event, tws.NotTws) and reason in event.reason and hs.done


def test_server_that_is_not_tws_and_first_message_not_start_api():
    hs = tws.Handshake()
    hs.from_client(tws.client_hello())
    assert hs.from_server(tws.fields_message(1, 2, 3)) == [tws.NotTws("server", "expected version and time, got 3 field(s)")]
    hs = tws.Handshake()
    hs.from_client(tws.client_hello() + tws.fields_message(49, 1))
    (ev,) = hs.from_server(tws.fields_message(176, "t"))[1:]
    assert isinstance(ev, tws.NotTws) and "not startApi" in ev.reason


def test_truncated_hello_waits_with_the_server_side_held_to_the_bound():
    hs = tws.Handshake()
    assert hs.from_client(b"API\0\x00\x00\x00\x09v157") == [] and not hs.done
    # bytes from the server before the hello is whole are held, never more than the bound
    assert hs.from_server(b"\x00\x00\xff\xff" + b"x" * tws.LIMIT) == [] and not hs.done
    assert hs.read == (12, tws.LIMIT) and len(hs.server) == tws.LIMIT
    assert hs.expire("10 s") == [tws.Unsettled((), tws.OPENING, "10 s")] and hs.done and not hs.server


READ = 256 * 1024   # one read of asyncio or uvloop


def opening(version: int, client_id: int = 7):
    """(client bytes, server bytes) up to and including startApi and the version reply."""
    return client_hello(157, 178) + start_api(version, client_id), version_reply(version)


def ticks(version: int, size: int) -> bytes:
    one = server_message(version, 1, [6, 1, 4, "101.25", 100, 0], b"\x08\x01\x10\x04\x19" + bytes(8))
    return one * (size // len(one) + 1)


@pytest.mark.parametrize("version", [176, 205, 213])
def test_market_data_before_the_opening_settles_ends_the_watch_at_the_bound(version):
    """A stand-in TWS that streams after startApi and never sends nextValidId / managedAccounts:
    the watch reads tws.LIMIT bytes of it and no more, whatever follows (before, it read the whole session)."""
    client, server = opening(version)
    hs = tws.Handshake()
    events = hs.from_client(client) + hs.from_server(server)
    stream = ticks(version, 4 << 20)
    reads = [stream[i:i + READ] for i in range(0, len(stream), READ)]
    events += hs.from_server(reads[0])
    bound = f"{tws.LIMIT // 1024} KiB from the server"
    assert hs.done and events[-1] == tws.Unsettled(("hello", "version", "startApi"), ("managedAccounts", "nextValidId"),
                                                   bound)
    for data in reads[1:]:
        assert hs.from_server(data) == []
    assert tws.LIMIT - 40 < hs.read[1] <= tws.LIMIT and not hs.server


@given(version=st.sampled_from([176, 205, 213]), before=st.integers(0, 3000), settles=st.booleans(),
       after=st.integers(0, 90_000), cuts=st.lists(st.integers(0, 100_000), max_size=15))
@settings(max_examples=300)
def test_no_split_of_the_same_bytes_changes_the_events_or_the_bound(version, before, settles, after, cuts):
    client, server = opening(version)
    server += ticks(version, before)
    if settles:
        server += managed_accounts(version, "DU1") + next_valid_id(version, 1)
    server += ticks(version, after)
    whole = tws.Handshake()
    expected = whole.from_client(client) + whole.from_server(server)
    hs = tws.Handshake()
    events = hs.from_client(client)
    for part in chunked(server, cuts):
        events += hs.from_server(part)
    assert events == expected and hs.read == whole.read and hs.done == whole.done
    assert hs.read[1] <= tws.LIMIT
    if not settles and len(server) >= tws.LIMIT:
        assert isinstance(events[-1], tws.Unsettled)


def test_the_time_bound_ends_a_watch_that_waits_for_start_api():
    hs = tws.Handshake()
    client, server = opening(176)
    hs.from_client(client[:len(tws.client_hello(157, 178))])
    hs.from_server(server)
    assert hs.expire("10 s") == [tws.Unsettled(("hello", "version"), ("startApi", "managedAccounts", "nextValidId"),
                                               "10 s")]
    assert hs.done and hs.expire("10 s") == [] and hs.from_client(client) == []


def test_error_326_bytes_in_each_version_range():
    """The layouts the official decoder reads (ibapi decoder.processErrorMsg / processErrorMsgProtoBuf);
    the real decoders read them in test_clients.py."""
    text = "Unable to connect as the client id 7 is already in use. Retry with a unique client id."
    payload = tws.split_frame(tws.client_id_in_use(176, 7))[0]                  # below 194: a version field
    assert tws.split_fields(payload) == ["4", "2", "-1", "326", text, ""]
    payload = tws.split_frame(tws.client_id_in_use(196, 7, now_ms=123))[0]       # 194-200: no version, a time
    assert tws.split_fields(payload) == ["4", "-1", "326", text, "", "123"]
    payload = tws.split_frame(tws.client_id_in_use(205, 7, now_ms=123))[0]       # 201-212: a raw 4-byte id
    assert payload[:4] == b"\0\0\0\x04" and tws.split_fields(payload[4:]) == ["-1", "326", text, "", "123"]
    payload = tws.split_frame(tws.client_id_in_use(226, 7, now_ms=123))[0]       # 213 on: protobuf id 204
    assert payload[:4] == b"\0\0\0\xcc" and payload[4:6] == b"\x08\xff"      # id -1: ten-byte varint


# -- the relay reading real sessions

async def connect_bot(port, client_id, version_max=225):   # as ibapi 10.46 offers
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(tws.client_hello(157, version_max))
    size = struct.unpack(">I", await reader.readexactly(4))[0]
    version, _ = tws.parse_server_hello(await reader.readexactly(size))
    writer.write(start_api(version, client_id))
    return reader, writer


async def read_message(reader):
    size = struct.unpack(">I", await reader.readexactly(4))[0]
    return tws.split_fields(await reader.readexactly(size))


@pytest.mark.parametrize("version", [176, 205, 213])
@on_each_loop
async def test_relay_logs_client_id_and_version_and_warns_on_clash(caplog, version):
    fake = FakeTws(version=version)
    port = await fake.start()
    async with relay_for(Endpoint("127.0.0.1", port)) as relay:
        r1, w1 = await connect_bot(relay.routes[0].address.port, 7)
        await wait_for(lambda: records(caplog, "api-start"), what="api-start line")
        start = records(caplog, "api-start")[0].fields
        assert (start["client_id"], start["server_version"]) == (7, version)
        r2, w2 = await connect_bot(relay.routes[0].address.port, 7)
        await wait_for(lambda: records(caplog, "client-id-clash"), what="clash warning")
        clash = records(caplog, "client-id-clash")[0].fields
        peers = [next(iter(relay.routes[0].active)).peer, list(relay.routes[0].active)[1].peer]
        assert clash["held_by"] == peers[0] and clash["peer"] == peers[1] and clash["client_id"] == 7
        w1.close()
        w2.close()
        await wait_for(lambda: len(records(caplog, "close")) == 2, what="close lines")
        assert all(r.fields["client_id"] == 7 for r in records(caplog, "close"))
        # once both are gone, clientId 7 is free again: no warning for the next one
        r3, w3 = await connect_bot(relay.routes[0].address.port, 7)
        await wait_for(lambda: len(records(caplog, "api-start")) == 3, what="third api-start")
        assert len(records(caplog, "client-id-clash")) == 1
        w3.close()
    fake.close()


@on_each_loop
async def test_relay_answers_a_duplicate_with_error_326_when_asked(caplog):
    fake = FakeTws(version=176)
    port = await fake.start()
    async with relay_for(Endpoint("127.0.0.1", port), reject_duplicate_client_id=True) as relay:
        rport = relay.routes[0].address.port
        r1, w1 = await connect_bot(rport, 3)
        assert (await read_message(r1))[0] == "15"        # the first bot is served normally
        r2, w2 = await connect_bot(rport, 3)
        got = []
        while True:
            try:
                got.append(await asyncio.wait_for(read_message(r2), 3))
            except (asyncio.IncompleteReadError, ConnectionError):
                break
        assert ["4", "2", "-1", "326"] == got[-1][:4]     # TWS's own error, then the connection closes
        w1.write(tws.fields_message(49, 1))               # the first bot still works
        assert (await read_message(r1))[0] in ("9", "4", "49")
        w1.close()
        w2.close()
    fake.close()


@pytest.mark.parametrize("pump", ["python", "native"])
@on_each_loop
async def test_a_bot_that_left_is_no_clash_while_tws_still_holds_its_side(caplog, pump):
    """A bot that disconnects and reconnects at once with the same clientId (ib_async reconnecting, a
    restarted script) must not meet a clash of its own making: once the bot's FIN is on its way to
    TWS the old session is over, even while TWS has not closed its side yet (the relay keeps that
    side open for whatever TWS still sends). With reject_duplicate_client_id a false clash would
    refuse the reconnect with error 326. (A bot that is reset needs no rule: the relay closes both
    legs at once.)"""
    missing = native_pump_missing() if pump == "native" else None   # on CI's Linux a missing pump fails instead
    if missing:
        pytest.skip(missing)

    fake = FakeTws(version=176)
    fake.linger = asyncio.Event()       # TWS keeps the old session's side open until told
    async with relay_for(Endpoint("127.0.0.1", await fake.start()), reject_duplicate_client_id=True,
                         pump="python" if pump == "python" else "auto") as relay:
        route, rport = relay.routes[0], relay.routes[0].address.port
        r1, w1 = await connect_bot(rport, 7)
        assert (await read_message(r1))[0] == "15"
        first = next(iter(route.active))
        await wait_for(lambda: first.handed_over == (pump == "native"), what="the pump that carries the session")
        w1.close()
        await wait_for(lambda: fake.eofs == 1, what="the old session's end, relayed to TWS")
        assert not first.finished, "TWS still holds its side: the relay's session is not over yet"
        r2, w2 = await connect_bot(rport, 7)
        assert (await read_message(r2))[0] == "15", "the reconnect is served, not refused"
        assert not records(caplog, "client-id-clash")
        fake.linger.set()
        await wait_for(lambda: first.finished, what="the old session's close")
        r3, w3 = await connect_bot(rport, 7)              # the live one still holds clientId 7
        await wait_for(lambda: records(caplog, "client-id-clash"), what="a real clash")
        assert records(caplog, "client-id-clash")[0].fields["held_by"] != first.peer
        for w in (w2, w3):
            w.close()
    fake.close()


def test_tws_awareness_off_logs_no_client_ids(run, caplog):
    async def main():
        fake = FakeTws()
        port = await fake.start()
        async with relay_for(Endpoint("127.0.0.1", port), tws_aware=False) as relay:
            r, w = await connect_bot(relay.routes[0].address.port, 1)
            assert (await read_message(r))[0] == "15"
            assert relay.routes[0].active and next(iter(relay.routes[0].active)).session.client_id is None
            w.close()
        fake.close()
    run(main())
    assert not records(caplog, "api-start")


@pytest.mark.parametrize("pump", ["python", "native"])
@pytest.mark.parametrize("mode", ["stream", "refuse-stream"])
@on_each_loop
async def test_a_session_that_never_settles_is_relayed_exactly_and_leaves_the_watch(caplog, pump, mode):
    """TWS streams market data after startApi without nextValidId / managedAccounts (or after an
    error that refuses the opening): the watch ends at its bound with one line, the session moves to
    the native pump where it is built, and every byte arrives in order."""
    missing = native_pump_missing() if pump == "native" else None
    if missing:
        pytest.skip(missing)

    fake = FakeTws(version=176, mode=mode)
    fake.stream_bytes = 2 << 20
    async with relay_for(Endpoint("127.0.0.1", await fake.start()),
                         pump="python" if pump == "python" else "auto") as relay:
        reader, writer = await connect_bot(relay.routes[0].address.port, 7)
        await wait_for(lambda: fake.streamed, what="the stand-in's stream")
        assert await reader.readexactly(len(fake.streamed)) == fake.streamed
        splice = next(iter(relay.routes[0].active))
        await wait_for(lambda: splice.session.handshake is None, what="the end of the watch")
        await wait_for(lambda: splice.handed_over == (pump == "native"), what="the pump that carries the session")
        writer.write(tws.fields_message(49, 1))                  # the session still works both ways
        assert (await read_message(reader))[0] == "49"
        if mode == "stream":
            (line,) = records(caplog, "api-unsettled")
            assert line.fields["saw"] == "hello,version,startApi" and line.fields["client_id"] == 7
            assert line.fields["missing"] == "managedAccounts,nextValidId"
            assert line.fields["after"] == f"{tws.LIMIT // 1024} KiB from the server"
            assert splice.session.phase == "unsettled"
        else:
            assert records(caplog, "api-refused")[0].fields["code"] == 504 and not records(caplog, "api-unsettled")
        writer.close()
    fake.close()


@on_each_loop
async def test_the_watch_ends_in_time_for_a_bot_that_never_sends_start_api(caplog, monkeypatch):
    monkeypatch.setattr(tws, "WATCH_TIMEOUT", 0.2)

    fake = FakeTws(version=176)
    async with relay_for(Endpoint("127.0.0.1", await fake.start())) as relay:
        reader, writer = await asyncio.open_connection(*address(relay))
        writer.write(tws.client_hello(157, 178))
        await read_message(reader)                                # the version reply, then nothing
        await wait_for(lambda: records(caplog, "api-unsettled"), what="the watch's end")
        line = records(caplog, "api-unsettled")[0].fields
        assert (line["saw"], line["after"], line["client_id"]) == ("hello,version", "0.2 s", None)
        writer.write(start_api(176, 3))                           # late, but relayed untouched
        assert (await read_message(reader))[0] == "15"
        assert not records(caplog, "api-start")
        writer.close()
    fake.close()
