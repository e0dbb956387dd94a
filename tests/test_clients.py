"""Real client libraries from PyPI (ib_async, the official ibapi) through the relay to a stand-in TWS."""
import asyncio
import os
import sys
import time

import pytest

from conftest import on_each_loop
from fake_tws import FakeTws
from helpers import records, relay_for, wait_for
from relay.config import Endpoint

HERE = os.path.dirname(__file__)


async def bot(*argv, stdin=None):
    return await asyncio.create_subprocess_exec(sys.executable, *argv, stdin=stdin, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)


def env_file(tmp_path, port):
    path = tmp_path / ".env"
    path.write_text(f"IBKR_HOST_IP=127.0.0.1\nIBKR_PORT={port}\n")
    return str(path)


@pytest.mark.parametrize("library", ["ib_async", "ibapi"])
@on_each_loop(timeout=60)
async def test_client_library_through_relay(caplog, tmp_path, library):
    pytest.importorskip(library, reason=f"{library} comes with the test extras (pip install -e .[test])")

    fake = FakeTws()
    async with relay_for(Endpoint("127.0.0.1", await fake.start())) as relay:
        port = relay.routes[0].address.port
        if library == "ib_async":
            proc = await bot(os.path.join(HERE, "bot.py"), env_file(tmp_path, port), "21")
        else:
            proc = await bot(os.path.join(HERE, "ibapi_bot.py"), "127.0.0.1", str(port), "21")
        out = (await asyncio.wait_for(proc.communicate(), 30))[0].decode()
        assert proc.returncode == 0, out
        assert abs(int(out.split("time ")[1].split()[0]) - time.time()) < 60
        await wait_for(lambda: records(caplog, "close"), what="close line")
        start = records(caplog, "api-start")[0].fields
        assert start["client_id"] == 21
        assert start["server_version"] == (176 if library == "ib_async" else 157)   # negotiated per client
        assert fake.client_ids == [21]
    fake.close()


def test_duplicate_client_id_gets_tws_error_326_at_once_in_ibapi(run, caplog, tmp_path):
    """With reject_duplicate_client_id the newcomer gets TWS's own error 326 at once, and ibapi hands
    it to the bot immediately. (ib_async logs it at once, but its connect() still returns only at its
    timeout, as it does when TWS itself refuses: test_error_326_..._in_every_form covers it.)"""
    pytest.importorskip("ibapi")

    async def main():
        fake = FakeTws()
        async with relay_for(Endpoint("127.0.0.1", await fake.start()), reject_duplicate_client_id=True) as relay:
            port = relay.routes[0].address.port
            env = env_file(tmp_path, port)
            first = await bot(os.path.join(HERE, "bot.py"), env, "5", "hold", stdin=asyncio.subprocess.PIPE)
            assert (await asyncio.wait_for(first.stdout.readline(), 30)).startswith(b"time")
            t0 = time.monotonic()
            second = await bot(os.path.join(HERE, "ibapi_bot.py"), "127.0.0.1", str(port), "5")
            out = (await asyncio.wait_for(second.communicate(), 30))[0].decode()
            elapsed = time.monotonic() - t0
            assert second.returncode != 0 and "326" in out, out
            clash = records(caplog, "client-id-clash")[0].fields
            assert clash["client_id"] == 5 and "326" in clash["action"]
            first.stdin.close()
            await first.wait()
        fake.close()
        return elapsed
    elapsed = run(main(), timeout=60)
    assert elapsed < 3, f"ibapi took {elapsed:.1f}s to see error 326"


async def hold_client_id(port: int, version: int, client_id: int):
    """A session that holds `client_id`, speaking the form of `version` (raw socket)."""
    from relay import tws as t
    from tws_sessions import start_api
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(t.client_hello(100, version))
    size = int.from_bytes(await reader.readexactly(4), "big")
    assert int(t.split_fields(await reader.readexactly(size))[0]) == version
    writer.write(start_api(version, client_id))
    await reader.readexactly(4)           # TWS's first answer: the session is up
    return writer


