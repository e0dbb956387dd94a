"""What the commands share: exit codes, the one-line failure (exit 2, never a traceback), the
option type that takes a port or `off`, and `relay serve`'s options made from config.SETTINGS."""
from __future__ import annotations

import sys
from typing import Callable

import click
import yaml

from . import config as cfg

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
STATUS_PORT = cfg.STATUS_PORT


class NumberOrWord(click.ParamType):
    """A whole number from `low` to `high`, or one of `words` (each standing for a value)."""

    def __init__(self, name: str, words: dict, low: int, high: int, what: str, word: str):
        self.name, self.words, self.low, self.high, self.what, self.word = name, words, low, high, what, word

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text in self.words:
            return self.words[text]
        if text.isdigit() and self.low <= int(text) <= self.high:
            return int(text)
        self.fail(f"{value!r} is not {self.what} ({self.low}-{self.high}) or {self.word!r}", param, ctx)


# a port, or `off` (also `false`, as relay.yaml says it): None
PORT_OR_OFF = NumberOrWord("PORT|off", {"off": None, "false": None, "no": None}, 0, 65535, "a port", "off")


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
