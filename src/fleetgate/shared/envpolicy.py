"""Which environment variables a command request may set. Pure.

A command's environment is built from scratch by the agent; a request may add variables.
Some names change which program runs or what it loads before the command's own code runs
(the dynamic loader, interpreters, the shell's start-up files). A request that sets one of
them turns an allowed ``uptime`` into any program, so both ends refuse them: the control
plane when the command is created, the agent again when it arrives. An operator can allow
a name on purpose (agent ``exec.allowed_env``, control plane ``allowed_env``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable


__all__ = ["DENIED_ENV_NAMES", "DENIED_ENV_PREFIXES", "denied_env_names", "is_denied_env_name"]

DENIED_ENV_NAMES = frozenset(
    {
        # where programs are found
        "PATH",
        # shells: start-up files, word splitting, function import
        "BASH_ENV",
        "ENV",
        "IFS",
        "CDPATH",
        "GLOBIGNORE",
        "PS4",
        "SHELLOPTS",
        "BASHOPTS",
        "PROMPT_COMMAND",
        # the C library and loader
        "GCONV_PATH",
        "GETCONF_DIR",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "LOCPATH",
        "MALLOC_TRACE",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "RES_OPTIONS",
        "TZDIR",
        # interpreters
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "PYTHONINSPECT",
        "PYTHONUSERBASE",
        "PERL5LIB",
        "PERLLIB",
        "PERL5OPT",
        "PERL5DB",
        "RUBYLIB",
        "RUBYOPT",
        "NODE_OPTIONS",
        "NODE_PATH",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
        "CLASSPATH",
        "PHPRC",
        "PHP_INI_SCAN_DIR",
        "LUA_PATH",
        "LUA_CPATH",
        "TCLLIBPATH",
        "GIT_EXEC_PATH",
        "GIT_SSH",
        "GIT_SSH_COMMAND",
        "EDITOR",
        "VISUAL",
        "PAGER",
        "SUDO_ASKPASS",
        "SSH_ASKPASS",
        "OPENSSL_CONF",
        "OPENSSL_ENGINES",
    }
)
"""Names refused as they are (upper case; names are case-sensitive)."""

DENIED_ENV_PREFIXES = ("LD_", "DYLD_", "BASH_FUNC_", "MALLOC_", "GLIBC_", "PYTHON", "PERL")
"""Name prefixes refused: the loader (``LD_PRELOAD``, ``LD_LIBRARY_PATH``, ...), exported
shell functions, allocator and glibc tunables, and every Python and Perl variable."""


def is_denied_env_name(name: str) -> bool:
    """Whether a request may not set ``name`` (unless an operator allowed it)."""
    return name in DENIED_ENV_NAMES or name.startswith(DENIED_ENV_PREFIXES)


def denied_env_names(names: Iterable[str], allowed: Collection[str] = ()) -> list[str]:
    """The names of ``names`` a request may not set, sorted; ``allowed`` overrides."""
    return sorted(n for n in set(names) if n not in allowed and is_denied_env_name(n))
