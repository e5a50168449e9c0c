"""The sudo pattern language: parse patterns, resolve commands like sudo, match argv. Pure.

A pattern is a command and its arguments, separated by spaces, e.g.
``systemctl restart nginx`` or ``journalctl -u nginx *``. It is matched word by word on
the argv of a call, never on a raw string:

* the command word is resolved to an absolute path the way sudo resolves it: a word with
  a slash is made absolute and normalised with realpath semantics (``/usr/bin/../bin/rm``
  is ``/usr/bin/rm``, symlinks followed), a bare name is searched in sudo's
  ``secure_path``; the call's command must resolve to the same real file;
* every further word must be equal, except a last word ``*``, which matches any remaining
  arguments (zero or more);
* shell syntax can never match: a pattern containing any of :data:`SHELL_CHARS` is
  refused when it is parsed, and a call whose argv has a word containing one is refused
  whatever the patterns say (a ``*`` cannot swallow ``; rm -rf /``).

The file-system look-ups come in as callables (:class:`Resolver`), so this module does no
I/O and its tests need no file system.
"""

from __future__ import annotations

import functools
import posixpath
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol


__all__ = [
    "DEBIAN_SECURE_PATH",
    "MAX_PATTERN_CHARS",
    "SHELL_CHARS",
    "CommandResolver",
    "Resolver",
    "SudoPattern",
    "SudoPatternError",
    "first_match",
    "has_shell_syntax",
    "matches",
    "parse_line",
    "parse_pattern",
    "parse_patterns",
]

