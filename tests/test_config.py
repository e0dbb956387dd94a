import os

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from relay import config as cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINIMAL = "routes:\n  - name: a\n    listen: 127.0.0.1:17497\n    target: 127.0.0.1:7497\n"


def error_of(text: str) -> cfg.ConfigError:
    with pytest.raises(cfg.ConfigError) as e:
        cfg.parse(text, "relay.yaml")
    return e.value


def test_shipped_relay_yaml_is_valid_and_never_reuses_a_tws_port():
    config = cfg.load(os.path.join(ROOT, "relay.yaml"))
    names = {r.name: r for r in config.routes}
    assert set(names) == {"tws-paper", "tws-live", "gateway-live", "gateway-paper"}
    assert {r.target.port for r in config.routes} == {7497, 7496, 4001, 4002}
    tws_ports = {7496, 7497, 4001, 4002}
    assert not {r.listen.port for r in config.routes} & tws_ports
    assert all(r.interface == "wsl" for r in config.routes)     # follows the WSL adapter
    assert config.settings == cfg.Settings()   # the file documents the defaults truthfully


def test_minimal_config_gets_defaults():
    c = cfg.parse(MINIMAL)
    (r,) = c.routes
    assert r.listen == cfg.Endpoint("127.0.0.1", 17497) and r.target == cfg.Endpoint("127.0.0.1", 7497)
    assert r.allow is None and r.max_connections == 32
    assert c.settings.keepalive == cfg.Keepalive(10, 5, 3)


@pytest.mark.parametrize("text, path, words", [
    ("routes: [", "line 1, column", "YAML syntax error"),
    ("", "", "empty"),
    ("- a\n- b\n", "", "expected a mapping"),
    ("route: []\n", "route", "did you mean 'routes'"),
    ("routes: []\n", "routes", "non-empty list"),
    ("routes:\n  - name: a\n    listen: 127.0.0.1:17497\n", "routes[0].target", "missing required key"),
    (MINIMAL.replace("17497", "70000"), "routes[0].listen", "out of range"),
    (MINIMAL.replace("127.0.0.1:7497", "127.0.0.1"), "routes[0].target", "is not HOST:PORT"),
    (MINIMAL.replace("127.0.0.1:17497", "wsl.local:17497"), "routes[0].listen", "must be an IP address"),
    (MINIMAL + "    allow: [172.24.32.1/20]\n", "routes[0].allow[0]", "did you mean 172.24.32.0/20"),
    (MINIMAL + "    allow: [nonsense]\n", "routes[0].allow[0]", "is not a CIDR"),
    (MINIMAL + "    allow: []\n", "routes[0].allow", "refuse every client"),
    (MINIMAL + "    max_connections: 0\n", "routes[0].max_connections", "out of range"),
    (MINIMAL + "    max_connections: true\n", "routes[0].max_connections", "whole number"),
    (MINIMAL + "    colour: blue\n", "routes[0].colour", "unknown key"),
    (MINIMAL + "  - name: a\n    listen: 127.0.0.1:17498\n    target: 127.0.0.1:7497\n", "routes[1].name", "already used"),
    (MINIMAL + "  - name: b\n    listen: 127.0.0.1:17497\n    target: 127.0.0.1:7496\n", "routes[1].listen", "clashes"),
    (MINIMAL.replace("127.0.0.1:17497", "0.0.0.0:17497") + "  - name: b\n    listen: 127.0.0.1:17497\n"
     "    target: 127.0.0.1:7496\n", "routes[1].listen", "clashes"),
    (MINIMAL + "connect_timeout: -1\n", "connect_timeout", "out of range"),
    (MINIMAL + "connect_timeout: .nan\n", "connect_timeout", "out of range"),
    (MINIMAL + "keepalive: {idle: 0}\n", "keepalive.idle", "out of range"),
    (MINIMAL + "keepalive: {idel: 3}\n", "keepalive.idel", "did you mean 'idle'"),
    (MINIMAL + "log: {format: xml}\n", "log.format", "not one of"),
    (MINIMAL + "expose_to_all_networks: yes please\n", "expose_to_all_networks", "true or false"),
    (MINIMAL + "loop: fast\n", "loop", "not one of"),
    (MINIMAL + "pump: fast\n", "pump", "not one of"),
    (MINIMAL + "pump_threads: 0\n", "pump_threads", "out of range (1-64)"),
    (MINIMAL + "pump_threads: many\n", "pump_threads", "or 'auto'"),
    (MINIMAL + "pump_threads: 1.5\n", "pump_threads", "whole number"),
    (MINIMAL + "busy_poll: 1001\n", "busy_poll", "out of range (0-1000)"),
    (MINIMAL + "busy_poll: -1\n", "busy_poll", "out of range (0-1000)"),
    (MINIMAL + "busy_poll: 0.5\n", "busy_poll", "whole number"),
    (MINIMAL + "busy_poll: true\n", "busy_poll", "whole number"),
    (MINIMAL + "discovery_port: 17497\n", "routes[0].listen", "is the discovery port"),
    (MINIMAL + "discovery_port: yes please\n", "discovery_port", "whole number"),
    (MINIMAL + "connect_timeout: 3\nconnect_timeout: 4\n", "line 6", "duplicate key 'connect_timeout'"),
    ("!!python/object:os.system {}\n", "line 1", "YAML"),
])
def test_each_problem_names_file_key_and_what_is_wrong(text, path, words):
    e = error_of(text)
    assert e.source == "relay.yaml"
    assert e.path.startswith(path)
    assert words in e.problem
    assert str(e).startswith("relay.yaml: ")
    assert "\n" not in str(e)


