"""`relay doctor` and `relay status`: pure parsers on recorded Windows output; the commands on loopback."""
import collections
import json
import os
import re
import socket
import subprocess
import sys

import pytest
from hypothesis import given, strategies as st

from helpers import Proc, bot_session, free_port, write_config
from relay import doctor, native_pump

HERE = os.path.dirname(__file__)
RELAY = [sys.executable, "-m", "relay"]

NETSH = """
Protocol tcp Port Exclusion Ranges

Start Port    End Port
----------    --------
      1433        1433
      7444        7543
     50000       50059     *

* - Administered port exclusions.

"""


def test_excluded_port_ranges_from_netsh():
    ranges = doctor.parse_excluded_ranges(NETSH)
    assert ranges == [(1433, 1433), (7444, 7543), (50000, 50059)]
    assert doctor.excluded(7497, ranges) == (7444, 7543)       # the reported case: TWS's own ports
    assert doctor.excluded(17497, ranges) is None
    assert doctor.parse_excluded_ranges("netsh: The following command was not found") == []


@pytest.mark.parametrize("name, label, ok", [
    ("tws.exe", "TWS", True), ("ibgateway.exe", "IB Gateway", True), ("javaw.exe", "Java", True),
    ("python.exe", "not TWS", False), ("relay.exe", "not TWS", False)])
def test_port_owner_classification(name, label, ok):
    what, is_tws = doctor.classify_owner(name)
    assert label in what and is_tws == ok


def test_firewall_rule_is_port_scoped_any_profile_private_ranges():
    rule = doctor.firewall_rule([17497, 17400, 17497])
    assert "-LocalPort 17400,17497" in rule and "-Profile Any" in rule and "172.16.0.0/12" in rule
    assert "-Direction Inbound" in rule and "-Action Allow" in rule


def run_cli(*args):
    return subprocess.run(RELAY + list(args), capture_output=True, text=True, timeout=60)


