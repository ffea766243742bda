"""The small error responses relay itself sends to HTTP visitors (edge and agent).

One function, :func:`render`, returns a complete HTTP/1.1 response as bytes. The body's
type follows the visitor's ``Accept`` header:

* ``application/json`` when the client prefers it (``Accept: application/json``, axios'
  ``application/json, text/plain, */*``);
* ``text/html`` when it prefers HTML (every browser);
* ``text/plain`` otherwise (curl's ``*/*``, no header at all, ties between wildcards).

Every response carries ``connection: close`` (the edge hangs up after an error),
``cache-control: no-store``, ``x-relay-error-code`` (the stable code users search for) and
``x-relay-request-id``. The HTML page is self-contained: a few lines of inline CSS, no
scripts, fonts or images, and a CSP that forbids loading anything.
"""

from __future__ import annotations

import html
import json
import re
from http import HTTPStatus

__all__ = ["KNOWN_STATUSES", "choose_media_type", "render"]

#: Statuses relay sends, with a title and a hint for the person reading the page.
KNOWN_STATUSES: dict[int, tuple[str, str]] = {
    400: ("Bad Request", "The request could not be understood."),
    404: ("Not Found", "No tunnel is serving this address."),
    405: ("Method Not Allowed", "This method cannot be used through the tunnel."),
    408: ("Request Timeout", "The request took too long to arrive."),
    413: ("Content Too Large", "The request is larger than this tunnel accepts."),
    421: ("Misdirected Request", "This connection cannot serve the requested host name."),
    431: ("Request Header Fields Too Large", "The request headers are too large."),
    502: ("Bad Gateway", "The tunnel is up, but the service behind it did not answer."),
    503: ("Service Unavailable", "The tunnel cannot serve this right now. Try again in a moment."),
    504: ("Gateway Timeout", "The service behind the tunnel took too long to answer."),
}

_JSON = "application/json"
_HTML = "text/html"
_PLAIN = "text/plain"
_OFFERED = (_PLAIN, _JSON, _HTML)  # order = preference on a perfect tie

_TOKEN = re.compile(r"[A-Za-z0-9._~-]{1,128}")

_CSS = (
    "body{margin:0;font:16px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif;"
    "color:#1f2328;background:#f6f8fa}"
    "main{max-width:36rem;margin:12vh auto;padding:2rem;background:#fff;"
    "border:1px solid #d0d7de;border-radius:8px}"
    "h1{margin:0 0 .5rem;font-size:1.5rem}"
    "p{margin:.5rem 0;overflow-wrap:anywhere}"
    ".meta{color:#656d76;font-size:.85rem}"
    "code{font-family:ui-monospace,monospace}"
    "@media (prefers-color-scheme:dark){body{color:#e6edf3;background:#0d1117}"
    "main{background:#161b22;border-color:#30363d}.meta{color:#8d96a0}}"
)


def _title(status: int) -> tuple[str, str]:
    known = KNOWN_STATUSES.get(status)
    if known is not None:
        return known
    try:
        return HTTPStatus(status).phrase, ""
    except ValueError:
        return ("Client Error" if status < 500 else "Server Error"), ""


# --------------------------------------------------------------------------------------
# Accept


def _parse_accept(accept: str) -> list[tuple[str, str, float, int]]:
    """(type, subtype, q, position) for each media range; malformed ranges are skipped."""
    out: list[tuple[str, str, float, int]] = []
    for position, item in enumerate(accept.split(",")):
        media, *params = (part.strip() for part in item.split(";"))
        kind, slash, sub = media.lower().partition("/")
        if not slash or not kind or not sub or (kind == "*" and sub != "*"):
            continue
        q = 1.0
        for param in params:
            name, eq, value = param.partition("=")
            if eq and name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:  # also catches nan
                    q = 0.0
        out.append((kind, sub, q, position))
    return out


