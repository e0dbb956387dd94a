"""The splice's conformance checks, run against every variant on both event loops: TWS-aware
(the default) and plain, each on the native pump where it is built, the native pump polling busily,
and the Python pump."""
import pytest
from hypothesis import given, settings, strategies as st

import conformance
from tws_sessions import session
from helpers import native_pump_missing, start_relay


def _variant(native: bool, **kw):
    def make(target):
        return start_relay(target, pump="auto" if native else "python", **kw)
    make.native = native
    return make


VARIANTS = {
    "tws-aware": _variant(True),                     # the default
    "plain": _variant(True, tws_aware=False),
    "busy-poll": _variant(True, busy_poll=200),
    "python-pump": _variant(False),
}


@pytest.fixture(scope="session", params=sorted(VARIANTS))
def make_relay(request):
    make = VARIANTS[request.param]
    missing = native_pump_missing() if make.native else None
    if missing:
        pytest.skip(missing)
    return make


chunks = st.lists(st.binary(min_size=1, max_size=48 * 1024), max_size=6)


@given(up=chunks, down=chunks, order=st.sampled_from(["client-first", "server-first", "both"]))
@settings(max_examples=25)
def test_bytes_exact_any_chunking_and_close_order(run, make_relay, up, down, order):
    run(conformance.check_exact(make_relay, up, down, order), timeout=10)


def test_large_transfer_exact_both_ways(run, make_relay):
    import random
    rnd = random.Random(7)
    up = [rnd.randbytes(rnd.randint(1, 300_000)) for _ in range(20)]
    down = [rnd.randbytes(rnd.randint(1, 300_000)) for _ in range(20)]
    run(conformance.check_exact(make_relay, up, down, "both"))


@pytest.mark.parametrize("who_first", ["client", "server"])
def test_half_close_is_forwarded(run, make_relay, who_first):
    run(conformance.check_half_close(make_relay, who_first))


@pytest.mark.parametrize("direction", ["up", "down"])
def test_slow_reader_bounds_memory(run, make_relay, direction):
    run(conformance.check_slow_reader(make_relay, direction))


@pytest.mark.parametrize("how", conformance.CLOSE_HOWS)
def test_close_or_reset_closes_other_leg(run, make_relay, how):
    run(conformance.check_close_propagates(make_relay, how))


@given(version=st.sampled_from([176, 205, 213]), up=chunks, down=chunks,
       cuts=st.lists(st.integers(1, 60), max_size=5))
@settings(max_examples=25)
def test_tws_session_bytes_exact_while_the_opening_is_read(run, make_relay, version, up, down, cuts):
    """A real TWS opening split anywhere, then arbitrary bytes: nothing is changed or delayed away."""
    client, server, _ = session(version, 11)
    pieces = []
    last = 0
    for c in sorted(set(min(c, len(client)) for c in cuts)):
        pieces.append(client[last:c])
        last = c
    pieces.append(client[last:])
    run(conformance.check_exact(make_relay, [p for p in pieces if p] + up, [server] + down, "both"), timeout=10)
