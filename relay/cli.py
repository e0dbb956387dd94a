"""The command line: `relay` / `relay serve` (relay.yaml, or one route), `relay check`, `relay status`,
`relay logs`, `relay stop`, `relay kick`, `relay doctor`, and `relay wsl discover | configure | forward |
autostart` (the WSL side, in relay/wsl/commands.py). The service runner (signals, a graceful stop,
Ctrl+C twice) is relay/runner.py.

Exit codes: 0 stopped cleanly, 1 unexpected failure, 2 bad configuration, usage or bind error.
"""
from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import replace
from typing import List, Optional, Tuple

import click

from . import __version__, config as cfg, discovery, tws
from .cli_args import EXIT_FAIL, EXIT_OK, STATUS_PORT, fail, setting_options
from .runner import run
from .service import Relay
from .wsl.commands import wsl


def find_config(explicit: Optional[str]) -> Tuple[Optional[str], List[str]]:
    candidates = cfg.config_candidates(explicit, os.getcwd(), sys.platform, dict(os.environ))
    for path in candidates:
        if explicit or os.path.exists(path):
            return path, candidates
    return None, candidates


def one_route(listen: str, target: str, allow: Tuple[str, ...], max_connections: int, name: Optional[str]) -> cfg.Route:
    try:
        to = cfg.parse_endpoint(target, "--target", listen=False)
        if name is not None and not cfg.NAME_RE.match(name):
            raise cfg.ConfigError(f"{name!r} is not a valid name (letters, digits, '.', '_', '-')", "--name")
        route = cfg.Route(
            name=name or route_name_for(to.port),
            listen=cfg.parse_endpoint(listen, "--listen", listen=True),
            target=to,
            allow=tuple(cfg.parse_network(a, "--allow") for a in allow) or None,
            max_connections=max_connections)
        if cfg.reaches(route.target, route.listen):
            raise cfg.ConfigError(cfg.self_target(route.target, route, True, "--listen"), "--target")
    except cfg.ConfigError as e:
        fail(str(e))
    return route


def route_name_for(target_port: int) -> str:
    """The one-route form's default name: TWS's own name for its port, so `relay wsl` picks it."""
    return {p: n for n, p in tws.DEFAULT_PORTS.items()}.get(target_port, f"to-{target_port}")


def _threads_running(status: dict) -> str:
    n, busy = status.get("pump_threads"), status.get("busy_poll_us")
    if status.get("pump") != "native" or n is None:
        return ""
    return f" ({n} thread{'' if n == 1 else 's'} running{f', polling busily {busy} us' if busy else ''})"


# ------------------------------------------------------------------------------------ commands

@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="relay")
@click.pass_context
def main(ctx: click.Context) -> None:
    """tws-relay: let bots in WSL (or Docker) reach TWS / IB Gateway while TWS keeps
    "Allow connections from localhost only" on.

    With no command, serves the routes of relay.yaml (same as `relay serve`).
    """
    from .logs import guard_standard_fds
    guard_standard_fds()
    if ctx.invoked_subcommand is None:
        ctx.invoke(serve)


main.add_command(wsl)


@main.command()
@click.option("--config", "config_path", metavar="FILE",
              help="relay.yaml to use (default: ./relay.yaml, then the user config folder).")
@click.option("--listen", metavar="HOST:PORT", help="One-route form: address to listen on (needs --target).")
@click.option("--target", metavar="HOST:PORT", help="One-route form: where to relay to, e.g. 127.0.0.1:7497.")
@click.option("--allow", multiple=True, metavar="CIDR",
              help="One-route form: allowed client networks (repeatable). Default: loopback + the listen subnet.")
@click.option("--max-connections", type=click.IntRange(1, 10000), default=32, show_default=True,
              help="One-route form: connection cap.")
@click.option("--name", default=None,
              help="One-route form: route name for logs and `relay wsl` (default: tws-paper for a target on "
                   "port 7497, tws-live 7496, gateway-live 4001, gateway-paper 4002, else to-PORT).")
