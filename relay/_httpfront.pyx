# cython: language_level=3
"""The HTTP front of the edge: one visitor connection, parsed by httptools, carried on
one stream to the agent.

Every request head is parsed (httptools, callbacks into this compiled class — no
interpreted code per request once the connection is routed), checked against the limits,
rewritten (X-Forwarded-*, Forwarded, hop-by-hop headers removed as RFC 9110 §7.6.1 says)
and sent on the connection's stream; bodies are streamed as they arrive (chunked bodies
are re-chunked: httptools hands us decoded data). Responses are not parsed: the stream
is one upstream connection, so its bytes go back to the visitor as they are, in order —
which also answers pipelined requests in order. ``Upgrade`` (WebSocket) switches the
connection to a raw pump.

Python decides once per connection (the router: Host → endpoint) and writes the error
pages (404, 502, 503, 400, 408, 413, 431) that are sent before a stream exists.
"""

import httptools
import relay_native

from libc.stdint cimport uint32_t

from relay._fastpath cimport Link, Pump

cdef object YamuxError = relay_native.YamuxError

# Headers a proxy must not forward (RFC 9110 §7.6.1), besides those named by Connection.
# Transfer-Encoding stays: the body is forwarded with the same framing.
cdef frozenset HOP_BY_HOP = frozenset((
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade",
))
cdef frozenset REPLACED = frozenset((b"x-forwarded-proto", b"x-forwarded-host"))

cdef bytearray _READ_BUFFER = bytearray(256 * 1024)
cdef object _READ_VIEW = memoryview(_READ_BUFFER)


class _LimitExceeded(Exception):
    """Raised inside a parser callback; carries the error page to send."""

    def __init__(self, int status, str code, str message):
        self.status = status
        self.code = code
        self.message = message


