"""What the commands share: exit codes, the one-line failure (exit 2, never a traceback), and the
options made from config.SETTINGS, read by relay.yaml's own readers."""
from __future__ import annotations

import sys
from typing import Callable

import click
import yaml

from . import config as cfg

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
STATUS_PORT = cfg.STATUS_PORT


class SettingValue(click.ParamType):
    """A setting's value on the command line, read as relay.yaml reads it: a whole number or a YAML word
    (off, false, no, ...) as such, any other text as text; then the setting's own reader checks it."""

    def __init__(self, setting: cfg.Setting):
        self.setting, self.name = setting, setting.metavar

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        try:
            scalar = yaml.safe_load(value)
        except yaml.YAMLError:
            scalar = value
        try:
            return self.setting.read(scalar if isinstance(scalar, (bool, int)) else value, self.setting.option)
        except cfg.ConfigError as e:
            self.fail(e.problem, param, ctx)


def setting_type(key: str) -> SettingValue:
    """The option type of the setting at `key`, for a command that takes it under its own option."""
    (setting,) = [s for s in cfg.SETTINGS if s.key == key]
    return SettingValue(setting)


def setting_options(one_route: bool) -> Callable:
    """`relay serve`'s options for the settings that config.SETTINGS gives a command-line form; each
    arrives as its Settings field's name, None when not given."""
    def add(command: Callable) -> Callable:
        for s in reversed([s for s in cfg.SETTINGS if s.help and s.one_route == one_route]):
            if s.read is cfg.flag:
                command = click.option(s.option, s.field, is_flag=True, default=None, help=s.help)(command)
            else:
                command = click.option(s.option, s.field, type=SettingValue(s), default=None, metavar=s.metavar,
                                       help=("One-route form: " if one_route else "") + s.help)(command)
        return command
    return add


def fail(message: str) -> "NoReturn":  # noqa: F821
    from . import logs
    if not logs.has_console():      # the logon task's relayw: nobody would ever see it
        logs.record_start_failure(message)
    click.echo(f"relay: error: {message}", err=True)
    sys.exit(EXIT_USAGE)
