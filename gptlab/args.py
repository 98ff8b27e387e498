"""Argument parsing every command shares: an argparse whose bad flag is one UserError line, and the
true/false words that flags and config values accept."""

from __future__ import annotations

import argparse
import difflib
import re
import sys

from gptlab.errors import UserError

BOOL_WORDS = dict.fromkeys(("1", "true", "yes", "on", "y", "t"),
                           True) | dict.fromkeys(("0", "false", "no", "off", "n", "f"), False)


class ArgParser(argparse.ArgumentParser):
    """argparse whose bad flag is one UserError line naming the closest valid flag, never the usage."""

    def __init__(self, *args, **kwargs):
        # --temp must not silently mean --temperature
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def parse_args(self, args=None, namespace=None):
        return super().parse_args(self._known_flags_first(args), namespace)

    def parse_intermixed_args(self, args=None, namespace=None):
        return super().parse_intermixed_args(self._known_flags_first(args), namespace)

    def _known_flags_first(self, args):
        # A mistyped flag is the real problem: name it before "the following arguments are required".
        args = sys.argv[1:] if args is None else list(args)
        flags = {s for a in self._actions for s in a.option_strings}
        for tok in args:
            if tok.startswith("--") and tok != "--" and tok.split("=", 1)[0] not in flags:
                self.error(f"unrecognized arguments: {tok}")
        return args

    def error(self, message: str):
        # Only an unknown flag has a "closest valid flag"; other messages already name the fix.
        m = re.search(r"unrecognized arguments: (\S+)", message)
        flags = [s for a in self._actions for s in a.option_strings]
        close = difflib.get_close_matches(m.group(1).split("=")[0], flags, n=1, cutoff=0.5) if m else []
        hint = f": did you mean {close[0]}?" if close else f" (see `{self.prog} --help`)"
        raise UserError(f"{self.prog}: {message}{hint}")


def flag_bool(text: str) -> bool:
    """A true/false flag value as nanoGPT (True/False) and shell users (1/0, yes/no) write it."""
    if str(text).strip().lower() not in BOOL_WORDS:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return BOOL_WORDS[str(text).strip().lower()]


def take_flag(argv: list[str], flag: str) -> tuple[bool, list[str]]:
    """(value, the other arguments) of a true/false `flag` in a `--key value` list: bare (true),
    `flag=WORD` or `flag WORD` with a true/false word."""
    value, rest, i = False, [], 0
    while i < len(argv):
        name, eq, word = argv[i].partition("=")
        if name != flag:
            rest.append(argv[i])
        elif eq:
            value = flag_bool(word) if word.strip().lower() in BOOL_WORDS else _bad_flag(flag, word)
        elif i + 1 < len(argv) and argv[i + 1].strip().lower() in BOOL_WORDS:
            value, i = BOOL_WORDS[argv[i + 1].strip().lower()], i + 1
        else:
            value = True
        i += 1
    return value, rest


def _bad_flag(flag: str, word: str) -> bool:
    raise UserError(f"{flag}={word}: expected true or false")