def choose_media_type(accept: str | None) -> str:
    """``application/json``, ``text/html`` or ``text/plain`` for an ``Accept`` value.

    Each offered type takes the q of its most specific matching range (exact beats
    ``type/*`` beats ``*/*``). The highest q wins; on equal q, a type named exactly beats one
    matched by a wildcard, then the range listed first wins, then plain text.
    """
    if not accept:
        return _PLAIN
    ranges = _parse_accept(accept)
    best: tuple[float, int, int, int] | None = None
    chosen = _PLAIN
    for preference, offered in enumerate(_OFFERED):
        kind, sub = offered.split("/")
        match: tuple[int, float, int] | None = None  # (specificity, q, position)
        for r_kind, r_sub, q, position in ranges:
            if (r_kind, r_sub) == (kind, sub):
                specificity = 2
            elif r_kind == kind and r_sub == "*":
                specificity = 1
            elif (r_kind, r_sub) == ("*", "*"):
                specificity = 0
            else:
                continue
            if match is None or specificity > match[0]:
                match = (specificity, q, position)
        if match is None or match[1] <= 0.0:
            continue
        specificity, q, position = match
        # Larger is better in every slot.
        score = (q, specificity, -position, -preference)
        if best is None or score > best:
            best, chosen = score, offered
    return chosen


# --------------------------------------------------------------------------------------
# bodies


def _html_body(status: int, title: str, hint: str, code: str, message: str, rid: str) -> str:
    e = html.escape
    hint_html = f"<p>{e(hint)}</p>" if hint and hint != message else ""
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta name="robots" content="noindex"><title>{status} {e(title)}</title>'
        f"<style>{_CSS}</style></head>\n"
        f"<body><main><h1>{status} {e(title)}</h1>"
        f"<p>{e(message)}</p>{hint_html}"
        f'<p class="meta">Error <code>{e(code)}</code> · request <code>{e(rid)}</code>'
        " · served by relay</p></main></body></html>\n"
    )


def _plain_body(status: int, title: str, code: str, message: str, rid: str) -> str:
    return f"{status} {title}\n{message}\n\nerror {code} · request {rid}\n"


def _json_body(status: int, title: str, code: str, message: str, rid: str) -> str:
    doc = {"status": status, "error": title, "code": code, "message": message, "request_id": rid}
    return json.dumps(doc, ensure_ascii=True) + "\n"


def render(
    status: int,
    code: str,
    message: str,
    *,
    accept: str | None,
    request_id: str,
    head: bool = False,
) -> bytes:
    """A complete ``HTTP/1.1`` error response.

    ``code`` (e.g. ``RLY_502``) and ``request_id`` go into headers, so they must be plain
    tokens (letters, digits, ``._~-``); anything else is a :class:`ValueError`, as is a
    status outside 400..599. ``message`` is free text, escaped for the chosen type. With
    ``head`` the body is left out but ``content-length`` still gives its size (RFC 9110
    §9.3.2).
    """
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
        raise ValueError(f"error status {status!r} is not in 400..599")
    if not _TOKEN.fullmatch(code):
        raise ValueError(f"error code {code!r} is not a plain token")
    if not _TOKEN.fullmatch(request_id):
        raise ValueError(f"request id {request_id!r} is not a plain token")
    title, hint = _title(status)
    media = choose_media_type(accept)
    if media == _JSON:
        text = _json_body(status, title, code, message, request_id)
    elif media == _HTML:
        text = _html_body(status, title, hint, code, message, request_id)
    else:
        text = _plain_body(status, title, code, message, request_id)
    body = text.encode("utf-8", errors="replace")
    headers = [
        f"HTTP/1.1 {status} {title}",
        f"content-type: {media}; charset=utf-8",
        f"content-length: {len(body)}",
        "connection: close",
        "cache-control: no-store",
        "x-content-type-options: nosniff",
        f"x-relay-error-code: {code}",
        f"x-relay-request-id: {request_id}",
    ]
    if media == _HTML:
        headers.append("content-security-policy: default-src 'none'; style-src 'unsafe-inline'")
    head_bytes = ("\r\n".join(headers) + "\r\n\r\n").encode("ascii")
    return head_bytes if head else head_bytes + body
