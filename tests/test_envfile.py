"""Rewriting the bot's .env / YAML: nothing else changes, atomic, refuses what it cannot handle."""
import os
import re

import pytest
import yaml
from hypothesis import assume, given, settings, strategies as st

from conftest import linux_only_because
from relay.wsl import envfile

UPD = {"IBKR_HOST_IP": "172.24.32.1", "IBKR_PORT": "17497"}

SEED_ENV = """# IBKR Connection Settings (Canonical WSL Fix)
IBKR_HOST_IP=172.24.32.1          # Primary (default gateway)
IBKR_HOST_IP_ALT=10.255.255.254   # Alternative (nameserver)
IBKR_PORT=7497
IBKR_CLIENT_ID=1
"""


def test_seed_env_updates_in_place_keeping_comments_and_other_keys():
    new = envfile.update_env(SEED_ENV, {"IBKR_HOST_IP": "172.31.250.1", "IBKR_PORT": "17497"})
    assert new == SEED_ENV.replace("IBKR_HOST_IP=172.24.32.1 ", "IBKR_HOST_IP=172.31.250.1 ").replace(
        "IBKR_PORT=7497", "IBKR_PORT=17497")
    assert envfile.update_env(new, {"IBKR_HOST_IP": "172.31.250.1", "IBKR_PORT": "17497"}) == new   # idempotent


@pytest.mark.parametrize("before, after", [
    ('IBKR_PORT="7497"\n', 'IBKR_PORT="17497"\n'),
    ("IBKR_PORT='7497'  # paper\n", "IBKR_PORT='17497'  # paper\n"),
    ("export IBKR_PORT = 7497\n", "export IBKR_PORT = 17497\n"),
    ("IBKR_PORT=7497\r\nX=1\r\n", "IBKR_PORT=17497\r\nX=1\r\n"),
    ("IBKR_PORT=1\nIBKR_PORT=2\n", "IBKR_PORT=17497\nIBKR_PORT=17497\n"),
    ("A=1", "A=1\nIBKR_PORT=17497\n"),                      # appended, missing newline added
    ("", "IBKR_PORT=17497\n"),
    ('CERT="-----BEGIN\nIBKR_PORT=1\n-----"\n', 'CERT="-----BEGIN\nIBKR_PORT=1\n-----"\nIBKR_PORT=17497\n'),
    ("#IBKR_PORT=7497\n", "#IBKR_PORT=7497\nIBKR_PORT=17497\n"),   # a commented-out key is left alone
    ("A=x\x0cy\nIBKR_PORT=1\n", "A=x\x0cy\nIBKR_PORT=17497\n"),      # a form feed is not a line break
])
def test_env_styles(before, after):
    assert envfile.update_env(before, {"IBKR_PORT": "17497"}) == after


def test_values_needing_quotes_are_quoted():
    assert envfile.update_env("", {"K": "a b#c"}) == 'K="a b#c"\n'
    assert envfile.parse_env(envfile.update_env("K='x'\n", {"K": "it's"}))["K"] == "it's"


lines = st.lists(st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), max_size=40),
    st.sampled_from(["# comment", "", "export A=1", "B = 'two words'", 'C="x # not a comment"', "D=4 # note",
                     "IBKR_PORT=7497", "IBKR_HOST_IP='1.2.3.4'", "  IBKR_PORT = 1", 'M="multi', 'line"', "=", "E="]),
), max_size=15)
values = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20)


def _is_target_assignment(line, open_quote, keys):
    m = envfile._ASSIGN.match(line)
    return m is not None and m.group("key") in keys and not open_quote


@given(lines, st.sampled_from(["\n", "\r\n"]), values, values, st.booleans())
@settings(max_examples=400)
def test_any_file_keeps_every_other_line_and_gets_the_values(body, nl, host, port, trailing):
    text = nl.join(body) + (nl if trailing and body else "")
    try:
        new = envfile.update_env(text, {"IBKR_HOST_IP": host, "IBKR_PORT": port})
    except envfile.FileRefused:
        # only allowed when the file ends inside an open quote and a key must be appended
        assert envfile.update_env(text + '"\n', {}) is not None
        assert any(line.count('"') % 2 or line.count("'") % 2 for line in body)
        return
    # 1. every line that is not an assignment of a written key is byte-identical, in order
    keys = {"IBKR_HOST_IP", "IBKR_PORT"}

    def others(t):
        out, open_quote = [], None
        for line in (raw.rstrip("\r\n") for raw in envfile._lines(t)):
            if open_quote:
                out.append(line)
                if open_quote in line:
                    open_quote = None
                continue
            m = envfile._ASSIGN.match(line)
            if m:
                value, _, unterminated = envfile._split_value(m.group("rest"))
                if unterminated:
                    open_quote = value[0]
                elif m.group("key") in keys:
                    continue
            out.append(line)
        return out
    assert others(new) == others(text)
    # 2. reading the result back gives the new values
    parsed = envfile.parse_env(new)
    assert parsed.get("IBKR_HOST_IP") == host and parsed.get("IBKR_PORT") == port
    # 3. a second run changes nothing
    assert envfile.update_env(new, {"IBKR_HOST_IP": host, "IBKR_PORT": port}) == new


