"""`relay kick CLIENT_ID`: close the connection holding a stuck clientId, so TWS frees it at once.
Only the user running the relay may: the secret is in a record only that user can read."""
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from helpers import Proc, bot_session, write_config
from relay import control, registry
from tws_sessions import frame, text_fields

RELAY = [sys.executable, "-m", "relay"]


def cli(*args, user=None):
    prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if user else []
    return subprocess.run(prefix + RELAY + list(args), capture_output=True, text=True, timeout=60)


@pytest.fixture
def relay_with_a_bot(tmp_path, stand_in_tws):
    conf, ports = write_config(tmp_path, stand_in_tws[0])
    relay = Proc(RELAY + ["serve", "--config", str(conf)])
    relay.wait_line("ready")
    bot = bot_session(ports["listen"], 9)
    relay.wait_line("api-ready")
    yield relay, bot, ports
    bot.close()
    relay.kill()


def test_kick_closes_both_legs_and_the_client_id_is_free_again(relay_with_a_bot):
    relay, bot, ports = relay_with_a_bot
    r = cli("kick", "9")
    assert r.returncode == 0, r.stderr
    assert f"closed clientId 9 on route tws-paper (peer 127.0.0.1:{bot.getsockname()[1]}), relay pid " \
           f"{relay.proc.pid}" in r.stdout
    kicked = relay.wait_line(" kicked ")
    assert "client_id=9" in kicked
    closed = relay.wait_line(' closed_by="relay (kicked)"')       # both legs: the relay's close line
    assert "client_id=9" in closed
    bot.settimeout(5)
    try:
        while bot.recv(65536):                                     # what TWS sent before the kick, then EOF
            pass
    except ConnectionResetError:
        pass                                                       # an abort reaches the bot as a reset
    again = bot_session(ports["listen"], 9)                        # the id is free: no clash this time
    relay.wait_count("api-ready", 2)
    assert not any("client-id-clash" in x for x in relay.lines)
    again.close()


def test_kick_of_an_id_nobody_holds_changes_nothing(relay_with_a_bot):
    relay, bot, _ = relay_with_a_bot
    r = cli("kick", "99")
    assert r.returncode == 1 and "no connection holds clientId 99 through this relay" in r.stderr
    r = cli("kick", "9", "--route", "other")
    assert r.returncode == 1 and "no connection holds clientId 9 on route other" in r.stderr
    bot.sendall(frame(text_fields(49, 1)))                          # the bot still works
    assert bot.recv(100)


def test_only_the_user_running_the_relay_can_kick(relay_with_a_bot):
    relay, bot, _ = relay_with_a_bot
    (record,) = registry.live()
    folder = os.environ["TWS_RELAY_RUN_DIR"]
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(folder, f"relay-{record['pid']}.json")).st_mode) == 0o600
    # the secret is the only way in: a wrong one is refused
    import asyncio
    answer = asyncio.run(control.ask(record["control_port"], {"token": "0" * 64, "action": "kick", "client_id": 9}))
    assert answer == {"ok": False, "error": "not authorised: only the user running this relay may do that"}
    assert "control-refused" in relay.wait_line("control-refused")
    # another user can neither list the run folder nor read the record: it never learns the secret
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to act as another user")
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    for cmd in (["cat", os.path.join(folder, f"relay-{record['pid']}.json")], ["ls", folder]):
        r = subprocess.run(as_nobody + cmd, capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "Permission denied" in r.stderr, (cmd, r.stdout, r.stderr)
    # and `relay kick` run as that user finds no relay of its own, where that user can run this
    # checkout's Python at all (on a fresh Debian a checkout under root's 0700 home is out of its reach)
    if subprocess.run(as_nobody + [sys.executable, "-c", "import relay.cli"], capture_output=True).returncode == 0:
        r = cli("kick", "9", user="nobody")
        assert r.returncode == 1 and "no running relay of yours found" in r.stderr, r.stdout + r.stderr
    bot.sendall(frame(text_fields(49, 1)))                          # still connected
    assert bot.recv(100)
    assert not any(" kicked " in x for x in relay.lines)


def test_no_secret_is_written_into_a_folder_others_can_read(tmp_path):
    open_folder = tmp_path / "shared"
    open_folder.mkdir(mode=0o755)
    os.chmod(open_folder, 0o755)
    path = registry.register({"control_port": 1234, "control_token": "s3cret"}, str(open_folder))
    doc = json.loads(open(path).read())
    assert "control_token" not in doc and doc["control_port"] is None
    private = tmp_path / "mine"
    path = registry.register({"control_port": 1234, "control_token": "s3cret"}, str(private))
    assert json.loads(open(path).read())["control_token"] == "s3cret"
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o700


def test_relay_stop_stops_a_relay_cleanly_as_ctrl_c_does(relay_with_a_bot):
    """A relay with no console (the logon task) cannot get Ctrl+C: `relay stop` asks it to stop."""
    relay, bot, _ = relay_with_a_bot
    r = cli("stop")
    assert r.returncode == 0 and f"stopping relay pid {relay.proc.pid}" in r.stdout, r.stderr
    assert relay.finish(timeout=20) == 0                 # graceful: shutdown_grace, then the bot is cut
    assert "signal=\"relay stop\" action=stopping" in relay.wait_line("signal=")
    assert "connections_cut=1" in relay.wait_line(" stopped ")
    assert cli("stop").returncode == 1                   # nothing left to stop


def test_a_relay_whose_run_folder_others_can_read_says_it_cannot_be_kicked(tmp_path, run, caplog):
    from helpers import running, settings
    from relay.config import Config, Endpoint, Route
    from relay.service import Relay
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)

    async def main():
        relay = Relay(Config((Route("a", Endpoint("127.0.0.1", 0), Endpoint("127.0.0.1", 9)),), settings()),
                      if_addrs={}, run_dir=str(shared))
        async with running(relay):
            with open(relay.record) as f:
                return json.load(f)
    doc = run(main())
    assert "control_token" not in doc and doc["control_port"] is None
    (line,) = [r for r in caplog.records if r.getMessage() == "control-off"]
    assert line.fields["folder"] == str(shared) and "not private" in line.fields["error"]
