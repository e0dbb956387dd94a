"""The `relay wsl` commands: discover, configure, forward and autostart, run inside WSL (or a
container) beside the bot. relay/cli.py attaches this group to `relay`."""
from __future__ import annotations

import asyncio
import sys

import click

from .. import config as cfg, discovery, tws
from ..cli_args import EXIT_FAIL, EXIT_OK, STATUS_PORT, fail, setting_type
from ..runner import CannotStart, run


@click.group()
def wsl() -> None:
    """The WSL side: find Windows, prove the path to TWS, forward 127.0.0.1:7497 or rewrite the bot's config."""


def _wsl_options(f):
    f = click.option("--host", help=f"Windows host to use (skips discovery; also ${'TWS_RELAY_HOST'}).")(f)
    f = click.option("--port", type=click.IntRange(1, 65535),
                     help="Port to probe instead of asking the relay for its routes.")(f)
    f = click.option("--route", help="Route to use when the relay has several (default: tws-paper).")(f)
    f = click.option("--discovery-port", type=click.IntRange(1, 65535), default=discovery.DEFAULT_PORT, show_default=True,
                     help="The relay's discovery port.")(f)
    f = click.option("--timeout", type=click.FloatRange(0.1, 60), default=2.0, show_default=True,
                     help="Seconds per connection attempt.")(f)
    return f


def _discover(host, port, route, discovery_port, timeout):
    from . import discover as wslmod
    facts = wslmod.gather_facts()
    return asyncio.run(wslmod.discover(facts, host=host, port=port, discovery_port=discovery_port,
                                       route=route, timeout=timeout))


def _print_report(report) -> None:
    sit = report.situation
    where = "WSL" if sit.environment == "wsl" else "Linux (not WSL)"
    mode = f", networking mode {sit.mode} (from {sit.mode_source})" if sit.mode else ""
    click.echo(f"Running in {where}{mode}.")
    for note in sit.notes:
        click.echo(f"  note: {note}")
    if not sit.candidates:
        click.echo("No candidate address for Windows was found; pass --host.")
    for c in sit.candidates:
        click.echo(f"Candidate {c.host} ({c.source})")
    for v in report.verdicts:
        mark = "ok  " if v.status == "ok" else "FAIL"
        click.echo(f"  [{mark}] {v.what} at {v.host}:{v.port}: {v.detail}")
    if report.best:
        via = f" (route {report.route})" if report.route else ""
        click.echo(f"Working path: {report.best.host}:{report.best.port}{via}")
    else:
        click.echo("No working path to TWS found.")


@wsl.command("discover")
@_wsl_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")
def wsl_discover(host, port, route, discovery_port, timeout, as_json) -> None:
    """Find the Windows host and check that TWS answers through the relay. Exit 0 only when a
    working path was found."""
    report = _discover(host, port, route, discovery_port, timeout)
    if as_json:
        import json
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        _print_report(report)
    sys.exit(EXIT_OK if report.best else EXIT_FAIL)


@wsl.command("configure")
@_wsl_options
@click.option("--env", "env_path", metavar="PATH", help="The bot's .env file (created if absent).")
@click.option("--yaml", "yaml_path", metavar="PATH", help="Or a YAML config file, keys given as dotted paths.")
@click.option("--host-key", default=None, help="Key for the host (default IBKR_HOST_IP; in YAML: ibkr.host).")
@click.option("--port-key", default=None, help="Key for the port (default IBKR_PORT; in YAML: ibkr.port).")
@click.option("--dry-run", is_flag=True, help="Print the change as a diff; write nothing.")
@click.option("--no-verify", is_flag=True, help="Write even if the TWS handshake does not answer.")
def wsl_configure(host, port, route, discovery_port, timeout, env_path, yaml_path, host_key, port_key,
                  dry_run, no_verify) -> None:
    """Write the working host and port into the bot's .env (or YAML) file, keeping everything else."""
    import difflib
    from . import envfile
    if bool(env_path) == bool(yaml_path):
        fail("give exactly one of --env PATH or --yaml PATH")
    path = env_path or yaml_path
    try:
        old, _ = envfile.read_text(path)   # refuse a bad target before touching the network
    except envfile.FileRefused as e:
        fail(f"{e}; nothing written")
    report = _discover(host, port, route, discovery_port, timeout)
    if report.best is not None:
        new_host, new_port = report.best.host, report.best.port
    elif no_verify and host and port:
        new_host, new_port = host, port
    else:
        _print_report(report)
        hint = "" if no_verify else " (--no-verify with --host and --port writes anyway)"
        click.echo(f"relay: nothing written: no working path to TWS was found{hint}", err=True)
        sys.exit(EXIT_FAIL)
    text = old or ""
    try:
        if env_path:
            hk, pk = host_key or "IBKR_HOST_IP", port_key or "IBKR_PORT"
            new = envfile.update_env(text, {hk: new_host, pk: str(new_port)})
        else:
            hk, pk = host_key or "ibkr.host", port_key or "ibkr.port"
            new = envfile.update_yaml(text, {hk: new_host, pk: new_port})
    except envfile.FileRefused as e:
        fail(f"{path}: {e}; nothing written")
    if new == text and old is not None:
        click.echo(f"{path} already has {hk}={new_host} and {pk}={new_port}; nothing changed.")
        sys.exit(EXIT_OK)
    if dry_run:
        diff = difflib.unified_diff(text.splitlines(keepends=True), new.splitlines(keepends=True), path, path)
        click.echo("".join(diff), nl=False)
        click.echo("(dry run: nothing written)")
        sys.exit(EXIT_OK)
    backup = path + ".bak" if old is not None else None
    envfile.write_atomic(path, new.encode("utf-8"), backup=backup)
    kept = f" (previous version kept as {backup})" if backup else " (created)"
    click.echo(f"{path}: {hk}={new_host} {pk}={new_port}{kept}")