@setting_options(one_route=True)
@setting_options(one_route=False)
def serve(config_path, listen, target, allow, max_connections, name, **settings) -> None:
    """Serve routes: from relay.yaml, or one route given by --listen and --target.

    \b
    Examples:
      relay                                    # the routes of ./relay.yaml (or the user config folder)
      relay serve --config C:\\relay\\relay.yaml
      relay serve --listen 127.0.0.1:14001 --target 127.0.0.1:4001   # one route, like socat
    """
    ctx = click.get_current_context()
    given = {k: v for k, v in settings.items() if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    one_route_only = [o for o, k in [("--allow", "allow"), ("--name", "name")] if ctx.get_parameter_source(k)
                      == click.core.ParameterSource.COMMANDLINE]
    one_route_only += [s.option for s in cfg.SETTINGS if s.one_route and s.field in given]
    if bool(listen) != bool(target):
        fail("--listen and --target go together")
    if listen:
        route = one_route(listen, target, allow, max_connections, name)
        discovery_port = given.get("discovery_port", cfg.DISCOVERY_PORT)
        if discovery_port and route.listen.port == discovery_port:      # 0: any free port, never a clash
            if "discovery_port" in given:
                fail(f"--listen port {route.listen.port} is also the discovery port: give --discovery-port another port")
            given["discovery_port"] = None   # the route asked for the default discovery port: the route wins
        config, source_note = cfg.Config(routes=(route,)), "command line"
    else:
        if one_route_only:
            fail(f"{', '.join(one_route_only)} belong(s) to the one-route form (--listen/--target); "
                 "in relay.yaml use 'allow:', 'name:', 'discovery_port:' and 'status_port:'")
        config, source_note = _load(config_path)
    config = replace(config, settings=replace(config.settings, **given))

    async def make():
        return Relay(config)
    sys.exit(run(config.settings, config.settings.loop, source_note, make))


@main.command()
@click.option("--config", "config_path", metavar="FILE", help="relay.yaml to check.")
def check(config_path) -> None:
    """Validate relay.yaml and print its routes; exit 2 if it has a problem."""
    config, source_note = _load(config_path, one_route_hint=False)
    click.echo(f"{source_note}: ok")
    for r in config.routes:
        allow = ", ".join(map(str, r.allow)) if r.allow else (
            "loopback + the adapter's subnet" if r.interface else "loopback + listen subnet")
        click.echo(f"  {r.name}: {cfg.where(r)} -> {r.target}  allow: {allow}  max {r.max_connections}")


def _load(config_path: Optional[str], one_route_hint: bool = True) -> Tuple[cfg.Config, str]:
    path, tried = find_config(config_path)
    if path is None:
        fail("no relay.yaml found (looked in: " + ", ".join(tried) + "). Pass --config FILE" +
             (", or serve one route with `relay serve --listen HOST:PORT --target HOST:PORT`" if one_route_hint
              else ""))
    path = os.path.abspath(path)
    try:
        config = cfg.load(path)
    except cfg.ConfigError as e:
        fail(str(e))
    how = "given with --config" if config_path else "found"
    return config, f"{path} ({how})"


# ------------------------------------------------------------------------------------ relay wsl

# ------------------------------------------------------------------------------ status, doctor

@main.command()
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help=f"Ask only the relay with this status port. Default: every relay this user runs on this "
                   f"machine, and whatever answers on {STATUS_PORT}.")
@click.option("--json", "as_json", is_flag=True, help='Print {"relays": [answer, ...]} as JSON.')
def status(port, as_json) -> None:
    """Show the running relays' routes, their state, and open connections with their real peers."""
    import json
    from . import doctor, logs, registry
    if port is None:
        docs = asyncio.run(doctor.running_relays([STATUS_PORT]))
    else:
        docs = [d for d in [asyncio.run(discovery.fetch_status(port))] if d is not None]
    if not docs:
        where = f"127.0.0.1:{port}" if port else f"{registry.default_dir()} or 127.0.0.1:{STATUS_PORT}"
        click.echo(f"relay: no running relay found (looked in {where}); is it running, with its status "
                   f"answer on (status_port)?", err=True)
        failed = logs.last_start_failure(logs.default_log_file(sys.platform, os.environ))
        if failed:
            click.echo(f"relay: the last start without a console failed: {failed}", err=True)
        sys.exit(EXIT_FAIL)
    if as_json:
        click.echo(json.dumps({"relays": docs}, indent=2))
        return
    for doc in docs:
        click.echo(f"tws-relay {doc.get('version')}, pid {doc.get('pid')}, up {doc.get('up_seconds')} s, "
                   f"config {doc.get('config')}, log {doc.get('log_file') or 'to its console'}, "
                   f"{doc.get('pump', 'python')} pump{_threads_running(doc)}")
        for r in doc.get("routes", []):
            target = {True: "up", False: "down", None: "not checked"}[r.get("target_up")]
            click.echo(f"  route {r['name']}: {r['state']}  {r['listen']} -> {r['target']} (target {target})  "
                       f"{len(r['connections'])} connection(s)")
            for c in r["connections"]:
                who = f"client_id {c['client_id']} v{c['server_version']}" if c.get("client_id") is not None else "-"
                process = f"  is `{c['command']}` (pid {c['pid']})" if c.get("pid") else ""
                click.echo(f"      {c['peer']:<22} {who:<22} {c.get('phase') or '':<10} up {c['bytes_up']} B  "
                           f"down {c['bytes_down']} B  age {c['age']} s{process}")
                if c.get("reason"):
                    click.echo(f"          why: {c['reason']}")


@main.command("logs")
@click.option("-n", "count", type=click.IntRange(0, 100000), default=40, show_default=True,
              help="How many of the last lines to print.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines as they come (Ctrl+C stops).")