@pytest.mark.parametrize("target, listen, loops", [
    ("127.0.0.1:17000", "127.0.0.1:17000", True),
    ("127.0.0.1:17000", "127.0.0.1:17001", False),
    ("localhost:17000", "127.0.0.1:17000", True),
    ("127.0.0.1:17000", "0.0.0.0:17000", True),          # a wildcard listens on loopback too
    ("172.24.32.1:17000", "0.0.0.0:17000", True),
    ("[::1]:17000", "0.0.0.0:17000", False),             # another family
    ("[::1]:17000", "[::]:17000", True),
    ("0.0.0.0:17000", "127.0.0.1:17000", True),          # connecting to 0.0.0.0 reaches loopback
    ("172.24.32.1:17000", "172.24.32.1:17000", True),
    ("172.24.32.1:17000", "127.0.0.1:17000", False),
    ("tws.example:17000", "127.0.0.1:17000", False),     # a name is not resolved here
])
def test_which_targets_reach_a_listen_address(target, listen, loops):
    to, at = cfg.parse_endpoint(target, "t", listen=False), cfg.parse_endpoint(listen, "l", listen=True)
    assert cfg.reaches(to, at) == loops


@pytest.mark.parametrize("routes, path, words", [
    ("  - {name: x, listen: 127.0.0.1:17000, target: 127.0.0.1:17000}\n", "routes[0].target", "its own listen address"),
    ("  - {name: a, listen: 127.0.0.1:17001, target: 127.0.0.1:7497}\n"
     "  - {name: b, listen: 127.0.0.1:17002, target: 127.0.0.1:17001}\n", "routes[1].target", "where route 'a' listens"),
    ("  - {name: a, listen: 127.0.0.1:17001, target: 127.0.0.1:17002}\n"
     "  - {name: b, listen: 127.0.0.1:17002, target: 127.0.0.1:7497}\n", "routes[0].target", "where route 'b' listens"),
])
def test_a_target_where_the_relay_listens_is_refused(routes, path, words):
    e = error_of("routes:\n" + routes)
    assert e.path == path and words in e.problem and "Point it at TWS" in e.problem


def test_adapter_routes_are_checked_at_run_time_not_here():
    c = cfg.parse("routes:\n  - {name: w, listen: 'wsl:17000', target: 172.24.32.1:17000}\n")
    assert c.routes[0].interface == "wsl"


def test_target_check_off_survives_yaml_booleans():
    assert cfg.parse(MINIMAL + "target_check: off\n").settings.target_check == "off"
    assert cfg.parse(MINIMAL + "target_check: handshake\n").settings.target_check == "handshake"
    assert cfg.parse(MINIMAL + "target_check: true\n").settings.target_check == "connect"


def test_pump_threads_auto_or_a_number():
    assert cfg.parse(MINIMAL).settings.pump_threads == 0 == cfg.parse(MINIMAL + "pump_threads: auto\n").settings.pump_threads
    assert cfg.parse(MINIMAL + "pump_threads: 3\n").settings.pump_threads == 3


def test_busy_poll_is_off_unless_asked_for():
    assert cfg.parse(MINIMAL).settings.busy_poll == 0
    assert cfg.parse(MINIMAL + "busy_poll: 200\n").settings.busy_poll == 200


def test_listen_forms_for_adapters():
    c = cfg.parse("routes:\n - {name: a, listen: 'WSL:17497', target: '127.0.0.1:7497'}\n"
                  " - {name: b, listen: {interface: 'vEthernet (WSL)', port: 17496}, target: '127.0.0.1:7496'}\n")
    assert [(r.interface, r.listen.port) for r in c.routes] == [("wsl", 17497), ("vEthernet (WSL)", 17496)]
    with pytest.raises(cfg.ConfigError, match="routes\\[1\\].listen: wsl:17497 clashes"):
        cfg.parse("routes:\n - {name: a, listen: 'wsl:17497', target: 'x:1'}\n"
                  " - {name: b, listen: 'wsl:17497', target: 'x:2'}\n")
    with pytest.raises(cfg.ConfigError, match="listen.interface"):
        cfg.parse("routes:\n - {name: a, listen: {port: 1}, target: 'x:1'}\n")


