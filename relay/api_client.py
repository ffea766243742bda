"""A small client of the control plane's REST API (relay/control/api), on the standard
library only: the CLI's resource commands (relay/cli_control.py) are its one user.

Every failure leaves as a :class:`~relay.errors.RelayError`: an error body
``{code, message, request_id}`` as the class its RLY code names (so ``err.code`` is the
server's), an unreachable server as :class:`~relay.errors.ConnectError`, anything that is
not the API answering as a plain RelayError that says so.

The API key is a bearer secret, so this module is careful where it can go: only over TLS,
or over plain HTTP to this machine (the edge's admin listener is loopback by default);
never along a redirect (urllib would resend the ``Authorization`` header to wherever it
points); never through an environment proxy in clear; never into a message or a log.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import re
import ssl
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from email.message import Message
from typing import Any

from relay import __version__
from relay.errors import (
    ConfigError,
    ConnectError,
    RateLimited,
    RelayError,
    TlsError,
    error_from_code,
)

__all__ = ["API_PREFIX", "MAX_PAGES", "ApiClient", "check_base_url"]

log = logging.getLogger("relay.api_client")

#: Where the API's routes live under the server's root.
API_PREFIX = "/api/v1"
#: The most pages one listing follows: a server that keeps answering ``next_cursor``
#: (a bug, or a hostile one) must not keep the CLI busy forever.
MAX_PAGES = 10_000
#: The largest answer read (a page holds at most 500 items, far below this).
MAX_ANSWER = 16 * 1024 * 1024
#: How much of a message from the server reaches the terminal.
_MAX_SHOWN = 500
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_KEY_RE = re.compile(r"[\x21-\x7e]{1,200}")  # printable ASCII, no spaces: a header value


def check_base_url(url: str) -> str:
    """The server's root URL, normalized (no trailing ``/``, no ``/api/v1``), or
    :class:`ConfigError` when an API key must not be sent there: plain ``http://`` to a
    host that is not this machine would carry the key across the network in clear."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigError(f"--api {url!r} is not a URL like http://127.0.0.1:9190") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(
            f"--api {url!r} is not an http:// or https:// URL like http://127.0.0.1:9190"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigError("--api must not carry a user name or password: the API key is the login")
    if parts.query or parts.fragment:
        raise ConfigError(f"--api {url!r} must not have a query or fragment")
    if parts.scheme == "http" and not _is_loopback(host):
        raise ConfigError(
            f"--api {url!r} is plain HTTP to another machine: the API key would cross the "
            "network in clear; use https://, or http:// to 127.0.0.1, ::1 or localhost"
        )
    path = parts.path.rstrip("/")
    if path.endswith(API_PREFIX):
        path = path[: -len(API_PREFIX)]
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: where it resolves is not ours to promise