@click.option("--file", "path", metavar="PATH", help="A log file to read (default: the running relay's).")
def logs_command(count, follow, path) -> None:
    """Print the end of the running relay's log file (and follow it with -f), wherever it is."""
    from . import logs, registry
    if path is None:
        files = [rec["log_file"] for rec in registry.live() if rec.get("log_file")]
        fallback = logs.default_log_file(sys.platform, os.environ)
        path = files[0] if files else fallback if fallback and os.path.exists(fallback) else None
        if path is None:
            fail("no log file found: a relay started from a console logs to that console (set log.file, or "
                 "--log-file, to keep a file)")
        if len(set(files)) > 1:
            click.echo(f"(several relays run; this is {path}; the others: {', '.join(sorted(set(files) - {path}))})",
                       err=True)
    try:
        lines, offset = logs.tail(path, count)
        for line in lines:
            click.echo(line)
        if follow:
            for line in logs.follow(path, offset):
                click.echo(line)
    except FileNotFoundError:
        fail(f"{path}: no such log file")
    except KeyboardInterrupt:
        pass


@main.command()
@click.option("--pid", type=int, default=None, help="Stop only the relay with this process id.")
def stop(pid) -> None:
    """Stop running relays cleanly, as Ctrl+C does: stop accepting, let open connections finish
    (shutdown_grace), then cut the rest. For a relay with no console (the logon task), which no
    Ctrl+C can reach. Only the user who runs the relay can stop it this way."""
    from . import control, registry
    relays = [rec for rec in registry.live() if rec.get("control_port") and rec.get("control_token")
              and pid in (None, rec["pid"])]
    if not relays:
        click.echo("relay: no running relay of yours found" + (f" with pid {pid}" if pid else ""), err=True)
        sys.exit(EXIT_FAIL)
    failed = False
    for rec in relays:
        answer = asyncio.run(control.ask(rec["control_port"], {"token": rec["control_token"], "action": "stop"}))
        if answer.get("ok"):
            click.echo(f"stopping relay pid {rec['pid']} (config {rec.get('config')})")
        else:
            failed = True
            click.echo(f"relay: pid {rec['pid']}: {answer.get('error')}", err=True)
    sys.exit(EXIT_FAIL if failed else EXIT_OK)


@main.command()
@click.argument("client_id", type=int)
@click.option("--route", help="The route whose connection to close, when the clientId is held on several.")
def kick(client_id, route) -> None:
    """Close the connection holding CLIENT_ID (both legs), so TWS frees the clientId at once.

    For a clientId left "in use" by a bot that died or hangs. `relay status` lists the clientIds.
    Only the user who runs the relay can do this: it needs the secret in the relay's record, which
    only that user can read.
    """
    from . import control, registry
    relays = [rec for rec in registry.live() if rec.get("control_port") and rec.get("control_token")]
    if not relays:
        click.echo(f"relay: no running relay of yours found in {registry.default_dir()} (is it running, as "
                   f"this user?)", err=True)
        sys.exit(EXIT_FAIL)
    errors = []
    for rec in relays:
        answer = asyncio.run(control.ask(rec["control_port"], {"token": rec["control_token"], "action": "kick",
                                                                "client_id": client_id, "route": route}))
        if answer.get("ok"):
            for k in answer["kicked"]:
                click.echo(f"closed clientId {k['client_id']} on route {k['route']} (peer {k['peer']}), relay pid "
                           f"{rec['pid']}: TWS frees the clientId now")
            return
        errors.append(f"pid {rec['pid']}: {answer.get('error')}")
    click.echo("relay: clientId not closed: " + "; ".join(errors), err=True)
    sys.exit(EXIT_FAIL)


@main.command()
@click.option("--config", "config_path", metavar="FILE", help="relay.yaml to check (host side).")
@click.option("--side", type=click.Choice(["auto", "host", "wsl"]), default="auto", show_default=True,
              help="host: the Windows (relay) side; wsl: the bot's side. auto: host on Windows, else wsl.")
@click.option("--host", help="WSL side: the Windows host to check (skips discovery).")
@click.option("--route", help="WSL side: the route to check when the relay has several.")
@click.option("--discovery-port", type=click.IntRange(1, 65535), default=discovery.DEFAULT_PORT, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def doctor(config_path, side, host, route, discovery_port, as_json) -> None:
    """Check everything between a WSL bot and TWS; print a verdict per check with the fix.
    Exit 0 only when no check fails."""
    import json
    from . import doctor as doc
    if side == "auto":
        side = "host" if sys.platform == "win32" else "wsl"
    if side == "host":
        path, _ = find_config(config_path)
        checks = asyncio.run(doc.host_checks(path))
    else:
        checks = asyncio.run(doc.wsl_checks(host, route, discovery_port))
    click.echo(json.dumps(doc.as_json(checks), indent=2) if as_json else doc.render(checks))
    sys.exit(EXIT_OK if doc.ok(checks) else EXIT_FAIL)