def test_discovery_port_default_off_and_custom():
    assert cfg.parse(MINIMAL).settings.discovery_port == 17400
    assert cfg.parse(MINIMAL + "discovery_port: false\n").settings.discovery_port is None
    assert cfg.parse(MINIMAL + "discovery_port: 17401\n").settings.discovery_port == 17401


def test_ipv6_and_localhost_endpoints():
    c = cfg.parse(MINIMAL.replace("127.0.0.1:17497", "'[::1]:17497'").replace("127.0.0.1:7497", "localhost:7497"))
    assert c.routes[0].listen == cfg.Endpoint("::1", 17497)
    assert str(c.routes[0].listen) == "[::1]:17497"
    assert c.routes[0].target == cfg.Endpoint("127.0.0.1", 7497)


def test_load_reports_missing_folder_and_binary_files(tmp_path):
    with pytest.raises(cfg.ConfigError, match="file not found"):
        cfg.load(tmp_path / "nope.yaml")
    with pytest.raises(cfg.ConfigError, match="is a folder"):
        cfg.load(tmp_path)
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"routes:\xff\xfe\n")
    with pytest.raises(cfg.ConfigError, match="not UTF-8"):
        cfg.load(bad)


def test_config_lookup_order_windows_and_linux():
    win = cfg.config_candidates(None, "C:\\Users\\me", "win32", {"APPDATA": "C:\\Users\\me\\AppData\\Roaming"})
    assert win == ["C:\\Users\\me\\relay.yaml", "C:\\Users\\me\\AppData\\Roaming\\relay\\relay.yaml"]
    lin = cfg.config_candidates(None, "/srv", "linux", {"HOME": "/home/me"})
    assert lin == ["/srv/relay.yaml", "/home/me/.config/relay/relay.yaml"]
    xdg = cfg.config_candidates(None, "/srv", "linux", {"HOME": "/home/me", "XDG_CONFIG_HOME": "/cfg"})
    assert xdg[1] == "/cfg/relay/relay.yaml"
    assert cfg.config_candidates("x.yaml", "/srv", "linux", {}) == ["x.yaml"]


# -- property tests: whatever the input, the outcome is a Config or one clean ConfigError

def _outcome(text: str) -> None:
    try:
        c = cfg.parse(text, "f.yaml")
    except cfg.ConfigError as e:
        assert str(e).startswith("f.yaml") and "\n" not in e.problem
    else:
        assert c.routes


@given(st.text(max_size=400))
@settings(max_examples=300)
def test_arbitrary_text_gives_config_or_clean_error(text):
    _outcome(text)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=20),
                    st.sampled_from(["127.0.0.1:1", "[::1]:2", "0.0.0.0:3", "10.0.0.0/8", "a", "routes"]))
keys = st.sampled_from(["routes", "name", "listen", "target", "allow", "max_connections", "keepalive", "idle",
                        "log", "level", "format", "loop", "connect_timeout", "user_timeout", "x"])
documents = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(keys, inner, max_size=5)), max_leaves=20)


@given(documents)
@settings(max_examples=300)
def test_arbitrary_yaml_structures_give_config_or_clean_error(doc):
    _outcome(yaml.safe_dump(doc))


@given(st.lists(st.sampled_from(["routes:", "- name: a", "  listen: 127.0.0.1:17497", "  target: 127.0.0.1:7497",
                                 "    allow: [10.0.0.0/8]", "keepalive: {idle: 3}", "  - ", ":", "&a [*a]", "\t",
                                 "'", '"', "{", "}", "[", "]", "!!binary AAAA"]), max_size=12))
@settings(max_examples=300)
def test_mangled_yaml_lines_give_config_or_clean_error(lines):
    _outcome("\n".join(lines))


def test_every_setting_is_declared_once_in_the_table():
    """relay.yaml's keys, their Settings fields and how each is read live in config.SETTINGS alone."""
    import dataclasses
    fields = [s.field for s in cfg.SETTINGS]
    assert sorted(fields) == sorted(f.name for f in dataclasses.fields(cfg.Settings))
    assert len(set(fields)) == len(fields) and len({s.key for s in cfg.SETTINGS}) == len(cfg.SETTINGS)
    doc = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "relay.yaml")))
    assert set(doc) <= set(cfg._TOP_KEYS)            # the shipped file uses only known keys
