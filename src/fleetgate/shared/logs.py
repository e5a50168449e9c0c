"""Logging: the one place that configures structlog, for the agent and the control plane.

Every line goes to stderr, one event per line: JSON when stderr is not a terminal
(journald, files) and a readable console rendering on a terminal. Events are named
``area.event`` (``command.finished``, ``backhaul.connected``); context such as
``command_id`` is bound with ``structlog.contextvars`` so every line of a command carries
it. The standard library's loggers (uvicorn, websockets, asyncssh) are bridged: their
records go through the same processors and renderer, so journald gets one format.

Log events carry identifiers and reasons; never tokens, keys, passwords, environment
values or command output.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog


__all__ = ["Format", "Level", "configure"]

Level = Literal["debug", "info", "warning", "error"]
Format = Literal["auto", "json", "console"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure(level: Level = "info", fmt: Format = "auto") -> None:
    """Configure structlog and the standard library's root logger, once, at start."""
    numeric = _LEVELS[level]
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    tracebacks: list[structlog.typing.Processor] = (
        [structlog.processors.dict_tracebacks] if as_json else []
    )
    structlog.configure(
        processors=[*shared, *tracebacks, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries log through the standard library: render their records the same way. Their
    # chatter below WARNING is not an operator's business unless debugging.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tracebacks,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric if numeric == logging.DEBUG else max(numeric, logging.WARNING))