DEBIAN_SECURE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""sudo's ``secure_path`` in Debian's default sudoers."""

MAX_PATTERN_CHARS = 4096
MAX_WORDS = 256

SHELL_CHARS = frozenset(";|&$`<>(){}[]*?~#!\\'\"\n\r\t \0\x0b\x0c")
"""Characters that mean something to a shell (separators, pipes, substitutions,
redirections, globs, quoting, comments, history, word splitting). None may appear in a
pattern word (except a whole last word ``*``) nor in a matched argv word."""

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-@:,")


class SudoPatternError(ValueError):
    """A pattern or a command line is not in the pattern language; the message says why."""


_SHELL_SYNTAX = re.compile("[" + re.escape("".join(sorted(SHELL_CHARS))) + r"\x00-\x1f\x7f]")


def has_shell_syntax(word: str) -> bool:
    """Whether ``word`` contains shell syntax or a control character."""
    return _SHELL_SYNTAX.search(word) is not None


@dataclass(frozen=True, slots=True)
class SudoPattern:
    """A parsed pattern: ``command`` as written, literal ``args``, and whether a last
    ``*`` allows any remaining arguments (``rest``)."""

    command: str
    args: tuple[str, ...]
    rest: bool

    def __str__(self) -> str:
        return " ".join((self.command, *self.args, *(("*",) if self.rest else ())))


def _words(text: str, what: str) -> list[str]:
    if len(text) > MAX_PATTERN_CHARS:
        raise SudoPatternError(f"{what} is longer than {MAX_PATTERN_CHARS} characters")
    for bad in ("\n", "\r", "\t", "\0"):
        if bad in text:
            raise SudoPatternError(f"{what} contains a control character {bad!r}")
    words = text.split(" ")
    words = [w for w in words if w]
    if not words:
        raise SudoPatternError(f"{what} is empty")
    if len(words) > MAX_WORDS:
        raise SudoPatternError(f"{what} has more than {MAX_WORDS} words")
    return words


def _check_command_word(word: str, what: str) -> None:
    if word.startswith("/"):
        if any(c not in _NAME_CHARS and c != "/" for c in word):
            raise SudoPatternError(f"{what}: the command {word!r} contains shell syntax")
        return
    if "/" in word:
        raise SudoPatternError(
            f"{what}: the command {word!r} is a relative path; give a bare name or an absolute path"
        )
    if word.startswith("-") or any(c not in _NAME_CHARS for c in word):
        raise SudoPatternError(f"{what}: {word!r} is not a command name")


@functools.lru_cache(maxsize=256)
def parse_pattern(text: str) -> SudoPattern:
    """Parse one pattern (cached: a session's patterns are parsed at every sudo call).

    Raises:
        SudoPatternError: empty, too long, shell syntax anywhere (``*`` only as a whole
            last word), or a command word that is not a bare name or an absolute path.
    """
    what = f"sudo pattern {text[:80]!r}"
    words = _words(text, what)
    rest = words[-1] == "*"
    if rest:
        words = words[:-1]
        if not words:
            raise SudoPatternError(f"{what}: '*' cannot be the command")
    for word in words:
        if has_shell_syntax(word):
            hint = " ('*' is allowed only as the whole last word)" if "*" in word else ""
            raise SudoPatternError(f"{what}: {word!r} contains shell syntax{hint}")
    _check_command_word(words[0], what)
    return SudoPattern(words[0], tuple(words[1:]), rest)


def parse_patterns(texts: Iterable[str]) -> list[SudoPattern]:
    """Parse every pattern (the first error is raised)."""
    return [parse_pattern(text) for text in texts]


def parse_line(line: str) -> list[str]:
    """The argv of a command line sent through the API for elevation.

    The line must be plain words separated by spaces: with no quoting, escaping or any
    other shell syntax, splitting on spaces is exactly what a shell (or ``shlex``) would
    do, so there is one reading of the line and it is the one that runs.

    Raises:
        SudoPatternError: empty, or any shell syntax.
    """
    words = _words(line, "the command line")
    for word in words:
        if has_shell_syntax(word):
            raise SudoPatternError(f"the command line: {word[:80]!r} contains shell syntax")
    _check_command_word(words[0], "the command line")
    return words


@dataclass(frozen=True, slots=True)
class Resolver:
    """Resolves a command word the way sudo does.

    ``is_executable(path)`` says whether a regular executable file is there;
    ``realpath(path)`` normalises an absolute path (``..``, ``.``, ``//``, symlinks), or
    returns None when the path cannot be trusted (the agent's version refuses a path
    someone other than root could change between the decision and sudo's ``exec``).
    """

    secure_path: tuple[str, ...]
    is_executable: Callable[[str], bool]
    realpath: Callable[[str], str | None] = posixpath.normpath

    @classmethod
    def from_path(
        cls,
        secure_path: str,
        is_executable: Callable[[str], bool],
        realpath: Callable[[str], str | None] = posixpath.normpath,
    ) -> Resolver:
        """A resolver searching a colon-separated PATH (relative entries are ignored,
        as sudo ignores them)."""
        dirs = tuple(d for d in secure_path.split(":") if d.startswith("/"))
        return cls(dirs, is_executable, realpath)

    def resolve(self, word: str, cwd: str = "/") -> str | None:
        """The real absolute path of the command ``word`` names, or None if not found
        (or not trusted)."""
        if "/" in word:
            path = word if word.startswith("/") else posixpath.join(cwd, word)
            return self.realpath(path)
        for directory in self.secure_path:
            candidate = posixpath.join(directory, word)
            if self.is_executable(candidate):
                return self.realpath(candidate)
        return None


class CommandResolver(Protocol):
    """What matching needs from the file system: a pattern's command word resolved
    (:meth:`Resolver.resolve`) and a call's absolute command normalised (``realpath``)."""

    def resolve(self, word: str, cwd: str = "/") -> str | None:
        """The real absolute path of the command ``word`` names, or None."""
        ...

    def realpath(self, path: str) -> str | None:
        """The real path of the absolute ``path``, or None when it cannot be trusted."""
        ...


def _plain_call(command_path: str, args: Sequence[str]) -> bool:
    """Whether a call can match at all: an absolute command, no shell syntax anywhere."""
    if not command_path.startswith("/") or has_shell_syntax(command_path):
        return False
    return not any(has_shell_syntax(arg) for arg in args)


def _allows(
    pattern: SudoPattern, real: str, args: Sequence[str], resolver: CommandResolver
) -> bool:
    # None never equals a resolved path: a pattern that resolves to nothing never matches.
    if resolver.resolve(pattern.command) != real:
        return False
    n = len(pattern.args)
    if pattern.rest:
        return tuple(args[:n]) == pattern.args
    return tuple(args) == pattern.args


def matches(
    pattern: SudoPattern, command_path: str, args: Sequence[str], resolver: CommandResolver
) -> bool:
    """Whether a call of ``command_path`` (absolute, as sudo will execute it) with
    ``args`` (argv without argv[0]) is allowed by ``pattern``."""
    if not _plain_call(command_path, args):
        return False
    real = resolver.realpath(command_path)
    return real is not None and _allows(pattern, real, args, resolver)


def first_match(
    patterns: Iterable[str], command_path: str, args: Sequence[str], resolver: CommandResolver
) -> str | None:
    """The first of ``patterns`` (texts) that allows the call (see :func:`matches`), or
    None. The call is checked and its command resolved once, whatever the number of
    patterns; a pattern that does not parse never matches."""
    if not _plain_call(command_path, args):
        return None
    real = resolver.realpath(command_path)
    if real is None:  # an untrusted path never matches
        return None
    for text in patterns:
        try:
            pattern = parse_pattern(text)
        except SudoPatternError:
            continue
        if _allows(pattern, real, args, resolver):
            return text
    return None