@wsl.command("forward")
@click.option("--host", help="The Windows host (skips discovery; also $TWS_RELAY_HOST).")
@click.option("--route", "routes", multiple=True, metavar="NAME",
              help="Forward only this route of the relay (repeatable). Default: all of them.")
@click.option("--discovery-port", type=click.IntRange(1, 65535), default=discovery.DEFAULT_PORT, show_default=True,
              help="The Windows relay's discovery port.")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=2.0, show_default=True,
              help="Seconds per connection attempt while looking for Windows.")
@click.option("--status-port", type=setting_type("status_port"), default=str(STATUS_PORT), show_default=True,
              help="Port of the forwarder's local status answer (`relay status`); 'off' turns it off.")
@click.option("--loop", "loop_choice", type=click.Choice(cfg.LOOPS), default="auto", show_default=True)
@click.option("--log-format", type=click.Choice(cfg.LOG_FORMATS), default="text", show_default=True)
@click.option("--log-level", type=click.Choice(cfg.LOG_LEVELS), default="info", show_default=True)
@click.option("--log-file", metavar="PATH", default=None,
              help="Also log to this rotating file ('off': never). Default: a file only when there is no console.")
def wsl_forward(host, routes, discovery_port, timeout, status_port, loop_choice, log_format, log_level,
                log_file) -> None:
    """Let bots in WSL connect to 127.0.0.1:7497 (TWS's own ports) unchanged.

    \b
    Listens on 127.0.0.1 inside WSL at TWS's port for each route of the Windows relay
    (tws-paper 7497, tws-live 7496, gateway-live 4001, gateway-paper 4002; any other route: its
    target's port) and relays to the Windows relay's port for it. While a route is down on Windows
    the local port refuses at once; when Windows moves, it follows. Ctrl+C stops it.
    In mirrored networking mode it says that none is needed and exits.
    """
    from . import discover as wslmod, forward
    facts = wslmod.gather_facts()
    sit = wslmod.situation(facts, host)
    if sit.mode == "mirrored" and sit.candidates[0].source == "mirrored mode":
        verdicts = asyncio.run(_probe_tws_ports("127.0.0.1", timeout))
        code, lines = forward.mirrored_verdict(verdicts)
        for line in lines:
            click.echo(line)
        sys.exit(code)
    settings = cfg.Settings(status_port=status_port, log_level=log_level, log_format=log_format, log_file=log_file)

    async def make():
        located = await forward.locate(facts, host, discovery_port, timeout)
        if located is None:
            raise CannotStart("no candidate address for Windows (no default route): pass --host")
        try:
            return forward.Forwarder(located, routes, settings,
                                     lambda: forward.locate(wslmod.gather_facts(), host, discovery_port, timeout))
        except forward.PlanError as e:
            raise CannotStart(str(e)) from None
    sys.exit(run(settings, loop_choice, forward.SOURCE, make))


@wsl.command("autostart")
@click.option("--route", "routes", multiple=True, metavar="NAME", help="Forward only these routes (repeatable).")
@click.option("--remove", is_flag=True, help="Undo it: disable and remove the unit, or the ~/.profile block.")
@click.option("--dry-run", is_flag=True, help="Print what would be written and run; change nothing.")
def wsl_autostart(routes, remove, dry_run) -> None:
    """Start `relay wsl forward` at every WSL login.

    With systemd (WSL's default on current distros): a user unit running this Python's relay,
    enabled and started now. Without it: a block in ~/.profile that starts the forwarder at login.
    """
    from . import autostart, envfile
    try:
        done = autostart.remove(dry_run=dry_run) if remove else autostart.install(
            tuple(a for r in routes for a in ("--route", r)), dry_run=dry_run)
    except (OSError, envfile.FileRefused) as e:
        fail(f"{e}; nothing else was changed")
    for line in done:
        click.echo(line.rstrip("\n"))


async def _probe_tws_ports(host: str, timeout: float):
    from . import discover as wslmod
    return list(await asyncio.gather(*(wslmod.probe(host, p, timeout, f"TWS port ({n})", via_relay=False)
                                       for n, p in tws.DEFAULT_PORTS.items())))
