"""The console's pure parts: CSRF and origin checks, safe Markdown, the request form."""

from __future__ import annotations

import pytest

from fleetgate.controlplane.console.cookies import (
    csrf_ok,
    new_csrf_token,
    same_origin,
    websocket_authorization,
)
from fleetgate.controlplane.console.forms import FormError, RequestForm, parse_request_form
from fleetgate.controlplane.console.markdown import plain_text, render_markdown
from fleetgate.controlplane.console.web import templates


MAX = 4 * 3600


def test_csrf_token_must_match_the_cookie() -> None:
    token = new_csrf_token()
    assert csrf_ok(token, token)
    assert not csrf_ok(token, new_csrf_token())
    assert not csrf_ok(token, None)
    assert not csrf_ok(None, token)
    assert not csrf_ok("", "")
    assert not csrf_ok("x" * 300, "x" * 300)


def test_same_origin_compares_host_and_port() -> None:
    assert same_origin("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert same_origin("https://Fleet.example", "fleet.example")
    assert not same_origin("http://127.0.0.1:8001", "127.0.0.1:8000")
    assert not same_origin("http://evil.example", "fleet.example")
    assert not same_origin("null", "fleet.example")
    assert not same_origin(None, "fleet.example")
    assert not same_origin("file://fleet.example", "fleet.example")


def test_websocket_cookie_only_from_the_same_origin() -> None:
    cookies = {"fleetgate_login": "flt_abc"}
    same = {"origin": "http://h:1", "host": "h:1"}
    assert websocket_authorization(same, cookies) == "Bearer flt_abc"
    assert websocket_authorization({"origin": "http://evil", "host": "h:1"}, cookies) is None
    assert websocket_authorization({"host": "h:1"}, cookies) is None
    assert websocket_authorization(same, {}) is None


@pytest.mark.parametrize(
    "text",
    [
        "<script>alert(1)</script>",
        "[x](javascript:alert(1))",
        "[x](JaVaScRiPt:alert(1))",
        "[x](  javascript:alert(1))",
        "[x](vbscript:msgbox)",
        "[x](data:text/html;base64,PHNjcmlwdD4=)",
        "[x](//evil.example/)",
        "<img src=x onerror=alert(1)>",
        "![i](https://tracker.example/p.png)",
        "<a href='javascript:alert(1)'>x</a>",
    ],
)
def test_markdown_renders_nothing_active(text: str) -> None:
    html = render_markdown(text)
    assert "<script" not in html
    assert "<img" not in html
    assert 'href="javascript' not in html.lower()
    assert 'href="data:' not in html
    assert 'href="//' not in html
    assert "<a href='" not in html


def test_markdown_keeps_formatting_and_safe_links() -> None:
    html = render_markdown("Fix **nginx**: [runbook](https://wiki.example/nginx) `reload`")
    assert "<strong>nginx</strong>" in html
    assert '<a href="https://wiki.example/nginx" rel="noopener noreferrer nofollow">' in html
    assert "<code>reload</code>" in html


def test_plain_text_for_lists_keeps_words_not_markup() -> None:
    assert plain_text("Fix **nginx**\nin `prod` [runbook](https://x.example)") == (
        "Fix nginx in prod runbook"
    )
    assert plain_text("<b>x</b>") == "<b>x</b>"  # still text: the template escapes it


def form(**values: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    lists = {"servers": ["s1"], "scopes": ["websh", "command"]}
    for key in ("servers", "scopes"):
        if key in values:
            lists[key] = [v for v in values.pop(key).split(",") if v]
    return {"purpose": "fix it", **values}, lists


def test_defaults_are_the_guides() -> None:
    defaults = RequestForm()
    assert defaults.scopes == ["websh", "webftp", "command", "sudo"]
    assert (defaults.mode, defaults.preset) == ("preset", "1h")


def test_preset_request() -> None:
    _, body = parse_request_form(*form(preset="2h"), max_seconds=MAX)
    assert body == {
        "description": "fix it",
        "servers": ["s1"],
        "scopes": ["websh", "command"],
        "duration": "2h",
    }


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"servers": ""}, "servers"),
        ({"purpose": "   "}, "purpose"),
        ({"purpose": "a" * 2049}, "purpose"),
        ({"scopes": ""}, "scopes"),
        ({"preset": "3h"}, "preset"),
        ({"mode": "custom", "hours": "5"}, "hours"),
        ({"mode": "custom", "hours": "4", "minutes": "1"}, "hours"),
        ({"mode": "custom", "hours": "0", "minutes": "0"}, "hours"),
        ({"mode": "custom", "hours": "x"}, "hours"),
        ({"mode": "custom", "hours": "1", "minutes": "60"}, "minutes"),
        ({"mode": "custom", "hours": "1", "start": "scheduled", "starts_at": "soon"}, "starts_at"),
    ],
)
def test_rules_of_the_guide_are_refused(values: dict[str, str], field: str) -> None:
    with pytest.raises(FormError) as refused:
        parse_request_form(*form(**values), max_seconds=MAX)
    assert refused.value.field == field


