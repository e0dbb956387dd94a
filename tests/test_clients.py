"""Real client libraries from PyPI (ib_async, the official ibapi) through the relay to a stand-in TWS."""
import asyncio
import logging
import os
import sys
import time

import pytest

from fake_tws import FakeTws
from helpers import start_relay, wait_for
from relay.config import Endpoint

HERE = os.path.dirname(__file__)


def records(caplog, name):
    return [r for r in caplog.records if r.getMessage() == name]


async def bot(*argv, stdin=None):
    return await asyncio.create_subprocess_exec(sys.executable, *argv, stdin=stdin, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)


def env_file(tmp_path, port):
    path = tmp_path / ".env"
    path.write_text(f"IBKR_HOST_IP=127.0.0.1\nIBKR_PORT={port}\n")
    return str(path)


@pytest.mark.parametrize("library", ["ib_async", "ibapi"])
def test_client_library_through_relay(run, caplog, tmp_path, library):
    pytest.importorskip(library, reason=f"{library} comes with the test extras (pip install -e .[test])")

    async def main():
        fake = FakeTws()
        relay = await start_relay(Endpoint("127.0.0.1", await fake.start()))
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
        await relay.shutdown(0)
        fake.close()
    with caplog.at_level(logging.INFO, logger="relay"):
        run(main(), timeout=60)


@pytest.mark.parametrize("library", ["ib_async", "ibapi"])
def test_duplicate_client_id_gets_tws_error_326(run, caplog, tmp_path, library):
    """With reject_duplicate_client_id the newcomer gets TWS's own error 326 at once. ibapi hands it
    to the bot immediately; ib_async logs it at once but its connect() still returns only at its
    timeout (it waits for apiStart even after the peer closed, as it does with TWS itself)."""
    pytest.importorskip(library)

    async def main():
        fake = FakeTws()
        relay = await start_relay(Endpoint("127.0.0.1", await fake.start()), reject_duplicate_client_id=True)
        port = relay.routes[0].address.port
        env = env_file(tmp_path, port)
        first = await bot(os.path.join(HERE, "bot.py"), env, "5", "hold", stdin=asyncio.subprocess.PIPE)
        assert (await asyncio.wait_for(first.stdout.readline(), 30)).startswith(b"time")
        t0 = time.monotonic()
        if library == "ib_async":
            second = await bot(os.path.join(HERE, "bot.py"), env, "5")
        else:
            second = await bot(os.path.join(HERE, "ibapi_bot.py"), "127.0.0.1", str(port), "5")
        out = (await asyncio.wait_for(second.communicate(), 30))[0].decode()
        elapsed = time.monotonic() - t0
        assert second.returncode != 0 and "326" in out, out
        clash = records(caplog, "client-id-clash")[0].fields
        assert clash["client_id"] == 5 and "326" in clash["action"]
        first.stdin.close()
        await first.wait()
        await relay.shutdown(0)
        fake.close()
        return elapsed
    with caplog.at_level(logging.INFO, logger="relay"):
        elapsed = run(main(), timeout=60)
    if library == "ibapi":
        assert elapsed < 3, f"ibapi took {elapsed:.1f}s to see error 326"
