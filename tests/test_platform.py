"""Pure platform logic fed with recorded data: socket option plans, interface subnets, bind hints,
loop choice, signal plan, log rate limit and formats."""
import errno
import io
import ipaddress
import json
import logging
import socket
from collections import namedtuple

import pytest

from conftest import linux_only, windows_only
from relay import hostnet, logs, loops, runner, sockopts
from relay import config as cfg
from relay.config import Keepalive

KA = Keepalive(idle=10, interval=5, count=3)


def names(plan):
    return [(o.what, o.value) for o in plan]


def test_linux_plan_sets_keepalive_timings_and_user_timeout_in_ms():
    assert names(sockopts.plan("linux", KA, 30)) == [
        ("SO_KEEPALIVE", 1), ("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5),
        ("TCP_KEEPCNT", 3), ("TCP_USER_TIMEOUT", 30000)]
    assert "TCP_USER_TIMEOUT" not in dict(names(sockopts.plan("linux", KA, 0)))


def test_windows_plan_uses_windows_numbers_maxrt_and_ioctl_fallback():
    plan = sockopts.plan("win32", KA, 30)
    by = {o.what: o for o in plan}
    assert by["SO_KEEPALIVE"].level == 0xFFFF and by["SO_KEEPALIVE"].name == 8
    assert (by["TCP_KEEPIDLE"].name, by["TCP_KEEPINTVL"].name, by["TCP_KEEPCNT"].name) == (3, 17, 16)
    assert (by["TCP_MAXRT"].name, by["TCP_MAXRT"].value) == (5, 30)     # seconds on Windows
    fb = by["TCP_KEEPIDLE"].fallback
    assert fb.what == "SIO_KEEPALIVE_VALS" and fb.level is None
    assert fb.name == 0x98000004 and fb.value == (1, 10000, 5000)       # on, idle ms, interval ms


def test_macos_plan():
    assert [o.what for o in sockopts.plan("darwin", KA, 30)][1:] == [
        "TCP_KEEPALIVE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_RXT_CONNDROPTIME"]


@linux_only
def test_linux_plan_really_applies_to_a_socket():
    with socket.socket() as s:
        assert sockopts.apply(s, sockopts.plan("linux", Keepalive(7, 3, 4), 12.5)) == []
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 12500


def test_apply_tries_fallback_then_reports_what_failed():
    good = sockopts.Opt("SO_KEEPALIVE", socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    bad = sockopts.Opt("BOGUS", socket.IPPROTO_TCP, 9999, 1, fallback=good)
    worse = sockopts.Opt("WORSE", socket.IPPROTO_TCP, 9998, 1)
    with socket.socket() as s:
        assert sockopts.apply(s, [bad, worse]) == ["WORSE"]
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1


# psutil.net_if_addrs()-shaped records, as seen on Windows with the WSL adapter and on Linux
Addr = namedtuple("snicaddr", "family address netmask broadcast ptp")
AF_LINK = -1
WINDOWS_IFS = {
    "Ethernet": [Addr(AF_LINK, "00-15-5D-01-02-03", None, None, None),
                 Addr(socket.AF_INET, "192.168.1.20", "255.255.255.0", None, None)],
    "vEthernet (WSL (Hyper-V firewall))": [Addr(socket.AF_INET, "172.24.32.1", "255.255.240.0", None, None),
                                           Addr(socket.AF_INET6, "fe80::1%23", "ffff:ffff:ffff:ffff::", None, None)],
    "Loopback Pseudo-Interface 1": [Addr(socket.AF_INET, "127.0.0.1", "255.0.0.0", None, None),
                                    Addr(socket.AF_INET6, "::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None, None)],
}


def test_default_allow_is_loopback_plus_listen_subnet_only():
    nets = hostnet.default_allow("172.24.32.1", WINDOWS_IFS)
    assert [str(n) for n in nets] == ["127.0.0.0/8", "::1/128", "172.24.32.0/20"]
    assert hostnet.allowed("172.24.40.7", nets)
    assert not hostnet.allowed("192.168.1.50", nets)          # the LAN is not let in
    assert hostnet.allowed("::ffff:172.24.33.2", nets)         # IPv4-mapped peers are mapped
    assert not hostnet.allowed("garbage", nets)
    assert [str(n) for n in hostnet.default_allow("127.0.0.1", WINDOWS_IFS)] == ["127.0.0.0/8", "::1/128"]


def test_wildcard_default_allow_covers_every_interface():
    nets = {str(n) for n in hostnet.default_allow("0.0.0.0", WINDOWS_IFS)}
    assert {"192.168.1.0/24", "172.24.32.0/20", "fe80::/64"} <= nets


@pytest.mark.parametrize("err, words", [
    (OSError(errno.EADDRINUSE, "in use"), "already listens"),
    (OSError(errno.EADDRNOTAVAIL, "x"), "not an address of this machine"),
    (OSError(errno.EACCES, "x"), "excludedportrange"),
    (OSError(errno.ENOBUFS, "No buffer space"), "cannot listen"),
])
def test_bind_hints(err, words):
    assert words in hostnet.bind_hint(err, "172.24.32.1", 17497)


def test_bind_hints_for_windows_error_codes():
    for code, words in ((10048, "already listens"), (10049, "start WSL first"), (10013, "Hyper-V excluded")):
        err = OSError(0, "winsock")
        err.winerror = code
        assert words in hostnet.bind_hint(err, "172.24.32.1", 17497)


@pytest.mark.parametrize("requested, platform, installed, expect", [
    ("auto", "linux", {"uvloop": "0.23.0"}, "uvloop"),
    ("auto", "linux", {"uvloop": "0.19.0"}, "asyncio"),
    ("auto", "linux", {"uvloop": None}, "asyncio"),
    ("auto", "win32", {"winloop": "0.1.8"}, "winloop"),
    ("auto", "win32", {"uvloop": "0.23.0", "winloop": None}, "asyncio"),
    ("asyncio", "linux", {"uvloop": "0.23.0"}, "asyncio"),
    ("uvloop", "darwin", {"uvloop": "1.0.0"}, "uvloop"),
])
def test_loop_choice(requested, platform, installed, expect):
    assert loops.choose(requested, platform, installed)[0] == expect


@pytest.mark.parametrize("requested, platform, installed, words", [
    ("uvloop", "win32", {"uvloop": "0.23.0"}, "does not run on Windows"),
    ("uvloop", "linux", {"uvloop": None}, "not installed"),
    ("uvloop", "linux", {"uvloop": "0.22.1"}, "too old"),
    ("winloop", "win32", {"winloop": None}, "not installed"),
])
def test_loop_choice_errors(requested, platform, installed, words):
    with pytest.raises(loops.LoopError, match=words):
        loops.choose(requested, platform, installed)


def test_signal_plan_avoids_add_signal_handler_on_windows():
    assert runner.signal_plan("win32") == ("signal", ["SIGINT", "SIGTERM", "SIGBREAK"])
    assert runner.signal_plan("linux") == ("loop", ["SIGINT", "SIGTERM"])


def test_rate_limit_allows_a_burst_then_reports_what_it_held_back():
    now = [0.0]
    rl = logs.RateLimit(burst=2, window=10, clock=lambda: now[0])
    assert [rl.allow("k") for _ in range(5)] == [(True, 0), (True, 0), (False, 0), (False, 0), (False, 0)]
    assert rl.allow("other") == (True, 0)
    now[0] = 10.0
    assert rl.allow("k") == (True, 3)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_formats(fmt):
    buf = io.StringIO()
    logs.setup("info", fmt, buf)
    try:
        log = logging.getLogger("relay")
        logs.event(log, logging.INFO, "open", route="tws-paper", peer="172.24.40.7:50000", note="two words")
        logs.event(log, logging.DEBUG, "hidden")
    finally:
        logging.getLogger("relay").handlers[:] = []
        logging.getLogger("relay").propagate = True
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    if fmt == "json":
        doc = json.loads(lines[0])
        assert doc["event"] == "open" and doc["peer"] == "172.24.40.7:50000" and doc["level"] == "info"
    else:
        assert lines[0].endswith('open route=tws-paper peer=172.24.40.7:50000 note="two words"')


def test_ipv6_netmask_forms():
    ifs = {"eth0": [Addr(socket.AF_INET6, "fd00::5", "ffff:ffff:ffff:ff00::", None, None)]}
    assert hostnet.subnets_of("fd00::5", ifs) == [ipaddress.ip_network("fd00::/56")]


# -- the real Windows calls: these run only on Windows (the fork CI's windows job)

@windows_only
def test_windows_plan_really_applies_to_a_socket():
    """TCP_KEEPIDLE/INTVL/CNT (Windows 10 1709+; else the SIO_KEEPALIVE_VALS ioctl) and TCP_MAXRT."""
    with socket.socket() as s:
        assert sockopts.apply(s, sockopts.plan("win32", Keepalive(7, 3, 4), 30)) == []
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    with socket.socket() as s:     # the ioctl the plan falls back to is accepted too
        s.ioctl(socket.SIO_KEEPALIVE_VALS, (1, 7000, 3000))


@windows_only
def test_sigbreak_is_caught_as_the_signal_plan_says():
    import signal
    how, wanted = runner.signal_plan("win32")
    assert how == "signal" and "SIGBREAK" in wanted
    previous = signal.signal(signal.SIGBREAK, lambda *a: None)
    signal.signal(signal.SIGBREAK, previous)


@windows_only
def test_config_and_logs_are_found_under_the_real_appdata_folders():
    import os
    env = dict(os.environ)
    assert cfg.config_candidates(None, os.getcwd(), "win32", env)[1] == env["APPDATA"] + "\\relay\\relay.yaml"
    assert logs.default_log_file("win32", env) == env["LOCALAPPDATA"] + "\\relay\\logs\\relay.log"


@windows_only
def test_psutil_names_adapters_by_their_friendly_names():
    import psutil
    names_ = list(psutil.net_if_addrs())
    assert any("Loopback Pseudo-Interface" in n for n in names_), names_


WINDOWS_ENV = {"LOCALAPPDATA": "C:\\Users\\me\\AppData\\Local", "USERPROFILE": "C:\\Users\\me"}


@pytest.mark.parametrize("folder, private", [
    ("C:\\Users\\me\\AppData\\Local\\relay\\run", True),         # the default
    ("c:\\users\\ME\\appdata\\local\\relay\\run", True),         # Windows paths ignore case
    ("C:\\Users\\me\\relay-run", True),
    ("C:\\Users\\me\\AppData\\LocalLow\\relay", True),           # still inside the profile
    ("C:\\Users\\me2\\relay", False),                            # a prefix, not a parent
    ("C:\\relay-run", False),
    ("C:\\ProgramData\\relay", False),
    ("\\\\server\\share\\relay", False),
    ("C:\\Users\\me\\..\\Public\\relay", False),                 # .. leaves the profile
])
def test_on_windows_only_a_run_folder_inside_the_profile_holds_the_secret(folder, private):
    from relay import registry
    assert registry.private(folder, "win32", WINDOWS_ENV) == private
