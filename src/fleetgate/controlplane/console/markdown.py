"""The purpose of a session as safe HTML: Markdown without raw HTML or unsafe links. Pure.

markdown-it-py with ``html`` off escapes every tag in the text; its link validator refuses
``javascript:``, ``vbscript:``, ``file:`` and ``data:`` (except images) targets, which then
stay plain text. We narrow links further to http, https and mailto, and make each one open
without a referrer.
"""

from __future__ import annotations

from functools import lru_cache

from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict


__all__ = ["plain_text", "render_markdown"]

_SAFE_SCHEMES = ("http://", "https://", "mailto:")


def _validate_link(url: str) -> bool:
    lowered = url.strip().lower()
    if lowered.startswith(("/", "#")) and not lowered.startswith("//"):
        return True
    return lowered.startswith(_SAFE_SCHEMES)


def _link_open(
    self: RendererHTML, tokens: list[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    tokens[idx].attrSet("rel", "noopener noreferrer nofollow")
    return self.renderToken(tokens, idx, options, env)


def _build() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable("table").enable("strikethrough")
    md.disable("image")  # no remote fetches from a page an approver opens
    md.validateLink = _validate_link  # type: ignore[method-assign]  # the documented hook
    md.add_render_rule("link_open", _link_open)
    return md


_MD = _build()

CACHED = 512
"""Texts whose rendering is kept: a page of sessions shows the same purposes on every
load, and parsing each is most of the page's time (bounded: descriptions are capped)."""


@lru_cache(maxsize=CACHED)
def render_markdown(text: str) -> str:
    """``text`` (Markdown) as HTML that is safe to insert in a page."""
    return str(_MD.render(text))


@lru_cache(maxsize=CACHED)
def plain_text(text: str) -> str:
    """``text`` (Markdown) as one line of plain text, for lists (escape it on output)."""
    tokens = _MD.parseInline(text.replace("\n", " "))
    words: list[str] = []
    for token in tokens:
        for child in token.children or []:
            if child.type in ("text", "code_inline"):
                words.append(child.content)
            elif child.type in ("softbreak", "hardbreak"):
                words.append(" ")
    return "".join(words).strip()