def test_2048_characters_and_4_hours_are_allowed() -> None:
    values = {"purpose": "a" * 2048, "mode": "custom", "hours": "4", "minutes": "0"}
    _, body = parse_request_form(*form(**values), max_seconds=MAX)
    assert body["duration"] == "4h0m"
    assert len(body["description"]) == 2048


def test_scheduled_custom_request_with_sudo_patterns() -> None:
    values = {
        "mode": "custom",
        "start": "scheduled",
        "starts_at": "2030-01-02T03:04:00.000Z",
        "hours": "1",
        "minutes": "30",
        "sudo": "/usr/bin/systemctl restart nginx\r\n\r\n  /usr/bin/id  \n",
        "assignee": "bob",
    }
    _, body = parse_request_form(*form(**values), max_seconds=MAX)
    assert body["starts_at"] == "2030-01-02T03:04:00+00:00"
    assert body["duration"] == "1h30m"
    assert body["assigned_user"] == "bob"
    assert body["sudo_policies"] == [
        {"commands": ["/usr/bin/systemctl restart nginx", "/usr/bin/id"]}
    ]


def test_timeline_renders_every_kind_escaped() -> None:
    when = "2026-01-02T03:04:05.000000Z"
    base = {"timestamp": when, "server_id": "s1", "actor": "alice"}
    items = [
        {**base, "type": "created", "server_id": None},
        {**base, "type": "status_change", "action": "approve", "from": "pending", "to": "approved"},
        {**base, "type": "command", "line": "echo <b>x</b>", "denied": False, "exit_code": 0},
        {**base, "type": "command", "line": "id", "denied": True, "code": "work_session_expired"},
        {
            **base,
            "type": "sudo",
            "command": "/usr/bin/id",
            "allowed": False,
            "code": "no_pattern",
            "user": "alice",
        },
        {**base, "type": "websh", "description": "websh alice@web-01"},
        {**base, "type": "webftp", "description": "upload /tmp/<i>a</i> as alice"},
        {**base, "type": "tunnel", "description": "tunnel 127.0.0.1:8080"},
        {**base, "type": "extend", "from": when, "to": when},
        {**base, "type": "update", "sudo_policies": [{"commands": ["/usr/bin/id"]}]},
        {**base, "type": "adjust", "scopes": {"from": ["websh", "sudo"], "to": ["websh"]}},
        {
            **base,
            "type": "status_change",
            "action": "expire",
            "from": "active",
            "to": "expired",
            "actor": None,
        },
    ]
    html = templates.env.get_template("timeline.html").render(
        items=items, server_names={"s1": "web-01"}, s={}
    )
    assert html.count('<li class="event') == len(items)
    assert "<b>" not in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html
    assert "<i>" not in html
    for text in (
        "pending → approved",
        "denied work_session_expired",
        "refused (no_pattern)",
        "websh alice@web-01",
        "until 2026-01-02 03:04 UTC",
        "/usr/bin/id",
        "features websh",
        "clock",
        "web-01",
    ):
        assert text in html, text