class ApiClient:
    """Calls to ``{base_url}/api/v1{path}`` with ``Authorization: Bearer {api_key}``.

    ``base_url`` is the server's root, e.g. the edge's admin listener
    ``http://127.0.0.1:9190`` (a URL ending in ``/api/v1`` is taken as well); ``path`` is
    a route of the API, e.g. ``/accounts``.
    """

    def __init__(
        self, base_url: str, api_key: str, timeout: float = 10, *, ca_file: str | None = None
    ) -> None:
        self.base_url = check_base_url(base_url)
        if _KEY_RE.fullmatch(api_key) is None:
            # Checked here, not left to http.client: its error would quote the value.
            raise ConfigError("the API key has characters no API key has (spaces, newlines?)")
        self._api_key = api_key
        self.timeout = timeout
        handlers: list[urllib.request.BaseHandler] = [_RefuseRedirects()]
        if self.base_url.startswith("http:"):
            # An HTTP proxy from the environment would see the key in clear (and a
            # loopback address through a proxy is the proxy's loopback anyway).
            handlers.append(urllib.request.ProxyHandler({}))
        else:
            # ``ca_file``: a private CA's certificate (an edge trusting its own `relay
            # control`); otherwise the system's trust store.
            context = ssl.create_default_context(cafile=ca_file)
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self) -> str:
        return f"ApiClient({self.base_url!r})"  # never the key

    # -- calls ---------------------------------------------------------------------------

    def get(self, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None) -> Any:
        return self.request("GET", path, params=params, json=json)

    def post(self, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None) -> Any:
        return self.request("POST", path, params=params, json=json)

    def delete(
        self, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None
    ) -> Any:
        return self.request("DELETE", path, params=params, json=json)

    def pages(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        max_pages: int = MAX_PAGES,
    ) -> Iterator[dict[str, Any]]:
        """Each page of a list (``{items, next_cursor}``), asking again with
        ``cursor=next_cursor`` until it is null. A listing longer than ``max_pages`` pages,
        or a cursor the server repeats, ends in a RelayError: the items already yielded
        are then not the whole list, and a silent cut would pass for one."""
        query = dict(params or {})
        seen: set[str] = set()
        for _ in range(max_pages):
            page = self.get(path, params=query)
            if not isinstance(page, dict) or not isinstance(page.get("items"), list):
                raise RelayError(f"{self._where(path)} answered something that is not a page")
            yield page
            cursor = page.get("next_cursor")
            if cursor is None:
                return
            if not isinstance(cursor, str) or cursor in seen:
                raise RelayError(f"{self._where(path)} repeated a page cursor; listing stopped")
            seen.add(cursor)
            query["cursor"] = cursor
        raise RelayError(f"{self._where(path)} has more than {max_pages} pages; listing stopped")

    def items(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        max_pages: int = MAX_PAGES,
    ) -> Iterator[dict[str, Any]]:
        """Every item of a list, page after page (see :meth:`pages`)."""
        for page in self.pages(path, params, max_pages=max_pages):
            for item in page["items"]:
                if not isinstance(item, dict):
                    raise RelayError(f"{self._where(path)} answered a page of non-objects")
                yield item

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
    ) -> Any:
        """One call; the decoded JSON answer (None for an empty one)."""
        url = self._url(path, params)
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Accept": "application/json",
            "User-Agent": f"relay/{__version__}",
        }
        data = None
        if json is not None:
            data = _json_dumps(json)
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        log.debug("API %s %s", method, url)  # the URL holds no secret; the headers do
        try:
            with self._opener.open(request, timeout=self.timeout) as answer:
                raw = _read(answer)
                content_type = answer.headers.get("content-type", "")
        except urllib.error.HTTPError as exc:
            try:
                raw = _read(exc)
            except OSError:
                raw = b""
            finally:
                exc.close()
            raise self._error(path, exc.code, exc.headers, raw) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                raise self._timed_out() from None
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise TlsError(
                    f"the control plane at {self.base_url} has a certificate this machine "
                    f"does not trust: {self._clean(str(reason.verify_message or reason))}"
                ) from None
            raise self._unreachable(reason) from None
        except TimeoutError:
            raise self._timed_out() from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        if not raw.strip():
            return None
        try:
            return _json_loads(raw)
        except ValueError:
            shown = self._clean(content_type) or "none"
            raise RelayError(
                f"{self._where(path)} answered something that is not JSON (content-type "
                f"{shown}): is --api the edge's admin listener?"
            ) from None

    # -- helpers -------------------------------------------------------------------------

    def _url(self, path: str, params: Mapping[str, Any] | None) -> str:
        if not path.startswith("/"):
            path = "/" + path
        url = f"{self.base_url}{API_PREFIX}{path}"
        query = {k: v for k, v in (params or {}).items() if v is not None}
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True)
        return url

    def _where(self, path: str) -> str:
        return f"the control plane at {self.base_url} ({API_PREFIX}{path.split('?')[0]})"

    def _timed_out(self) -> ConnectError:
        return ConnectError(
            f"cannot reach the control plane at {self.base_url}: no answer within "
            f"{self.timeout:g} s"
        )

    def _unreachable(self, reason: object) -> ConnectError:
        why = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
        return ConnectError(
            f"cannot reach the control plane at {self.base_url}: {self._clean(str(why))}"
        )

    def _error(self, path: str, status: int, headers: Message, raw: bytes) -> RelayError:
        """The RelayError an error answer stands for."""
        if 300 <= status < 400:
            # Not followed: the key would go along to wherever it points.
            target = self._clean(headers.get("location", "") or "nowhere")
            return ConfigError(
                f"the control plane at {self.base_url} redirects to {target}; relay does not "
                "follow redirects with an API key: pass the final URL as --api"
            )
        try:
            body = _json_loads(raw)
        except ValueError:
            body = None
        code = body.get("code") if isinstance(body, dict) else None
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(code, str) or not isinstance(message, str):
            hint = " (is --api the edge's admin listener?)" if status in (404, 405) else ""
            return RelayError(
                f"{self._where(path)} answered HTTP {status} without a relay error body{hint}"
            )
        text = self._clean(message) or f"HTTP {status}"
        request_id = body.get("request_id") if isinstance(body, dict) else None
        if not isinstance(request_id, str) or _REQUEST_ID_RE.fullmatch(request_id) is None:
            request_id = headers.get("x-request-id", "")
        if request_id and _REQUEST_ID_RE.fullmatch(request_id):
            text += f" (request {request_id})"
        err = error_from_code(code, text)
        if isinstance(err, RateLimited):
            err.retry_after = _seconds(headers.get("retry-after"))
        return err

    def _clean(self, text: str) -> str:
        """Text from the server, fit for a terminal: no control characters (escape
        sequences), bounded, and never the key (were a server to echo it)."""
        cleaned = "".join(
            " " if unicodedata.category(ch).startswith("C") else ch for ch in text
        ).strip()
        if len(cleaned) > _MAX_SHOWN:
            cleaned = cleaned[:_MAX_SHOWN] + "…"
        return cleaned.replace(self._api_key, "rlk_…")


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Leave every 3xx as an HTTPError (see ApiClient._error)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _read(answer: Any) -> bytes:
    raw: bytes = answer.read(MAX_ANSWER + 1)
    if len(raw) > MAX_ANSWER:
        raise RelayError(f"the control plane's answer is larger than {MAX_ANSWER} bytes")
    return raw


def _json_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _json_loads(raw: bytes) -> Any:
    return json.loads(raw)  # ValueError (JSONDecodeError, UnicodeDecodeError) when not JSON


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: rare, and only a hint
