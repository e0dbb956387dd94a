"""The command line: `relay` (serve relay.yaml), `relay serve ...`, `relay check`.

Exit codes: 0 stopped cleanly, 1 unexpected failure, 2 bad configuration, usage or bind error.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import List, Optional, Tuple

import click

from . import __version__, config as cfg, loops
from .listener import BindError, Relay
from .logs import event, setup as setup_logging

log = logging.getLogger("relay")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def fail(message: str) -> "NoReturn":  # noqa: F821
    click.echo(f"relay: error: {message}", err=True)
    sys.exit(EXIT_USAGE)


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


def find_config(explicit: Optional[str]) -> Tuple[Optional[str], List[str]]:
    candidates = cfg.config_candidates(explicit, os.getcwd(), sys.platform, dict(os.environ))
    for path in candidates:
        if explicit or os.path.exists(path):
            return path, candidates
    return None, candidates


def one_route(listen: str, target: str, allow: Tuple[str, ...], max_connections: int, name: str) -> cfg.Route:
    try:
        route = cfg.Route(
            name=name,
            listen=cfg.parse_endpoint(listen, "--listen", listen=True),
            target=cfg.parse_endpoint(target, "--target", listen=False),
            allow=tuple(cfg.parse_network(a, "--allow") for a in allow) or None,
            max_connections=max_connections)
    except cfg.ConfigError as e:
        fail(str(e))
    return route


async def _serve(config: cfg.Config) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals_seen: List[str] = []

    def on_signal(name: str) -> None:
        signals_seen.append(name)
        event(log, logging.INFO, "signal", signal=name,
              action="stopping" if len(signals_seen) == 1 else "cutting connections now")
        stop.set()

    relay = Relay(config)
    await relay.start()
    _install_signals(loop, on_signal)
    event(log, logging.INFO, "ready", routes=len(relay.routes))
    await stop.wait()
    shutdown = asyncio.ensure_future(relay.shutdown())
    while not shutdown.done():   # a second signal skips the grace period
        seen = len(signals_seen)
        stop.clear()
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait({shutdown, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if len(signals_seen) > seen and not shutdown.done():
            shutdown.cancel()
            await asyncio.gather(shutdown, return_exceptions=True)
            shutdown = asyncio.ensure_future(relay.shutdown(grace=0))
    cut = shutdown.result()
    event(log, logging.INFO, "stopped", connections_cut=cut)
    return EXIT_OK


def run(config: cfg.Config, loop_choice: str, source_note: str) -> int:
    s = config.settings
    setup_logging(s.log_level, s.log_format)
    try:
        name, why = loops.choose(loop_choice, sys.platform, loops.installed_versions())
    except loops.LoopError as e:
        fail(str(e))
    event(log, logging.INFO, "starting", version=__version__, config=source_note, loop=name, loop_choice=why)
    loop = loops.factory(name)()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_serve(config))
    except BindError as e:
        event(log, logging.ERROR, "cannot-start", error=str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:   # Windows delivers Ctrl+C here if the handler was not yet set
        return EXIT_OK
    finally:
        loop.close()


# ------------------------------------------------------------------------------------ commands

def _apply_overrides(config: cfg.Config, **over) -> cfg.Config:
    from dataclasses import replace
    over = {k: v for k, v in over.items() if v is not None}
    return replace(config, settings=replace(config.settings, **over))


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="relay")
@click.pass_context
def main(ctx: click.Context) -> None:
    """tws-relay: let bots in WSL (or Docker) reach TWS / IB Gateway while TWS keeps
    "Allow connections from localhost only" on.

    With no command, serves the routes of relay.yaml (same as `relay serve`).
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(serve)


@main.command()
@click.option("--config", "config_path", metavar="FILE",
              help="relay.yaml to use (default: ./relay.yaml, then the user config folder).")
@click.option("--listen", metavar="HOST:PORT", help="One-route form: address to listen on (needs --target).")
@click.option("--target", metavar="HOST:PORT", help="One-route form: where to relay to, e.g. 127.0.0.1:7497.")
@click.option("--allow", multiple=True, metavar="CIDR",
              help="One-route form: allowed client networks (repeatable). Default: loopback + the listen subnet.")
@click.option("--max-connections", type=click.IntRange(1, 10000), default=32, show_default=True,
              help="One-route form: connection cap.")
@click.option("--name", default="relay", show_default=True, help="One-route form: route name for logs.")
@click.option("--expose-to-all-networks", is_flag=True, default=None,
              help="Allow listening on a wildcard address (0.0.0.0 or ::). Exposes the trading API: avoid.")
@click.option("--loop", "loop_choice", type=click.Choice(cfg.LOOPS), default=None,
              help="Event loop (default from config, else auto: uvloop, winloop on Windows, else asyncio).")
@click.option("--log-format", type=click.Choice(cfg.LOG_FORMATS), default=None, help="Log line format.")
@click.option("--log-level", type=click.Choice(cfg.LOG_LEVELS), default=None, help="Least severe level logged.")
def serve(config_path, listen, target, allow, max_connections, name, expose_to_all_networks,
          loop_choice, log_format, log_level) -> None:
    """Serve routes: from relay.yaml, or one route given by --listen and --target."""
    if bool(listen) != bool(target):
        fail("--listen and --target go together")
    if listen:
        config = cfg.Config(routes=(one_route(listen, target, allow, max_connections, name),))
        source_note = "command line"
    else:
        if allow:
            fail("--allow belongs to the one-route form (--listen/--target); in relay.yaml use 'allow:'")
        config, source_note = _load(config_path)
    config = _apply_overrides(config, expose_to_all_networks=expose_to_all_networks,
                              log_format=log_format, log_level=log_level)
    sys.exit(run(config, loop_choice or config.settings.loop, source_note))


@main.command()
@click.option("--config", "config_path", metavar="FILE", help="relay.yaml to check.")
def check(config_path) -> None:
    """Validate relay.yaml and print its routes; exit 2 if it has a problem."""
    config, source_note = _load(config_path)
    click.echo(f"{source_note}: ok")
    for r in config.routes:
        allow = ", ".join(map(str, r.allow)) if r.allow else "loopback + listen subnet"
        click.echo(f"  {r.name}: {r.listen} -> {r.target}  allow: {allow}  max {r.max_connections}")


def _load(config_path: Optional[str]) -> Tuple[cfg.Config, str]:
    path, tried = find_config(config_path)
    if path is None:
        fail("no relay.yaml found (looked in: " + ", ".join(tried) +
             "). Pass --config FILE, or use --listen HOST:PORT --target HOST:PORT")
    try:
        config = cfg.load(path)
    except cfg.ConfigError as e:
        fail(str(e))
    how = "given with --config" if config_path else "found"
    return config, f"{os.path.abspath(path)} ({how})"
