"""`relay wsl autostart`: start `relay wsl forward` at every WSL login, with one command.

With systemd (current WSL distros enable it): a user unit whose ExecStart is this very
interpreter (so a virtualenv install works), enabled and started. Without systemd: a marked block
in ~/.profile that starts the forwarder in the background at login unless one already runs.
The texts are pure functions; `install` / `remove` do the I/O.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from typing import List, Optional, Tuple

from . import envfile

UNIT_NAME = "tws-relay-forward.service"
BEGIN, END = "# >>> tws-relay forward >>>", "# <<< tws-relay forward <<<"


def command(python: str, args: Tuple[str, ...] = ()) -> List[str]:
    return [python, "-m", "relay", "wsl", "forward", *args]


def unit_text(python: str, args: Tuple[str, ...] = ()) -> str:
    return f"""[Unit]
Description=tws-relay: bots in WSL reach TWS at 127.0.0.1:7497 through the relay on Windows
After=network-online.target
Wants=network-online.target

[Service]
ExecStart={shlex.join(command(python, args))}
Restart=always
RestartSec=2

[Install]
WantedBy=default.target
"""


def profile_block(python: str, args: Tuple[str, ...] = ()) -> str:
    cmd = shlex.join(command(python, args))
    return f"""{BEGIN}
# Started by `relay wsl autostart` (no systemd here); `relay wsl autostart --remove` takes it out.
if ! pgrep -u "$(id -u)" -f 'relay wsl forward' >/dev/null 2>&1; then
  mkdir -p "$HOME/.local/state/relay"
  ( nohup {cmd} >>"$HOME/.local/state/relay/forward.log" 2>&1 & )
fi
{END}
"""


def update_profile(text: str, block: Optional[str]) -> str:
    """`text` with our block put in (replacing an earlier one) or, with None, taken out; every other
    byte stays. Pure."""
    start, end = text.find(BEGIN), text.find(END)
    if start != -1 and end > start:
        after = end + len(END)
        if text[after:after + 1] == "\n":
            after += 1
        text = text[:start] + text[after:]
    if block is None:
        return text
    if text and not text.endswith("\n"):
        text += "\n"
    return text + block


def has_systemd(run_dir: str = "/run/systemd/system") -> bool:
    """systemd is the init (WSL: `systemd=true` in /etc/wsl.conf) and systemctl exists."""
    return os.path.isdir(run_dir) and shutil.which("systemctl") is not None


def unit_path(home: str, env=os.environ) -> str:
    base = env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    return os.path.join(base, "systemd", "user", UNIT_NAME)


def install(args: Tuple[str, ...] = (), python: str = sys.executable, home: Optional[str] = None,
            systemd: Optional[bool] = None, dry_run: bool = False) -> List[str]:
    """Set it up; returns what was done, in words."""
    home = home or os.path.expanduser("~")
    systemd = has_systemd() if systemd is None else systemd
    if systemd:
        path = unit_path(home)
        text = unit_text(python, args)
        if dry_run:
            return [f"would write {path}:", text, f"would run: systemctl --user enable --now {UNIT_NAME}"]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        envfile.write_atomic(path, text.encode())
        _systemctl("daemon-reload")
        _systemctl("enable", "--now", UNIT_NAME)
        return [f"wrote {path}", f"enabled and started {UNIT_NAME} (see: systemctl --user status {UNIT_NAME}; "
                                 f"logs: journalctl --user -u {UNIT_NAME})"]
    path = os.path.join(home, ".profile")
    return _edit_profile(path, profile_block(python, args), dry_run,
                         "no systemd here: the forwarder starts at your next login (log: "
                         "~/.local/state/relay/forward.log); start it now with `relay wsl forward &`")


def remove(home: Optional[str] = None, systemd: Optional[bool] = None, dry_run: bool = False) -> List[str]:
    home = home or os.path.expanduser("~")
    done = []
    systemd = has_systemd() if systemd is None else systemd
    path = unit_path(home)
    if os.path.exists(path):
        if dry_run:
            return [f"would disable {UNIT_NAME} and remove {path}"]
        if systemd:
            _systemctl("disable", "--now", UNIT_NAME)
        os.remove(path)
        done.append(f"disabled {UNIT_NAME} and removed {path}")
    profile = os.path.join(home, ".profile")
    if os.path.exists(profile):
        done += _edit_profile(profile, None, dry_run, "")
    return done or ["nothing to remove"]


def _edit_profile(path: str, block: Optional[str], dry_run: bool, note: str) -> List[str]:
    old, _ = envfile.read_text(path)
    new = update_profile(old or "", block)
    if new == (old or ""):
        return [f"{path} already {'starts the forwarder' if block else 'has no forwarder block'}; nothing changed"]
    if dry_run:
        return [f"would update {path} with:", block or "(the tws-relay block removed)"]
    envfile.write_atomic(path, new.encode("utf-8"), backup=path + ".bak" if old is not None else None)
    return [f"updated {path} (previous version kept as {path}.bak)" if old is not None else f"created {path}"] + \
        ([note] if note else [])


def _systemctl(*args: str) -> None:
    r = subprocess.run(["systemctl", "--user", *args], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise OSError(f"systemctl --user {' '.join(args)} failed: {r.stderr.strip() or r.returncode}")
