"""What the commands share: exit codes, the one-line failure (exit 2, never a traceback), and the
option types that take a number or a word."""
from __future__ import annotations

import sys

import click

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
# a number of native pump threads, or `auto` (one per CPU): 0
PUMP_THREADS = NumberOrWord("N|auto", {"auto": 0}, 1, cfg.MAX_PUMP_THREADS, "a number of threads", "auto")


def fail(message: str) -> "NoReturn":  # noqa: F821
    from . import logs
    if not logs.has_console():      # the logon task's relayw: nobody would ever see it
        logs.record_start_failure(message)
    click.echo(f"relay: error: {message}", err=True)
    sys.exit(EXIT_USAGE)