def test_doctor_host_side_passes_then_fails_when_tws_stops(tmp_path, stand_in_tws):
    tws_port, tws_proc = stand_in_tws
    conf, ports = write_config(tmp_path, tws_port)
    r = run_cli("doctor", "--side", "host", "--config", str(conf))
    assert r.returncode == 0, r.stdout
    # the stand-in TWS is a python process: doctor names the owner and warns (a warning does not fail)
    assert f"[WARN] tws-paper: target 127.0.0.1:{tws_port}: listening: python" in r.stdout
    assert "not TWS or IB Gateway" in r.stdout
    assert "[PASS] tws-paper: API handshake: TWS API answered: server version 176" in r.stdout
    assert f"[PASS] tws-paper: relay port {ports['listen']}: 127.0.0.1:{ports['listen']} can be bound" in r.stdout
    tws_proc.kill()
    r = run_cli("doctor", "--side", "host", "--config", str(conf), "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and doc["ok"] is False
    failed = [c for c in doc["checks"] if c["status"] == "fail"]
    assert failed[0]["detail"] == "nothing listens there" and "Enable ActiveX and Socket Clients" in failed[0]["fix"]


def test_doctor_reports_a_bad_config_and_a_busy_port(tmp_path, stand_in_tws):
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: [\n")
    r = run_cli("doctor", "--side", "host", "--config", str(bad))
    assert r.returncode == 1 and "[FAIL] config" in r.stdout and "YAML syntax error" in r.stdout
    conf, ports = write_config(tmp_path, stand_in_tws[0])
    with socket.create_server(("127.0.0.1", ports["listen"])):
        r = run_cli("doctor", "--side", "host", "--config", str(conf))
    assert r.returncode == 1 and "already listens" in r.stdout


def test_status_and_doctor_with_a_running_relay(tmp_path, stand_in_tws):
    conf, ports = write_config(tmp_path, stand_in_tws[0])
    relay = Proc(RELAY + ["serve", "--config", str(conf)])
    try:
        relay.wait_line("ready")
        bot = bot_session(ports["listen"], 9)
        relay.wait_line("api-start")
        r = run_cli("status", "--port", str(ports["status"]))
        assert r.returncode == 0, r.stderr
        assert f"route tws-paper: listening  127.0.0.1:{ports['listen']}" in r.stdout and "(target up)" in r.stdout
        assert "client_id 9 v176" in r.stdout and "127.0.0.1:" in r.stdout
        assert re.search(r", native pump \(\d+ threads? running\)\n" if native_pump.available() else ", python pump\n",
                         r.stdout), r.stdout
        doc = json.loads(run_cli("status", "--port", str(ports["status"]), "--json").stdout)
        (answer,) = doc["relays"]
        assert answer["config"] == str(conf) and answer["pid"] == relay.proc.pid
        (conn,) = answer["routes"][0]["connections"]
        assert conn["client_id"] == 9 and conn["peer"] == "127.0.0.1:%d" % bot.getsockname()[1]
        checked = run_cli("doctor", "--side", "host", "--config", str(conf))
        assert checked.returncode == 0, checked.stdout
        assert f"[PASS] relay running: pid {relay.proc.pid} serves this config" in checked.stdout
        assert f"[PASS] tws-paper: relay port {ports['listen']}: tws-paper is listening there in the running relay" \
            in checked.stdout
        wsl_side = run_cli("doctor", "--side", "wsl", "--host", "127.0.0.1", "--discovery-port", str(ports["discovery"]))
        assert wsl_side.returncode == 0, wsl_side.stdout
        assert f"[PASS] route tws-paper at 127.0.0.1:{ports['listen']}" in wsl_side.stdout
        bot.close()
    finally:
        relay.kill()


def test_status_without_a_relay_says_so():
    r = run_cli("status", "--port", str(free_port()))
    assert r.returncode == 1 and "no running relay found" in r.stderr


def test_doctor_passes_only_on_evidence_about_this_config(tmp_path, stand_in_tws):
    """An unrelated relay is running: doctor says which pid and config answered, and a port passes
    only when this config's route listens there (or it can be bound)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    other, other_ports = write_config(tmp_path / "a", stand_in_tws[0])
    mine, my_ports = write_config(tmp_path / "b", stand_in_tws[0])
    relay = Proc(RELAY + ["serve", "--config", str(other)])
    try:
        relay.wait_line("ready")
        r = run_cli("doctor", "--side", "host", "--config", str(mine))
        assert f"[WARN] relay running: no running relay serves {mine}; running: tws-relay pid {relay.proc.pid} " \
               f"(config {other})" in r.stdout, r.stdout
        assert f"relay port {my_ports['listen']}: 127.0.0.1:{my_ports['listen']} can be bound" in r.stdout
        assert "listening there in the running relay" not in r.stdout
        assert r.returncode == 0, r.stdout        # nothing is broken: the relay is just not started
        # this config's route port is held by the other relay: a failure naming it
        clash = tmp_path / "b" / "clash.yaml"
        clash.write_text(mine.read_text().replace(str(my_ports["listen"]), str(other_ports["listen"])))
        r = run_cli("doctor", "--side", "host", "--config", str(clash))
        assert r.returncode == 1
        assert f"[FAIL] tws-paper: relay port {other_ports['listen']}: held by another tws-relay pid " \
               f"{relay.proc.pid} (config {other})" in r.stdout, r.stdout
    finally:
        relay.kill()


PORTPROXY = """
Listen on ipv4:             Connect to ipv4:

Address         Port        Address         Port
--------------- ----------  --------------- ----------
0.0.0.0         7497        172.24.40.7     7497
127.0.0.1       8080        127.0.0.1       80
172.24.32.1     17497       127.0.0.1       7497

"""


def test_a_stale_portproxy_rule_on_a_tws_or_relay_port_is_named_with_its_removal():
    rules = doctor.parse_portproxy(PORTPROXY)
    assert rules[0] == doctor.PortProxy("0.0.0.0", 7497, "172.24.40.7", 7497) and len(rules) == 3
    checks = doctor.portproxy_checks(rules, tws_ports=[7496, 7497], relay_ports=[17497])
    assert [c.name for c in checks] == ["portproxy on 7497", "portproxy on 17497"]
    assert all(c.status == doctor.FAIL for c in checks)
    assert "TWS cannot bind its API port after a reboot" in checks[0].detail
    assert "netsh interface portproxy delete v4tov4 listenport=7497 listenaddress=0.0.0.0" in checks[0].fix
    assert "the relay cannot listen" in checks[1].detail
    assert doctor.parse_portproxy("The system cannot find the file specified.\n") == []


def test_the_ip_helper_service_holding_a_port_is_not_taken_for_tws():
    services = doctor.services_by_pid([("iphlpsvc", 2412), ("Winmgmt", 2412), ("Dnscache", 1880), ("Stopped", 0)])
    assert services == {2412: ["iphlpsvc", "Winmgmt"], 1880: ["Dnscache"]}
    what, ok = doctor.classify_owner("svchost.exe", services[2412])
    assert not ok and "IP Helper service (iphlpsvc" in what and "portproxy" in what
    assert doctor.classify_owner("svchost.exe", services[1880]) == ("svchost.exe, not TWS or IB Gateway", False)


def test_doctor_calls_a_wedged_tws_wedged(tmp_path):
    port = free_port()
    silent = Proc([sys.executable, os.path.join(HERE, "fake_tws.py"), str(port), "--host", "127.0.0.1",
                   "--mode", "silent"])
    try:
        silent.wait_line("listening")
        conf, ports = write_config(tmp_path, port, target_check="handshake")
        relay = Proc(RELAY + ["serve", "--config", str(conf)])
        try:
            wedged = relay.wait_line("target-wedged", timeout=15)         # the log line
            assert "no API version reply" in wedged and "restart TWS" in wedged
            st = run_cli("status", "--port", str(ports["status"]))        # the status state
            assert "route tws-paper: target-wedged" in st.stdout, st.stdout
            r = run_cli("doctor", "--side", "host", "--config", str(conf))  # the doctor verdicts
            assert r.returncode == 1
            assert "[FAIL] tws-paper: API handshake: TWS / IB Gateway accepted the connection but never answered" \
                in r.stdout and "fix: restart TWS / IB Gateway" in r.stdout, r.stdout
            assert "[FAIL] tws-paper: relay state: target-wedged" in r.stdout
        finally:
            relay.kill()
    finally:
        silent.kill()


# -- Windows output and adapters, as recorded there

NETSH_RANGES_DE = """
Protokoll tcp Portausschlussbereiche

Startport    Endport
----------    --------
      5357        5357
      7444        7543
     50000       50059     *

* - Verwaltete Portausschlüsse.

"""
NETSH_RANGES_JA = """
プロトコル tcp ポート除外範囲

開始ポート    終了ポート
----------    --------
      7444        7543
     50000       50059     *

* - 管理されているポートの除外。
"""
NETSH_PORTPROXY_JA = """
ipv4 をリッスンする:         ipv4 に接続する:

アドレス        ポート      アドレス        ポート
--------------- ----------  --------------- ----------
0.0.0.0         7497        172.24.32.1     7497
"""


@pytest.mark.parametrize("text, codepage", [(NETSH_RANGES_DE, 850), (NETSH_RANGES_JA, 932)])
def test_netsh_output_in_the_consoles_code_page_is_read(text, codepage):
    data = text.encode(f"cp{codepage}")
    with pytest.raises(UnicodeDecodeError):
        data.decode("cp1252" if codepage == 850 else "utf-8")      # what text mode would have done
    ranges = doctor.parse_excluded_ranges(doctor.console_text(data, codepage))
    assert (7444, 7543) in ranges and (50000, 50059) in ranges


def test_portproxy_rules_read_from_a_japanese_console():
    out = doctor.console_text(NETSH_PORTPROXY_JA.encode("cp932"), 932)
    assert doctor.parse_portproxy(out) == [doctor.PortProxy("0.0.0.0", 7497, "172.24.32.1", 7497)]


@given(st.binary(max_size=400), st.sampled_from([None, 437, 850, 932, 65001, 1252, 99999]))
def test_console_output_never_raises_whatever_its_bytes(data, codepage):
    text = doctor.console_text(data, codepage)
    doctor.parse_excluded_ranges(text)
    doctor.parse_portproxy(text)


@pytest.mark.parametrize("text, mode", [
    ("[wsl2]\nnetworkingMode=mirrored\n", "mirrored"),
    ("[wsl2]\r\nmemory=8GB\r\nNetworkingMode = Mirrored # since 22H2\r\n", "mirrored"),
    ("[wsl2]\nnetworkingMode=NAT\n", "nat"),
    ("[experimental]\nnetworkingMode=mirrored\n", None),          # read only from [wsl2]
    ("", None),
    (None, None),
])
def test_wslconfig_networking_mode(text, mode):
    assert doctor.wslconfig_mode(text) == mode


Addr = collections.namedtuple("snicaddr", "family address netmask broadcast ptp")
MIRRORED = {"Ethernet": [Addr(socket.AF_INET, "192.168.1.20", "255.255.255.0", None, None)],
            "vEthernet (Default Switch)": [Addr(socket.AF_INET, "172.29.64.1", "255.255.240.0", None, None)],
            "Loopback Pseudo-Interface 1": [Addr(socket.AF_INET, "127.0.0.1", "255.0.0.0", None, None)]}
NAT = {**MIRRORED, "vEthernet (WSL (Hyper-V firewall))": [Addr(socket.AF_INET, "172.24.32.1", "255.255.240.0",
                                                                None, None)]}


@pytest.mark.parametrize("wanted, if_addrs, mode, expected", [
    ([], MIRRORED, "mirrored", doctor.INFO),        # fixed-address routes: no adapter needed, no FAIL
    ([], MIRRORED, None, doctor.INFO),
    (["wsl"], MIRRORED, "mirrored", doctor.WARN),   # wsl: routes in mirrored mode never get an address
    (["wsl"], MIRRORED, "nat", doctor.FAIL),        # WSL not started yet
    (["wsl"], NAT, None, doctor.PASS),
    ([], NAT, None, doctor.PASS),
])
def test_the_wsl_adapter_check_fails_only_where_a_route_needs_it(wanted, if_addrs, mode, expected):
    (check,) = doctor.adapter_checks(wanted, if_addrs, {}, "win32", mode)
    assert check.status == expected, check


def test_no_adapter_check_on_linux_for_fixed_routes():
    assert doctor.adapter_checks([], NAT, {}, "linux", None) == []