cdef class HttpVisitor(Pump):
    cdef object parser
    cdef object front
    cdef readonly str scheme
    cdef str peer_ip
    cdef bytes forwarded_for
    cdef list headers
    cdef bytearray url
    cdef Py_ssize_t head_size
    cdef readonly bint upgraded
    cdef bint chunked
    cdef bint client_close
    cdef bint wants_upgrade
    cdef readonly str host
    cdef bytes host_rewrite
    cdef object watchdog
    cdef double head_started
    cdef double idle_since
    cdef bint routed
    cdef bint refusing
    cdef readonly bint response_started
    cdef Py_ssize_t body_size
    cdef Py_ssize_t activity
    cdef Py_ssize_t last_activity
    cdef readonly int requests
    cdef Py_ssize_t max_head
    cdef int max_headers
    cdef Py_ssize_t max_body
    cdef double header_timeout
    cdef double idle_timeout

    def __init__(self, front, str scheme):
        # The stream does not exist yet: it is opened once the first head is routed.
        self.front = front
        self.scheme = scheme
        self.stream_id = -1
        self._preamble = b""
        self.finished = False
        self.parser = httptools.HttpRequestParser(self)
        self.url = bytearray()
        self.headers = []
        self.host = ""
        self.max_head = front.max_head
        self.max_headers = front.max_headers
        self.max_body = front.max_body
        self.header_timeout = front.header_timeout
        self.idle_timeout = front.idle_timeout

    # --- asyncio protocol -----------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if isinstance(peer, tuple) else "unknown"
        self.forwarded_for = self.peer_ip.encode()
        loop = self.front.loop
        self.head_started = loop.time()
        self.idle_since = self.head_started
        self.watchdog = loop.call_later(self._watch_period(), self._watch)

    def get_buffer(self, Py_ssize_t sizehint):
        return _READ_VIEW

    def buffer_updated(self, Py_ssize_t nbytes):
        if self.finished or self.refusing:
            return
        self.activity += 1
        data = _READ_VIEW[:nbytes]
        if self.upgraded:
            self._send(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0]
            self.upgraded = True
            if self.routed and offset < nbytes:
                self._send(bytes(data[offset:]))
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _LimitExceeded):
                self._refuse(cause.status, cause.code, cause.message)
            else:
                self._refuse(502, "RLY_621", "the edge could not forward the request")
        except httptools.HttpParserError:
            self._refuse(400, "RLY_620", "malformed HTTP request")

    def pause_writing(self):
        if self.routed:
            Pump.pause_writing(self)

    def resume_writing(self):
        if self.routed:
            Pump.resume_writing(self)

    def eof_received(self):
        if not self.routed:
            return False
        keep_open = Pump.eof_received(self)
        # TLS has no half-close: asyncio closes the transport after a close_notify anyway.
        return keep_open if self.scheme == "http" else False

    def connection_lost(self, exc):
        self._cancel_timers()
        if self.routed:
            Pump.connection_lost(self, exc)
        self.finished = True

    # --- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self):
        self.headers = []
        self.url = bytearray()
        self.head_size = 0
        self.chunked = False
        self.client_close = False
        self.wants_upgrade = False
        self.body_size = 0
        if self.head_started == 0.0:
            self.head_started = self.front.loop.time()

    def on_url(self, bytes url):
        self.url += url
        self.head_size += len(url)
        if self.head_size > self.max_head:
            raise _LimitExceeded(431, "RLY_622", "request head too large")

    def on_header(self, bytes name, bytes value):
        self.head_size += len(name) + len(value) + 4
        if self.head_size > self.max_head:
            raise _LimitExceeded(431, "RLY_622", "request head too large")
        if len(self.headers) >= self.max_headers:
            raise _LimitExceeded(431, "RLY_623", "too many request headers")
        self.headers.append((name.lower(), value))

    def on_headers_complete(self):
        cdef bytes name, value
        self.head_started = 0.0
        host = b""
        connection_tokens = set()
        content_length = -1
        for name, value in self.headers:
            if name == b"host":
                host = value
            elif name == b"connection":
                for token in value.lower().split(b","):
                    connection_tokens.add(token.strip())
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                self.chunked = True
            elif name == b"content-length":
                try:
                    content_length = int(value)
                except ValueError:
                    raise _LimitExceeded(400, "RLY_620", "bad content-length")
        self.client_close = b"close" in connection_tokens
        # Decided from the headers: llhttp sets its own upgrade flag only after this call.
        self.wants_upgrade = b"upgrade" in connection_tokens and self._header(b"upgrade") is not None
        if self.max_body and content_length > self.max_body:
            raise _LimitExceeded(413, "RLY_624", "request body too large")
        host_text = host.decode("latin-1").strip().lower()
        hostname = host_text.rsplit(":", 1)[0] if not host_text.endswith("]") else host_text
        if not self.routed:
            self._route(hostname, bytes(self.url))
            if self.refusing:
                return
        elif hostname != self.host:
            # A different site on the same connection: never send it to this agent.
            raise _LimitExceeded(421, "RLY_625", "this connection serves another host")
        self._send(self._rewrite_head(host, connection_tokens))
        self.requests += 1

    def on_body(self, bytes body):
        if self.refusing:
            return
        self.body_size += len(body)
        if self.max_body and self.body_size > self.max_body:
            raise _LimitExceeded(413, "RLY_624", "request body too large")
        if self.chunked:
            self._send(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            self._send(body)

    def on_message_complete(self):
        if self.chunked and not self.refusing:
            self._send(b"0\r\n\r\n")  # trailers are not forwarded

    # --- routing and rewriting ----------------------------------------------------------

    cdef void _route(self, str hostname, bytes url):
        accept = self._header(b"accept")
        challenge = self.front.acme_http01(url)
        if challenge is not None:
            self._respond_local(challenge)
            return
        result = self.front.route(hostname, url, self.scheme, self.transport, accept)
        if result[0] == -1:
            self._respond_local(result[1])
            return
        if result[0] != 0:
            self._refuse(result[0], result[1], result[2])
            return
        link, header, rewrite = result[1], result[2], result[3]
        try:
            self.stream_id = (<Link>link).session.open_stream()
        except YamuxError:
            self._refuse(503, "RLY_612", "the agent cannot take more connections")
            return
        self.link = link
        self.host = hostname
        self.host_rewrite = rewrite
        self.routed = True
        (<Link>link).channels[self.stream_id] = self
        self._send(header)

    cdef bytes _rewrite_head(self, bytes host, set connection_tokens):
        cdef bytes name, value
        cdef list out = []
        method = self.parser.get_method()
        version = self.parser.get_http_version()
        out.append(b"%b %b HTTP/%b\r\n" % (method, bytes(self.url), version.encode()))
        forwarded_for = None
        for name, value in self.headers:
            if name in HOP_BY_HOP or name in connection_tokens or name in REPLACED:
                if not (self.wants_upgrade and name == b"upgrade"):
                    continue
            if name == b"host" and self.host_rewrite is not None:
                value = self.host_rewrite
            elif name == b"x-forwarded-for":
                forwarded_for = value
                continue
            out.append(b"%b: %b\r\n" % (name, value))
        if forwarded_for is None:
            out.append(b"x-forwarded-for: %b\r\n" % self.forwarded_for)
        else:
            out.append(b"x-forwarded-for: %b, %b\r\n" % (forwarded_for, self.forwarded_for))
        out.append(b"x-forwarded-proto: %b\r\n" % self.scheme.encode())
        out.append(b"x-forwarded-host: %b\r\n" % host)
        node = self.forwarded_for if b":" not in self.forwarded_for else b'"[%b]"' % self.forwarded_for
        out.append(b"forwarded: for=%b;proto=%b;host=\"%b\"\r\n" % (node, self.scheme.encode(), host))
        if self.wants_upgrade:
            out.append(b"connection: upgrade\r\n")
        elif self.client_close:
            out.append(b"connection: close\r\n")
        out.append(b"\r\n")
        return b"".join(out)

    cdef object _header(self, bytes wanted):
        for name, value in self.headers:
            if name == wanted:
                return value.decode("latin-1")
        return None

    # --- local answers ------------------------------------------------------------------

    cdef void _refuse(self, int status, str code, str message):
        """Answer with an error page and close — or, if a stream already carries earlier
        requests of this connection, half-close it and let their responses finish."""
        self.refusing = True
        if self.transport is None or self.finished:
            return
        self.transport.pause_reading()
        if self.routed:
            # Earlier requests' responses may still be on their way: a page written now
            # could land before or inside them. End the request stream instead; the
            # connection closes once those responses are through.
            try:
                self.link.session.close_stream(self.stream_id)
                self.link.schedule_flush()
            except YamuxError:
                self._abort()
            return
        self._write_page(status, code, message)
        self.finished = True
        self.transport.close()

    cdef void _write_page(self, int status, str code, str message):
        accept = self._header(b"accept")
        method = b""
        try:
            method = self.parser.get_method()
        except Exception:
            pass
        self.response_started = True
        self.transport.write(self.front.error_page(status, code, message, accept, method == b"HEAD"))

    cdef void _respond_local(self, bytes response):
        self.refusing = True
        self.finished = True
        self.transport.write(response)
        self.transport.close()

    # --- stream events ------------------------------------------------------------------

    cdef void deliver(self, const char* data, Py_ssize_t length):
        self.response_started = True
        self.activity += 1
        Pump.deliver(self, data, length)

    cdef void deliver_bytes(self, bytes data):
        self.response_started = True
        self.activity += 1
        Pump.deliver_bytes(self, data)

    cdef void deliver_run(self, const char* base, const uint32_t* ev, Py_ssize_t first,
                          Py_ssize_t n):
        self.response_started = True
        self.activity += 1
        Pump.deliver_run(self, base, ev, first, n)

    cdef void remote_reset(self):
        if not self.response_started and self.transport is not None and not self.finished:
            self._write_page(502, "RLY_613", "the agent could not reach the upstream")
            self.finished = True
            self.transport.close()
            return
        Pump.remote_reset(self)

    # --- timers -------------------------------------------------------------------------

    # One watchdog timer per connection, not a timer per request: arming and cancelling
    # a libuv timer for every request head costs more than parsing it.

    cdef double _watch_period(self):
        return max(0.05, min(self.header_timeout, self.idle_timeout) / 4)

    def _watch(self):
        self.watchdog = None
        if self.finished or self.transport is None:
            return
        now = self.front.loop.time()
        if self.head_started != 0.0 and now - self.head_started > self.header_timeout:
            # A request head is trickling in (slowloris) or never completed.
            if not self.routed:
                self._write_page(408, "RLY_626", "request head not received in time")
                self.finished = True
                self.transport.close()
            else:
                self._abort()
            return
        if self.activity != self.last_activity:
            self.last_activity = self.activity
            self.idle_since = now
        elif now - self.idle_since > self.idle_timeout:
            self._abort()
            return
        self.watchdog = self.front.loop.call_later(self._watch_period(), self._watch)

    cdef void _cancel_timers(self):
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
