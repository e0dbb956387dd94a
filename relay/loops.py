"""Which event loop to run on: a pure choice from data, then the one place that builds it."""
from __future__ import annotations

import asyncio
import importlib
from typing import Callable, Dict, Optional, Tuple

UVLOOP_MIN = (0, 23)   # older uvloop queues a small write instead of sending it at once (uvloop#631)


class LoopError(Exception):
    pass


def _version_tuple(v: str) -> Tuple[int, ...]:
    out = []
    for part in v.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def choose(requested: str, platform: str, installed: Dict[str, Optional[str]]) -> Tuple[str, str]:
    """(loop name, note for the log). `installed` maps 'uvloop'/'winloop' to a version or None."""
    uv = installed.get("uvloop")
    uv_ok = uv is not None and _version_tuple(uv) >= UVLOOP_MIN
    if requested == "asyncio":
        return "asyncio", "as requested"
    if requested == "uvloop":
        if platform == "win32":
            raise LoopError("uvloop does not run on Windows; use --loop winloop (pip install winloop) or asyncio")
        if uv is None:
            raise LoopError("uvloop is not installed: pip install 'uvloop>=0.23'")
        if not uv_ok:
            raise LoopError(f"uvloop {uv} is too old (need >= 0.23): pip install -U uvloop")
        return "uvloop", "as requested"
    if requested == "winloop":
        if installed.get("winloop") is None:
            raise LoopError("winloop is not installed: pip install winloop")
        return "winloop", "as requested"
    # auto
    if platform == "win32":
        if installed.get("winloop") is not None:
            return "winloop", "auto"
        return "asyncio", "auto (Proactor; pip install winloop for a faster loop)"
    if uv_ok:
        return "uvloop", "auto"
    if uv is not None:
        return "asyncio", f"auto (uvloop {uv} is older than 0.23 and is not used)"
    return "asyncio", "auto (uvloop not installed)"


def installed_versions() -> Dict[str, Optional[str]]:
    found: Dict[str, Optional[str]] = {}
    for name in ("uvloop", "winloop"):
        try:
            found[name] = getattr(importlib.import_module(name), "__version__", "0")
        except ImportError:
            found[name] = None
    return found


def factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name in ("uvloop", "winloop"):
        return importlib.import_module(name).new_event_loop
    return asyncio.new_event_loop
