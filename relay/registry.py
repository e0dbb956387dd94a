"""Which relays run on this machine, for this user: one small JSON record per running relay.

Several relays can run side by side (one per port, as Docker users run socat). Each writes
`relay-<pid>.json` into a per-user run folder when it starts and removes it when it stops, so
`relay status` reaches all of them, `relay doctor` knows which relay holds which port, and the
relay that holds the discovery port can answer for the others on the same address.
A record whose process is gone (killed, crashed) is ignored and removed by the next reader.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import List, Mapping, Optional

ENV_DIR = "TWS_RELAY_RUN_DIR"


def run_dir(platform: str, env: Mapping[str, str], uid: Optional[int] = None) -> str:
    """Where the records live. Pure: every input is data."""
    if env.get(ENV_DIR):
        return env[ENV_DIR]
    if platform == "win32":
        base = env.get("LOCALAPPDATA") or env.get("APPDATA") or tempfile.gettempdir()
        return "\\".join((base.rstrip("\\/"), "relay", "run"))
    if env.get("XDG_RUNTIME_DIR"):
        return os.path.join(env["XDG_RUNTIME_DIR"], "tws-relay")
    state = env.get("XDG_STATE_HOME") or (os.path.join(env["HOME"], ".local", "state") if env.get("HOME") else None)
    if state:
        return os.path.join(state, "relay", "run")
    return os.path.join(tempfile.gettempdir(), f"tws-relay-{uid if uid is not None else 'user'}")


def default_dir() -> str:
    return run_dir(sys.platform, os.environ, os.getuid() if hasattr(os, "getuid") else None)


def _started(pid: int) -> Optional[float]:
    """The process's start time, or None if it is gone (a pid is reused: the time tells them apart)."""
    import psutil
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def private(folder: str, platform: str = sys.platform, env: Mapping[str, str] = os.environ) -> bool:
    """Only this user can read what is in `folder`. POSIX: ours, no group/other access. Windows
    (where POSIX modes prove nothing): inside %LOCALAPPDATA% or %USERPROFILE%, which their default
    ACL keeps to the user; a folder elsewhere (TWS_RELAY_RUN_DIR=C:\\shared) counts as shared, its
    ACL unread."""
    if platform == "win32":
        return inside_profile(folder, env)
    try:
        st = os.stat(folder)
    except OSError:
        return False
    return st.st_uid == os.getuid() and not st.st_mode & 0o077


def inside_profile(folder: str, env: Mapping[str, str]) -> bool:
    """Is a Windows path inside the user's %LOCALAPPDATA% or %USERPROFILE%? Pure."""
    import ntpath
    path = ntpath.normcase(ntpath.normpath(folder))
    for key in ("LOCALAPPDATA", "USERPROFILE"):
        base = env.get(key)
        if base:
            base = ntpath.normcase(ntpath.normpath(base)).rstrip("\\")
            if path == base or path.startswith(base + "\\"):
                return True
    return False


def register(record: dict, folder: Optional[str] = None) -> Optional[str]:
    """Write this process's record (atomically, readable by this user only); return its path, or
    None if the folder is unusable (a relay still serves without it: the record is a convenience).
    A secret in the record (`control_token`) is written only into a private folder."""
    folder = folder or default_dir()
    pid = os.getpid()
    doc = dict(record, pid=pid, started=_started(pid))
    path = os.path.join(folder, f"relay-{pid}.json")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        if "control_token" in doc and not private(folder):
            doc.pop("control_token")
            doc["control_port"] = None
        fd, tmp = tempfile.mkstemp(prefix=".relay-", dir=folder)     # mkstemp: mode 0600
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        os.replace(tmp, path)
    except OSError:
        return None
    return path


def unregister(path: Optional[str]) -> None:
    if path:
        try:
            os.remove(path)
        except OSError:
            pass


def live(folder: Optional[str] = None, exclude_pid: Optional[int] = None) -> List[dict]:
    """Records of relays that are still running, oldest first; stale records are removed."""
    folder = folder or default_dir()
    try:
        names = [n for n in os.listdir(folder) if n.startswith("relay-") and n.endswith(".json")]
    except OSError:
        return []
    found = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            pid = int(doc["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pid == exclude_pid:
            continue
        started = _started(pid)
        recorded = doc.get("started")
        if started is None or (isinstance(recorded, (int, float)) and abs(started - recorded) > 1):
            unregister(path)
            continue
        found.append(doc)
    return sorted(found, key=lambda d: d.get("started") or 0)