class Crash(Exception):
    pass


def crashing_ops(at):
    """Ops whose `at`-th call (counting write, fsync and replace together) raises, like a crash."""
    calls = [0]

    def step(fn):
        def wrapped(*a):
            calls[0] += 1
            if calls[0] == at:
                raise Crash(f"crash at step {at}")
            return fn(*a)
        return wrapped
    ops = envfile.Ops()
    ops.write, ops.fsync, ops.replace = step(os.write), step(os.fsync), step(os.replace)
    return ops


@given(old=st.binary(max_size=3000), new=st.binary(max_size=3000), at=st.integers(1, 12))
@settings(max_examples=200)
def test_a_crash_at_any_step_leaves_old_or_new_never_a_mix(tmp_path_factory, old, new, at):
    folder = tmp_path_factory.mktemp("env")
    path = str(folder / ".env")
    with open(path, "wb") as f:
        f.write(old)
    try:
        envfile.write_atomic(path, new, backup=path + ".bak", ops=crashing_ops(at))
    except Crash:
        pass
    with open(path, "rb") as f:
        assert f.read() in (old, new)
    leftovers = [n for n in os.listdir(folder) if n.endswith(".tmp")]
    assert leftovers == []


@linux_only_because("POSIX file modes: on Windows chmod only toggles read-only")
def test_backup_keeps_previous_version_and_mode(tmp_path):
    path = tmp_path / ".env"
    path.write_text(SEED_ENV)
    os.chmod(path, 0o600)
    envfile.write_atomic(str(path), b"NEW=1\n", backup=str(path) + ".bak")
    assert path.read_text() == "NEW=1\n"
    assert (tmp_path / ".env.bak").read_text() == SEED_ENV
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_refuses_folders_binary_and_non_utf8(tmp_path):
    with pytest.raises(envfile.FileRefused, match="is a folder"):
        envfile.read_text(str(tmp_path))
    (tmp_path / "bin").write_bytes(b"A=1\x00")
    with pytest.raises(envfile.FileRefused, match="not a text file"):
        envfile.read_text(str(tmp_path / "bin"))
    (tmp_path / "latin").write_bytes(b"A=\xe9\n")
    with pytest.raises(envfile.FileRefused, match="not UTF-8"):
        envfile.read_text(str(tmp_path / "latin"))
    assert envfile.read_text(str(tmp_path / "absent")) == (None, b"")


# -- YAML by key path

BOT_YAML = """# my bot
ibkr:
  host: 127.0.0.1   # old
  port: 7497
  client_id: 3
strategy:
  symbols: [AAPL, MSFT]
"""


def test_yaml_updates_only_the_key_lines():
    new = envfile.update_yaml(BOT_YAML, {"ibkr.host": "172.24.32.1", "ibkr.port": 17497})
    assert new == BOT_YAML.replace("host: 127.0.0.1   # old", "host: 172.24.32.1   # old").replace(
        "port: 7497", "port: 17497")
    assert envfile.update_yaml(new, {"ibkr.host": "172.24.32.1", "ibkr.port": 17497}) == new


def test_yaml_creates_missing_keys_and_paths():
    new = envfile.update_yaml("strategy:\n  x: 1\n", {"ibkr.host": "h", "ibkr.port": 1})
    assert yaml.safe_load(new) == {"strategy": {"x": 1}, "ibkr": {"host": "h", "port": 1}}
    assert new.startswith("strategy:\n  x: 1\n")
    assert yaml.safe_load(envfile.update_yaml("", {"a.b": 2})) == {"a": {"b": 2}}


def test_yaml_it_cannot_edit_safely_is_refused():
    with pytest.raises(envfile.FileRefused, match="by hand"):
        envfile.update_yaml("ibkr: {host: a, port: 1}\n", {"ibkr.host": "b"})
    with pytest.raises(envfile.FileRefused, match="not valid YAML"):
        envfile.update_yaml("a: [\n", {"a": 1})


@given(st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True),
                       st.one_of(st.integers(), st.text(alphabet="abc xyz", max_size=5),
                                 st.dictionaries(st.from_regex(r"[a-z]{1,4}", fullmatch=True), st.integers(),
                                                 max_size=3)), max_size=5),
       st.from_regex(r"[a-z]{1,6}(\.[a-z]{1,4}){0,2}", fullmatch=True), st.integers(0, 65535))
@settings(max_examples=200)
def test_yaml_any_block_document_changes_exactly_the_key_or_is_refused(doc, path, value):
    text = yaml.safe_dump(doc, default_flow_style=False, sort_keys=False)
    try:
        new = envfile.update_yaml(text, {path: value})
    except envfile.FileRefused:
        return   # refusing is allowed (e.g. a scalar where the path needs a mapping); silence is not
    assert yaml.safe_load(new) == envfile._with(yaml.safe_load(text) or {}, path.split("."), value)
    assume(True)


def test_no_trailing_whitespace_games():
    assert not re.search(r"[ \t]+\n", envfile.update_env("A=1\n", {"IBKR_PORT": "1"}))
