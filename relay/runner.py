"""The service runner: logging set up from the settings, the event loop chosen, the service (a Relay,
or the WSL forwarder) started, then run until a signal and stopped gracefully; a second signal
(Ctrl+C twice) cuts the open connections at once."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import List, Optional, Tuple

from . import __version__, config as cfg, loops
from .cli_args import EXIT_FAIL, EXIT_OK, EXIT_USAGE, fail
from .logs import event, setup as setup_logging
from .route_server import BindError

log = logging.getLogger("relay")


def signal_plan(platform: str) -> Tuple[str, List[str]]:
    """How to catch shutdown signals: ('loop', names) via loop.add_signal_handler, or on Windows,
    where the loop cannot, ('signal', names) via signal.signal. Ctrl+Break arrives as SIGBREAK."""
    if platform == "win32":
        return "signal", ["SIGINT", "SIGTERM", "SIGBREAK"]
    return "loop", ["SIGINT", "SIGTERM"]


def _install_signals(loop: asyncio.AbstractEventLoop, on_signal) -> None:
    how, names = signal_plan(sys.platform)
    for name in names:
        sig = getattr(signal, name, None)
        if sig is None:
            continue
        if how == "loop":
            loop.add_signal_handler(sig, on_signal, name)
        else:
            signal.signal(sig, lambda signum, frame, n=name: loop.call_soon_threadsafe(on_signal, n))


async def _serve(make) -> int:
    """Start the service `make()` builds (a Relay, or the WSL forwarder), run until a signal, stop
    it gracefully; a second signal cuts the open connections at once."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals_seen: List[str] = []

    def on_signal(name: str) -> None:
        signals_seen.append(name)
        event(log, logging.INFO, "signal", signal=name,
              action="stopping" if len(signals_seen) == 1 else "cutting connections now")
        stop.set()

    service = await make()
    getattr(service, "relay", service).on_stop = lambda: on_signal("relay stop")   # `relay stop`: as Ctrl+C
    await service.start()
    _install_signals(loop, on_signal)
    event(log, logging.INFO, "ready", routes=len(service.routes))
    await stop.wait()
    shutdown = asyncio.ensure_future(service.shutdown())
    while not shutdown.done():   # a second signal skips the grace period
        seen = len(signals_seen)
        stop.clear()
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait({shutdown, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if len(signals_seen) > seen and not shutdown.done():
            shutdown.cancel()
            await asyncio.gather(shutdown, return_exceptions=True)
            shutdown = asyncio.ensure_future(service.shutdown(grace=0))
    cut = shutdown.result()
    event(log, logging.INFO, "stopped", connections_cut=cut)
    return EXIT_OK


class CannotStart(Exception):
    """The service could not start; the message says why (exit 1)."""


def pump_threads(settings: cfg.Settings) -> Optional[int]:
    """How many native pump threads the relay may start; None when the native pump is not used."""
    from . import native_pump
    return native_pump.threads_allowed(settings.pump_threads) if native_pump.chosen(settings.pump) else None


def pump_in_use(settings: cfg.Settings) -> str:
    """What moves the bytes of settled sessions, in words for the first log line."""
    from . import native_pump
    if native_pump.chosen(settings.pump):
        return "native"
    if settings.pump == "python":
        return "python (pump: python)"
    why = "built on Linux only" if not sys.platform.startswith("linux") else \
        "not built: the pure-Python wheel, or no C compiler at install"
    return f"python (native pump {why})"


def run(settings: cfg.Settings, loop_choice: str, source_note: str, make) -> int:
    from . import logs
    log_file = logs.log_file_for(settings.log_file, logs.has_console(), sys.platform, os.environ)
    try:
        setup_logging(settings.log_level, settings.log_format, file=log_file)
    except logs.LogFileError as e:
        fail(str(e))
    try:
        name, why = loops.choose(loop_choice, sys.platform, loops.installed_versions())
    except loops.LoopError as e:
        fail(str(e))
    threads = pump_threads(settings)
    native = {"pump_threads": threads, **({"busy_poll_us": settings.busy_poll} if settings.busy_poll else {})}
    event(log, logging.INFO, "starting", version=__version__, config=source_note, loop=name, loop_choice=why,
          pump=pump_in_use(settings), **(native if threads else {}), log_file=log_file or "none (stderr)")
    if settings.busy_poll and not threads:
        event(log, logging.WARNING, "busy-poll-unused", busy_poll_us=settings.busy_poll,
              note="only native pump threads poll busily; the Python pump sleeps until bytes come")
    loop = loops.factory(name)()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_serve(make))
    except BindError as e:
        event(log, logging.ERROR, "cannot-start", error=str(e))
        return EXIT_USAGE
    except CannotStart as e:
        event(log, logging.ERROR, "cannot-start", error=str(e))
        return EXIT_FAIL
    except KeyboardInterrupt:   # Windows delivers Ctrl+C here if the handler was not yet set
        return EXIT_OK
    finally:
        loop.close()
