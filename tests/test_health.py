"""TWS health as the relay sees it: each session followed until TWS settles it, and a wedged TWS
(accepts TCP, never answers the API) noticed from real sessions and from the handshake check."""
import asyncio
import json
import socket
import time

from conftest import on_each_loop
from fake_tws import FakeTws
from helpers import REFUSED_WITHIN, relay_for, running, settings, wait_for
from tws_sessions import client_hello, start_api

from relay import tws
from relay.config import Config, Endpoint, Route
from relay.service import Relay


def records(caplog, name):
    return [r.fields for r in caplog.records if r.getMessage() == name]


async def opening(port, client_id, version_max=178):
    """A bot's opening: hello, version reply, startApi; returns (reader, writer, version)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(client_hello(157, version_max))
    size = int.from_bytes(await reader.readexactly(4), "big")
    version = int(tws.split_fields(await reader.readexactly(size))[0])
    writer.write(start_api(version, client_id))
    return reader, writer, version


async def status(relay):
    return json.loads(await relay.status_answer())


@on_each_loop
async def test_each_session_is_followed_until_tws_accepts_or_refuses(caplog):
    fake = FakeTws()
    async with relay_for(Endpoint("127.0.0.1", await fake.start())) as relay:
        port = relay.routes[0].address.port
        r, w, _ = await opening(port, 7)                       # accepted
        await wait_for(lambda: records(caplog, "api-ready"), what="api-ready")
        assert records(caplog, "api-ready")[0] == {"route": "test", "peer": records(caplog, "open")[0]["peer"],
                                                   "client_id": 7, "server_version": 176, "accounts": 1}
        assert "DU1234567" not in caplog.text                  # never the account numbers at info level
        (conn,) = (await status(relay))["routes"][0]["connections"]
        assert (conn["phase"], conn["reason"]) == ("api-ready", None)

        fake.mode = "refuse"                                   # TWS's own 326
        r2, w2, _ = await opening(port, 7)
        await wait_for(lambda: records(caplog, "api-refused"), what="api-refused")
        refused = records(caplog, "api-refused")[0]
        assert refused["code"] == 326 and "client id 7 is already in use" in refused["text"]

        fake.mode = "close"                                    # closes after startApi without a word
        r3, w3, _ = await opening(port, 8)
        assert await r3.read() == b""                          # as a bot does: EOF, then close
        w3.close()
        await wait_for(lambda: len(records(caplog, "api-refused")) == 2, what="second api-refused")
        assert "TWS closed the session after startApi without a message: clientId 8 already in use" \
            in records(caplog, "api-refused")[1]["reason"]
        for writer in (w, w2, w3):
            writer.close()
    fake.close()


@on_each_loop
async def test_a_silent_tws_after_start_api_gets_its_likely_causes_in_status(caplog):
    fake = FakeTws()
    async with relay_for(Endpoint("127.0.0.1", await fake.start())) as relay:
        port = relay.routes[0].address.port
        fake._answer_real = fake._answer
        fake._answer = lambda v, mid, f, w: True if mid == 71 else fake._answer_real(v, mid, f, w)   # startApi: silence
        r, w, _ = await opening(port, 4)
        await wait_for(lambda: (await_status := relay.routes[0].active) and
                       next(iter(await_status)).session.client_id == 4, what="startApi read")
        (conn,) = (await status(relay))["routes"][0]["connections"]
        assert conn["phase"] == "hello"
        w.close()                                              # the bot gives up, as at its timeout
        await wait_for(lambda: records(caplog, "api-refused"), what="api-refused")
        why = records(caplog, "api-refused")[0]["reason"]
        assert "stayed silent after startApi" in why and "'accept incoming connection?' dialog" in why
        assert "clientId 4 is already in use" in why
    fake.close()


@on_each_loop(timeout=40)
async def test_a_wedged_tws_is_noticed_from_a_real_session_and_the_route_refuses_until_it_answers(caplog):
    """Accepts TCP, never answers: the first bot's hello gets no version reply in 3 s; the route logs
    target-wedged once with what it saw, stops listening (the next bot is refused at once, not left
    to time out), and listens again as soon as TWS answers the handshake check."""
    fake = FakeTws(mode="silent")
    async with relay_for(Endpoint("127.0.0.1", await fake.start()), target_check="connect",
                         check_interval=0.2, check_interval_down=0.1) as relay:
        route = relay.routes[0]
        port = route.address.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(client_hello(157, 178))
        t0 = time.monotonic()
        await wait_for(lambda: records(caplog, "target-wedged"), timeout=10, what="target-wedged")
        # a loop may fire a timer up to one clock tick early
        assert tws.REPLY_TIMEOUT - 0.05 <= time.monotonic() - t0 < tws.REPLY_TIMEOUT + 1
        wedged = records(caplog, "target-wedged")[0]
        assert "got no version reply" in wedged["saw"] and "restart TWS" in wedged["note"]
        assert (await status(relay))["routes"][0]["state"] == "target-wedged"
        t1 = time.monotonic()
        try:
            await asyncio.open_connection("127.0.0.1", port)
            raise AssertionError("a wedged route still accepts")
        except ConnectionRefusedError:
            assert time.monotonic() - t1 < REFUSED_WITHIN
        checks = fake.hellos
        await wait_for(lambda: fake.hellos >= checks + 2, what="two handshake checks while wedged")
        assert len(records(caplog, "target-wedged")) == 1      # once per episode, not per check
        fake.mode = "normal"                                   # TWS answers again
        await wait_for(lambda: route.state == "listening" and route.server is not None, what="listening again")
        r2, w2, _ = await opening(port, 3)
        await wait_for(lambda: records(caplog, "api-ready"), what="api-ready after the wedge")
        # healthy again: connect checks only, no handshake probes (TWS's log stays clean)
        hellos, accepted = fake.hellos, fake.accepted
        await wait_for(lambda: fake.accepted >= accepted + 5, what="five connect checks")
        assert fake.hellos == hellos
        writer.close()
        w2.close()
    fake.close()


@on_each_loop(timeout=30)
async def test_handshake_check_sees_a_wedged_tws_with_no_bot_at_all(caplog):
    fake = FakeTws(mode="silent")
    async with relay_for(Endpoint("127.0.0.1", await fake.start()), target_check="handshake",
                         check_interval=0.2, check_interval_down=0.1) as relay:
        assert relay.routes[0].state == "target-wedged" and relay.routes[0].server is None
        assert "no API version reply" in records(caplog, "target-wedged")[0]["saw"]
        fake.mode = "normal"
        await wait_for(lambda: relay.routes[0].state == "listening", what="listening")
        fake.close()
        fake.mode = "silent"


@on_each_loop(timeout=30)
async def test_with_checks_off_a_wedged_tws_is_reported_and_clears_on_the_next_answer(caplog):
    fake = FakeTws(mode="silent")
    async with relay_for(Endpoint("127.0.0.1", await fake.start()), target_check="off") as relay:
        port = relay.routes[0].address.port
        _, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(client_hello(157, 178))
        await wait_for(lambda: records(caplog, "target-wedged"), timeout=10, what="target-wedged")
        assert "target_check is off" in records(caplog, "target-wedged")[0]["note"]
        fake.mode = "normal"
        r2, w2, _ = await opening(port, 2)                     # still listening: no checks to clear it
        await wait_for(lambda: records(caplog, "target-answers"), what="target-answers")
        assert relay.routes[0].state == "listening"
        w.close()
        w2.close()
    fake.close()


@on_each_loop
async def test_a_healthy_target_is_probed_at_its_own_interval_while_another_route_is_down():
    """check_interval_down speeds up the checks of the route that is down, not of a healthy TWS
    beside it: its own log must not fill with probes."""
    probes = []
    healthy = await asyncio.start_server(lambda r, w: (probes.append(1), w.close()), "127.0.0.1", 0)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))            # bound, never listening: refused at once
    routes = tuple(Route(name=n, listen=Endpoint("127.0.0.1", 0), target=t, max_connections=4)
                   for n, t in (("up", Endpoint("127.0.0.1", healthy.sockets[0].getsockname()[1])),
                                ("down", Endpoint("127.0.0.1", closed.getsockname()[1]))))
    relay = Relay(Config(routes=routes, settings=settings(target_check="connect", check_interval=30,
                                                          check_interval_down=0.05)), if_addrs={})
    ticks = []
    real_tick = relay.tick
    relay.tick = lambda: (ticks.append(1), real_tick())[1]
    async with running(relay):
        await wait_for(lambda: len(ticks) >= 20, what="20 supervisor ticks")
        assert relay.routes[1].state == "target-down"
        assert len(probes) == 1, f"the healthy target was probed {len(probes)} times in {len(ticks)} ticks"
    healthy.close()
    closed.close()
