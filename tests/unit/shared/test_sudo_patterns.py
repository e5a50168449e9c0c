"""The sudo pattern language (fleetgate.shared.sudo_patterns): parsing, resolution, matching, and the
property that shell syntax never matches."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given, settings, strategies as st

from fleetgate.shared.sudo_patterns import (
    SHELL_CHARS,
    Resolver,
    SudoPatternError,
    has_shell_syntax,
    matches,
    parse_line,
    parse_pattern,
)


# A tiny file system: merged /usr (/bin -> /usr/bin), as on Debian.
EXECUTABLES = {"/usr/bin/systemctl", "/usr/bin/journalctl", "/usr/bin/rm", "/usr/bin/id"}
EXECUTABLES |= {"/usr/sbin/nginx", "/usr/local/bin/id", "/usr/bin/env", "/usr/bin/sh"}


def _realpath(path: str) -> str:
    path = posixpath.normpath(path)
    if path == "/bin" or path.startswith("/bin/"):
        path = "/usr" + path
    if path == "/sbin" or path.startswith("/sbin/"):
        path = "/usr" + path
    return path


def _is_exec(path: str) -> bool:
    return _realpath(path) in EXECUTABLES


RESOLVER = Resolver.from_path(
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", _is_exec, _realpath
)


def allowed(pattern: str, command: str, *args: str) -> bool:
    return matches(parse_pattern(pattern), command, args, RESOLVER)


# -- parsing -------------------------------------------------------------------------------


def test_shell_syntax_is_the_shell_characters_and_the_control_characters() -> None:
    for code in [*range(0x3000), 0xFEFF, 0x1F600, 0x10FFFF]:
        char = chr(code)
        expected = char in SHELL_CHARS or code < 0x20 or code == 0x7F
        assert has_shell_syntax(f"ab{char}cd") is expected, hex(code)
    assert not has_shell_syntax("/usr/bin/systemctl")
    assert not has_shell_syntax("")


def test_parse_words_and_rest() -> None:
    p = parse_pattern("journalctl -u nginx *")
    assert (p.command, p.args, p.rest) == ("journalctl", ("-u", "nginx"), True)
    assert str(p) == "journalctl -u nginx *"
    q = parse_pattern("  systemctl   restart nginx ")
    assert (q.command, q.args, q.rest) == ("systemctl", ("restart", "nginx"), False)
    assert parse_pattern("/usr/bin/id").command == "/usr/bin/id"
    assert parse_pattern("systemctl restart app@1.service --no-block").args[-1] == "--no-block"


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("*", "cannot be the command"),
        ("ls; rm -rf /", "shell syntax"),
        ("ls | sh", "shell syntax"),
        ("ls && rm", "shell syntax"),
        ("echo $(id)", "shell syntax"),
        ("echo `id`", "shell syntax"),
        ("echo ${HOME}", "shell syntax"),
        ("cat > /etc/passwd", "shell syntax"),
        ("cat < /etc/shadow", "shell syntax"),
        ("ls\nrm", "control character"),
        ("ls\trm", "control character"),
        ("echo 'a b'", "shell syntax"),
        ('echo "a"', "shell syntax"),
        ("echo a\\ b", "shell syntax"),
        ("rm /tmp/*.log", "only as the whole last word"),
        ("rm * /tmp", "only as the whole last word"),
        ("ls ~", "shell syntax"),
        ("ls #x", "shell syntax"),
        ("./run", "relative path"),
        ("bin/run", "relative path"),
        ("-rf", "not a command name"),
        ("FOO=1 id", "not a command name"),
        ("x" * 5000, "longer than"),
    ],
)
def test_parse_refuses(pattern: str, reason: str) -> None:
    with pytest.raises(SudoPatternError, match=reason):
        parse_pattern(pattern)


def test_parse_line() -> None:
    assert parse_line("systemctl restart nginx") == ["systemctl", "restart", "nginx"]
    for bad in ("id; id", "id | sh", "echo $(id)", "echo 'x'", "ls *", "id\nid", "a=b id"):
        with pytest.raises(SudoPatternError):
            parse_line(bad)


# -- resolution ----------------------------------------------------------------------------


def test_resolution_like_sudo() -> None:
    assert RESOLVER.resolve("systemctl") == "/usr/bin/systemctl"
    assert RESOLVER.resolve("id") == "/usr/local/bin/id"  # secure_path order
    assert RESOLVER.resolve("nginx") == "/usr/sbin/nginx"
    assert RESOLVER.resolve("nope") is None
    assert RESOLVER.resolve("/usr/bin/../bin/rm") == "/usr/bin/rm"
    assert RESOLVER.resolve("/bin/rm") == "/usr/bin/rm"
    assert RESOLVER.resolve("../bin/rm", cwd="/usr/sbin") == "/usr/bin/rm"
    only_rel = Resolver.from_path(".:bin:/usr/bin", _is_exec, _realpath)
    assert only_rel.secure_path == ("/usr/bin",)  # relative PATH entries are ignored


# -- matching ------------------------------------------------------------------------------


def test_exact_pattern() -> None:
    assert allowed("systemctl restart nginx", "/usr/bin/systemctl", "restart", "nginx")
    assert allowed("systemctl restart nginx", "/bin/systemctl", "restart", "nginx")
    assert not allowed("systemctl restart nginx", "/usr/bin/systemctl", "restart")
    assert not allowed("systemctl restart nginx", "/usr/bin/systemctl", "restart", "nginx", "x")
    assert not allowed("systemctl restart nginx", "/usr/bin/systemctl", "stop", "nginx")
    assert not allowed("systemctl restart nginx", "/usr/bin/journalctl", "restart", "nginx")


def test_rest_matches_zero_or_more() -> None:
    p = "journalctl -u nginx *"
    assert allowed(p, "/usr/bin/journalctl", "-u", "nginx")
    assert allowed(p, "/usr/bin/journalctl", "-u", "nginx", "-n", "50")
    assert not allowed(p, "/usr/bin/journalctl", "-u", "sshd")
    assert not allowed(p, "/usr/bin/journalctl", "-u")


def test_command_is_compared_by_real_path() -> None:
    assert not allowed("id -u", "/usr/bin/id", "-u")  # 'id' is /usr/local/bin/id first
    assert allowed("/usr/bin/id -u", "/usr/bin/../bin/id", "-u")
    assert not allowed("id -u", "/usr/bin/../bin/rm", "-u")
    assert not allowed("id -u", "usr/local/bin/id", "-u")  # never a relative command
    assert not allowed("nope", "/usr/bin/nope")  # a pattern that resolves to nothing


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("/usr/bin/sh", ("-c", "journalctl -u nginx")),
        ("/usr/bin/env", ("journalctl", "-u", "nginx")),
        ("/usr/bin/journalctl", ("-u", "nginx", ";", "rm")),
        ("/usr/bin/journalctl", ("-u", "nginx", "$(rm -rf /)")),
        ("/usr/bin/journalctl", ("-u", "nginx", "a b")),
        ("/usr/bin/journalctl", ("-u", "nginx", "x\ny")),
        ("/usr/bin/journalctl", ("-u", "nginx", ">/etc/passwd")),
    ],
)
def test_wrappers_and_shell_syntax_never_match(command: str, args: tuple[str, ...]) -> None:
    assert not allowed("journalctl -u nginx *", command, *args)


# -- properties ----------------------------------------------------------------------------

SAFE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._=,:@/", min_size=1, max_size=8)
META = st.sampled_from([*sorted(SHELL_CHARS), "&&", "$(", "||", ">>", "2>&1", "\x01", "\x7f"])


@st.composite
def shelly_words(draw: st.DrawFn) -> str:
    """A word with at least one piece of shell syntax somewhere in it."""
    return draw(SAFE) * draw(st.integers(0, 1)) + draw(META) + draw(SAFE) * draw(st.integers(0, 1))


@st.composite
def clean_patterns(draw: st.DrawFn) -> str:
    command = draw(st.sampled_from(["systemctl", "journalctl", "/usr/bin/rm", "id", "nginx"]))
    args = draw(st.lists(SAFE.filter(lambda w: not w.startswith("/")), max_size=4))
    rest = draw(st.booleans())
    return " ".join([command, *args, *(["*"] if rest else [])])


@settings(max_examples=400, deadline=None)
@given(clean_patterns(), st.lists(SAFE, max_size=5), shelly_words(), st.integers(0, 5))
def test_no_argv_with_shell_syntax_ever_matches(
    pattern: str, args: list[str], bad: str, where: int
) -> None:
    parsed = parse_pattern(pattern)
    command = RESOLVER.resolve(parsed.command)
    assert command is not None
    full = [*parsed.args, *args]
    full.insert(min(where, len(full)), bad)
    assert not matches(parsed, command, full, RESOLVER)
    # ...and neither through the command word itself.
    assert not matches(parsed, command + bad, list(parsed.args), RESOLVER)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=60), clean_patterns())
def test_no_line_with_shell_syntax_parses_or_matches(line: str, pattern: str) -> None:
    parsed = parse_pattern(pattern)
    if has_shell_syntax(line.replace(" ", "")):
        with pytest.raises(SudoPatternError):
            parse_line(line)
        return
    try:
        argv = parse_line(line)
    except SudoPatternError:
        return
    command = RESOLVER.resolve(argv[0])
    if command is not None and matches(parsed, command, argv[1:], RESOLVER):
        # A match is only ever the pattern's words, plus anything after a '*'.
        assert argv[1 : 1 + len(parsed.args)] == list(parsed.args)
        assert parsed.rest or len(argv) == 1 + len(parsed.args)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_any_pattern_with_shell_syntax_is_refused(text: str) -> None:
    words = text.split(" ")
    stripped = [w for w in words if w]
    shelly = any(has_shell_syntax(w) for w in stripped[:-1]) or (
        bool(stripped) and stripped[-1] != "*" and has_shell_syntax(stripped[-1])
    )
    if shelly:
        with pytest.raises(SudoPatternError):
            parse_pattern(text)


@settings(max_examples=300, deadline=None)
@given(clean_patterns())
def test_a_pattern_matches_its_own_words(pattern: str) -> None:
    parsed = parse_pattern(pattern)
    command = RESOLVER.resolve(parsed.command)
    assert command is not None
    assert matches(parsed, command, list(parsed.args), RESOLVER)
    assert matches(parse_pattern(str(parsed)), command, list(parsed.args), RESOLVER)
    assert matches(parsed, command, [*parsed.args, "x"], RESOLVER) is parsed.rest
    if parsed.args:
        assert not matches(parsed, command, list(parsed.args[:-1]), RESOLVER)