# (library, official build or None for the PyPI default, stand-in TWS capped at this server version)
CASES_326 = [("ib_async", None, 157), ("ib_async", None, 176), ("ibapi", None, 157),
             ("ibapi", "ibapi-latest", 157), ("ibapi", "ibapi-latest", 176), ("ibapi", "ibapi-latest", 196),
             ("ibapi", "ibapi-latest", 205), ("ibapi", "ibapi-latest", 226), ("ibapi", "ibapi-stable", 196),
             ("ibapi", "ibapi-stable", 226), ("ibapi", "nautilus-ibapi", 205), ("ibapi", "nautilus-ibapi", 225)]


@pytest.mark.parametrize("library, build, version", CASES_326)
def test_error_326_from_the_relay_decodes_as_326_in_every_form(tmp_path, caplog, official_ibapi, library, build,
                                                              version):
    """reject_duplicate_client_id: the newcomer gets error 326 in its session's own form (text with a
    version field below 194, without it from 194, a raw message id from 201, protobuf from 213),
    decoded by the client library's own decoder as code 326 with TWS's text."""
    pytest.importorskip("ib_async" if library == "ib_async" else "ibapi")
    env = dict(os.environ, BOT_TIMEOUT="2")     # ib_async's connect() waits its timeout even after a 326
    if build:
        env["PYTHONPATH"] = official_ibapi(build) + os.pathsep + env.get("PYTHONPATH", "")

    async def main():
        fake = FakeTws(version=version)
        async with relay_for(Endpoint("127.0.0.1", await fake.start()), reject_duplicate_client_id=True) as relay:
            port = relay.routes[0].address.port
            holder = await hold_client_id(port, version, 5)
            argv = ([os.path.join(HERE, "bot.py"), env_file(tmp_path, port), "5"] if library == "ib_async" else
                    [os.path.join(HERE, "ibapi_bot.py"), "127.0.0.1", str(port), "5"])
            proc = await asyncio.create_subprocess_exec(sys.executable, *argv, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.STDOUT, env=env)
            out = (await asyncio.wait_for(proc.communicate(), 30))[0].decode()
            holder.close()
        fake.close()
        return out
    out = asyncio.run(main())
    if library == "ib_async":
        assert "Error 326, reqId -1: Unable to connect as the client id 5 is already in use" in out, out
    else:
        assert "error 326 Unable to connect as the client id 5 is already in use" in out, out
    clash = records(caplog, "client-id-clash")[0].fields
    from relay import tws as t
    assert clash["action"] == f"answered with error 326 ({t.error_form(version)}) and closed"
    refused = [r.fields for r in caplog.records if r.getMessage() == "api-ready"]
    assert len(refused) == 1        # the holder was accepted; the newcomer never reached TWS's answer


@pytest.mark.parametrize("answer", ["reset", "tws-error"])
def test_ib_async_waits_its_timeout_on_an_accepted_connection_whatever_follows(run, answer):
    """Why a route stops listening while TWS is down (a refused connect fails ib_async at once), and
    why accepting and then resetting, or answering with TWS's own error, is no fast failure on
    Windows, where stealth mode leaves a closed port silent (docs/wsl.md, 'failing fast')."""
    ib_async = pytest.importorskip("ib_async")
    import socket
    import struct
    from tws_sessions import error, version_reply

    async def main():
        async def serve(reader, writer):
            if answer == "reset":
                writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            await reader.readexactly(4)
            await reader.readexactly(struct.unpack(">I", await reader.readexactly(4))[0])
            writer.write(version_reply(176) + error(176, 502, "Couldn't connect to TWS. Confirm that API is enabled"))
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        ib = ib_async.IB()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await ib.connectAsync("127.0.0.1", server.sockets[0].getsockname()[1], clientId=1, timeout=1)
        waited = loop.time() - t0
        server.close()
        return waited
    assert run(main()) >= 0.9
