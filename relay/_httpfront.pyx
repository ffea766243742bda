# cython: language_level=3
"""The HTTP front of the edge: one visitor connection, parsed by httptools, carried on
one stream to the agent.

Every request head is parsed (httptools, callbacks into this compiled class — no
interpreted code per request once the connection is routed), checked against the limits,
rewritten (X-Forwarded-*, Forwarded, hop-by-hop headers removed as RFC 9110 §7.6.1 says)
and sent on the connection's stream; bodies are streamed as they arrive (chunked bodies
are re-chunked: httptools hands us decoded data). Responses are not parsed: the stream
is one upstream connection, so its bytes go back to the visitor as they are, in order —
which also answers pipelined requests in order.

What the edge and the origin must read alike is checked before a head is forwarded, so
no request can carry another past the edge (request smuggling): one body framing only
(RFC 9112 §6.3; no Transfer-Encoding on HTTP/1.0), no framing, routing or forwarding
header nominated hop-by-hop by ``Connection``, exactly one Host (RFC 9112 §3.2), and an
absolute-form target's authority becomes the routed and forwarded Host (§3.2.2).

``Upgrade`` (WebSocket): the connection becomes a raw pump only once the origin answered
``101 Switching Protocols``. Until then the status line of that one response is looked
at (the only response bytes the edge reads) and the visitor's later bytes are held
(reading paused); any other status leaves the connection HTTP, parsed and rewritten. So
that the response to an Upgrade request starts at the first byte of a stream, an Upgrade
request after earlier requests goes on a fresh stream once the earlier responses are
through. CONNECT is refused.

Python decides once per connection (the router: Host → endpoint; on the TLS port, only
the endpoint the SNI chose) and writes the error pages (400, 404, 405, 408, 413, 421,
431, 502, 503) that are sent before a stream exists.
"""

import httptools
import relay_native

from libc.stdint cimport uint32_t

from relay._exchanges cimport Exchanges
from relay._fastpath cimport Link, Pump

cdef object YamuxError = relay_native.YamuxError

# Indexes into relay._fastpath.KINDS (the traffic counters).
cdef enum:
    KIND_HTTP = 1
    KIND_HTTPS = 2

# Headers a proxy must not forward (RFC 9110 §7.6.1), besides those named by Connection.
# Transfer-Encoding stays: the body is forwarded with the same framing.
cdef frozenset HOP_BY_HOP = frozenset((
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade",
))
cdef frozenset REPLACED = frozenset((b"x-forwarded-proto", b"x-forwarded-host"))
# Headers a client may not name in Connection: dropping them would change how the origin
# frames or routes the request (the body read as a request of its own), or they are the
# edge's own statements about the visitor.
cdef frozenset PROTECTED = frozenset((
    b"content-length", b"transfer-encoding", b"host",
    b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded",
))
# Characters of a host name or IP literal with an optional port: anything else in Host
# is refused rather than routed (it would be copied into Forwarded's quoted host=).
cdef bytes HOST_CHARS = (b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                         b"0123456789.-_:[]")

# The status line of a response to an Upgrade request (and any 1xx heads before it) is
# looked for in at most this many bytes; an origin that sends more is taken as declining.
cdef Py_ssize_t MAX_STATUS_SCAN = 16 * 1024

cdef enum:
    VERDICT_NONE = 0
    VERDICT_SWITCHED = 1
    VERDICT_DECLINED = 2

cdef bytearray _READ_BUFFER = bytearray(256 * 1024)
cdef object _READ_VIEW = memoryview(_READ_BUFFER)
# What a visitor that may still be handed to another worker reads at a time: what was
# read before routing travels with it (relay/cluster/handoff.py bounds it).
cdef Py_ssize_t UNROUTED_READ = 16 * 1024
cdef object _UNROUTED_VIEW = _READ_VIEW[:UNROUTED_READ]
# Answered by whichever worker reads it (HttpFront.acme_http01): never handed by name.
cdef bytes ACME_PATH = b"/.well-known/acme-challenge/"
# HttpFront.handed_by_name's answer: the head must be parsed before it is routed (where
# it goes is not decided by its name alone).
PARSE_FIRST = object()
cdef object _PARSE_FIRST = PARSE_FIRST


cdef bint _HOST_BYTE[256]
for _byte in range(256):
    _HOST_BYTE[_byte] = bytes([_byte]) in HOST_CHARS


cdef str _hostname_of(bytes host):
    """The name a Host value routes by (lower case, without its port); None when it has
    a character no host name or IP literal has. (A loop over the bytes: it runs for
    every request.)"""
    cdef const unsigned char* p = host
    cdef Py_ssize_t n = len(host), i, cut = n
    for i in range(n):
        if not _HOST_BYTE[p[i]]:
            return None
        if p[i] == c":":
            cut = i
    if n and p[n - 1] == c"]":
        cut = n  # an IP literal without a port: its colons are its own
    return host[:cut].decode("ascii").lower()


cdef tuple _plain_head(bytearray data):
    """(Host value, target) of the first request head in ``data`` when
    its bytes alone say which host it is for: complete, an origin-form target, exactly
    one Host line and no folded line. None otherwise (incomplete, or anything unusual):
    such a head is parsed in full before it is routed.

    Whenever httptools accepts a head this returns a value for, its parse finds the same
    Host: llhttp ends lines at CRLF only (a bare CR or LF is an error), as this scan does
    (tests/unit/test_a_plain_head_is_routed_as_its_parse_would.py)."""
    cdef Py_ssize_t end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    # One pass over the bytes with no object made per line: this runs for every visitor
    # of an edge with workers, local ones included.
    cdef const char* buf = data
    cdef Py_ssize_t first = _line_end(buf, 0)
    cdef Py_ssize_t i, space1 = -1, space2 = -1
    for i in range(first):
        if buf[i] == c" ":
            if space1 < 0:
                space1 = i
            elif space2 < 0:
                space2 = i
            else:
                return None  # split(b" ") would make more than three parts
    if space2 < 0 or space2 == space1 + 1 or buf[space1 + 1] != c"/":
        return None  # not three parts, or a target that is not origin-form
    cdef Py_ssize_t line = first + 2, line_end, host_at = -1, host_end = 0
    while line < end:
        line_end = _line_end(buf, line)  # the last line's is ``end``
        if buf[line] == c" " or buf[line] == c"\t":
            return None  # folded
        if line_end - line >= 5 and _host_colon(buf + line):
            if host_at >= 0:
                return None
            host_at = line + 5
            host_end = line_end
        line = line_end + 2
    if host_at < 0:
        return None
    return (bytes(data[host_at:host_end]).strip(), bytes(data[space1 + 1 : space2]))


cdef inline Py_ssize_t _line_end(const char* buf, Py_ssize_t i) noexcept:
    """Where the CRLF that ends the line at ``i`` starts (the caller knows one follows)."""
    while not (buf[i] == c"\r" and buf[i + 1] == c"\n"):
        i += 1
    return i


cdef inline bint _host_colon(const char* p) noexcept:
    """``p`` starts with ``host:`` in any case of ASCII letters (as ``bytes.lower``)."""
    return ((p[0] | 0x20) == c"h" and (p[1] | 0x20) == c"o" and (p[2] | 0x20) == c"s"
            and (p[3] | 0x20) == c"t" and p[4] == c":")


class _LimitExceeded(Exception):
    """Raised inside a parser callback; carries the error page to send."""

    def __init__(self, int status, str code, str message):
        self.status = status
        self.code = code
        self.message = message


def plain_host(data):
    """The name the first request head in ``data`` is routed by when its bytes alone say
    it (as a worker hands a visitor over by it, unparsed); None otherwise."""
    found = _plain_head(bytearray(data))
    return None if found is None else _hostname_of(found[0])


cdef class HttpVisitor(Pump):
    cdef object parser
    cdef object front
    cdef readonly str scheme
    cdef str tls_endpoint
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
    cdef bytes last_host
    cdef str last_hostname
    cdef bytes host_rewrite
    cdef bytes stream_header
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
    cdef int stream_requests
    cdef Py_ssize_t max_head
    cdef int max_headers
    cdef Py_ssize_t max_body
    cdef double header_timeout
    cdef double idle_timeout
    # Upgrade: see the module docstring. ``await_status``: response bytes are scanned for
    # the Upgrade response's status; ``upgrade_parsed``: the Upgrade request is complete,
    # ``upgrade_tail`` holds what the visitor sent after it; ``reads_held`` keeps the
    # visitor's socket paused meanwhile; ``restreaming``: the previous stream is being
    # finished, ``held`` collects what goes on the next one.
    cdef bint await_status
    cdef bytearray status_buf
    cdef int upgrade_verdict
    cdef bint upgrade_parsed
    cdef bytes upgrade_tail
    cdef bint reads_held
    cdef bint restreaming
    cdef list held
    # Statuses, bytes and durations of this connection's requests (metrics, access log).
    cdef Exchanges exchanges
    # Workers (relay/cluster/): ``may_hand_off``: this connection may still go to the
    # worker that holds its endpoint, so what it read before routing is kept in
    # ``carried``; ``handed_in``: the bytes another worker read before handing it here;
    # ``handoff_refused``: a hand-over decided from the head's bytes was refused (the
    # parse that follows answers it, and does not try again).
    cdef bint may_hand_off
    cdef bint by_name
    cdef bint handoff_refused
    cdef bytearray carried
    cdef bytes handed_in
    # The visitor's address: its socket's peer, or (a visitor another node forwarded
    # here, relay/edge/cluster.py) the address that node saw.
    cdef object peer

    def __init__(self, front, str scheme, str tls_endpoint=None, bytes handed_in=None,
                 object peer=None):
        # The stream does not exist yet: it is opened once the first head is routed.
        # ``tls_endpoint``: on the TLS port, the id of the endpoint the SNI selected; every
        # request on the connection must be for that endpoint.
        self.front = front
        self.scheme = scheme
        self.kind = KIND_HTTPS if scheme == "https" else KIND_HTTP
        self.tls_endpoint = tls_endpoint
        self.stream_id = -1
        self._preamble = b""
        self.finished = False
        self.parser = httptools.HttpRequestParser(self)
        self.url = bytearray()
        self.headers = []
        self.host = ""
        self.last_host = None
        self.last_hostname = ""
        self.max_head = front.max_head
        self.max_headers = front.max_headers
        self.max_body = front.max_body
        self.header_timeout = front.header_timeout
        self.idle_timeout = front.idle_timeout
        self.handed_in = handed_in
        self.peer = peer
        self.may_hand_off = (handed_in is None and tls_endpoint is None and peer is None
                             and front.hand_off is not None)
        if self.may_hand_off:
            self.carried = bytearray()
            self.by_name = front.decides_by_name()

    # --- asyncio protocol -----------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        if self.peer is None:
            self.peer = transport.get_extra_info("peername")
        else:
            self.log_visitor = self.peer
        peer = self.peer
        self.peer_ip = peer[0] if isinstance(peer, tuple) else "unknown"
        self.forwarded_for = self.peer_ip.encode()
        loop = self.front.loop
        self.head_started = loop.time()
        self.idle_since = self.head_started
        self.watchdog = loop.call_later(self._watch_period(), self._watch)
        if self.handed_in is None:
            self._count_open(True)  # a visitor connection from its accept (or TLS handshake)
            return
        self._count_adopted()
        data = self.handed_in
        self.handed_in = None
        self._feed(data)

    def get_buffer(self, Py_ssize_t sizehint):
        if self.may_hand_off and not self.routed:
            return _UNROUTED_VIEW
        return _READ_VIEW

    def buffer_updated(self, Py_ssize_t nbytes):
        if self.finished or self.refusing:
            return
        self._count_from_socket(nbytes)
        self.activity += 1
        data = _READ_VIEW[:nbytes]
        if self.upgraded:
            self._send(data)
            return
        if self.may_hand_off and not self.routed:
            # llhttp skips blank lines before a request line and spaces before a value
            # without a callback, so max_head alone does not bound what is read before
            # routing: the carried bytes are capped here (they travel in one datagram).
            if len(self.carried) + nbytes > self.max_head + UNROUTED_READ:
                self._refuse(431, "RLY_622", "request head too large")
                return
            self.carried += data
            if self.by_name and self._handed_by_name():
                return
        if self.upgrade_parsed:
            # Read while an Upgrade waits for its verdict, which holds reads: uvloop reads
            # a handed-in visitor after connection_made whatever that asked. It is the
            # tail's: raw if the origin switches, requests again if not.
            self.upgrade_tail = self.upgrade_tail + bytes(data)
            self.transport.pause_reading()
            return
        self._feed(data)

    cdef bint _handed_by_name(self):
        """Hand the visitor over before parsing it when its head's bytes alone say which
        worker holds its Host: a handed-over visitor then costs this worker no parse (the
        worker that serves it parses it whole, and answers anything wrong with it as this
        one would have), with what was read of it. True when it was handed over. A
        visitor this decides to serve here is parsed and routed without being looked up
        again (at once: nothing can change meanwhile)."""
        found = _plain_head(self.carried)
        if found is None:
            return False
        holder = self._holder_by_name(found)
        if holder is _PARSE_FIRST:
            self.by_name = False  # whole, and still not decided: the parse routes it
            return False
        if holder is None:
            self.may_hand_off = False
            self.carried = None
            return False
        if self._hand_off(holder, False):
            return True
        self.by_name = False  # not taken: parsed and routed as usual
        self.handoff_refused = True
        return False

    cdef object _holder_by_name(self, tuple found):
        """The other worker a head (``_plain_head``'s Host and target) goes to; None: it
        is served here; _PARSE_FIRST: it must be parsed first (a Host no name has, which
        the parse refuses; an ACME challenge, which any worker answers; on a node of a
        cluster, a name not placed by its name alone)."""
        cdef bytes target = found[1]
        hostname = _hostname_of(found[0])
        if hostname is None or target.startswith(ACME_PATH):
            return _PARSE_FIRST
        return self.front.handed_by_name(hostname)

    cdef void _feed(self, object data):
        """Parse visitor bytes as HTTP (callbacks below forward each request)."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade_request_done(data, exc.args[0])
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
        self._count_close()
        if self.exchanges is not None:
            self.exchanges.end()
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
        cdef bytes name, value, token, coding
        cdef bytes host = b""
        if self.refusing:
            return  # answered, handed over or closing: later pipelined heads go nowhere
        cdef bytes target = bytes(self.url)
        cdef int hosts = 0, content_lengths = 0
        cdef list codings = None
        cdef set connection_tokens = set()
        cdef Py_ssize_t content_length = -1
        self.head_started = 0.0
        method = self.parser.get_method()
        if method == b"CONNECT":
            raise _LimitExceeded(405, "RLY_629", "CONNECT is not supported")
        version = self.parser.get_http_version()
        for name, value in self.headers:
            if name == b"host":
                hosts += 1
                host = value.strip()
            elif name == b"connection":
                for token in value.lower().split(b","):
                    connection_tokens.add(token.strip())
            elif name == b"transfer-encoding":
                if codings is None:
                    codings = []
                for coding in value.lower().split(b","):
                    codings.append(coding.strip())
            elif name == b"content-length":
                content_lengths += 1
                if not value.isdigit():  # no sign, no list, no blanks
                    raise _LimitExceeded(400, "RLY_627", "bad content-length")
                content_length = int(value)
        # RFC 9112 §6.3: one framing, whose end the edge and the origin find alike.
        if content_lengths > 1:
            raise _LimitExceeded(400, "RLY_627", "more than one content-length")
        if codings is not None:
            if version == "1.0":
                raise _LimitExceeded(400, "RLY_627", "transfer-encoding in an HTTP/1.0 request")
            if content_lengths:
                raise _LimitExceeded(400, "RLY_627", "both content-length and transfer-encoding")
            if (not codings or codings[len(codings) - 1] != b"chunked"
                    or codings.count(b"chunked") != 1):
                raise _LimitExceeded(400, "RLY_627", "transfer-encoding must end in chunked")
            self.chunked = True
        if connection_tokens and not connection_tokens.isdisjoint(PROTECTED):
            raise _LimitExceeded(400, "RLY_627", "connection names a header the edge must keep")
        if hosts > 1:
            raise _LimitExceeded(400, "RLY_628", "more than one host header")
        if hosts == 0 and version != "1.0":
            raise _LimitExceeded(400, "RLY_628", "no host header")
        if target[:1] != b"/" and target != b"*":
            host, target = _split_absolute(target)
        if host != self.last_host:
            # Keep-alive requests repeat their Host: checked and parsed once per connection.
            hostname = _hostname_of(host)
            if hostname is None:
                raise _LimitExceeded(400, "RLY_628", "malformed host")
            self.last_hostname = hostname
            self.last_host = host
        hostname = self.last_hostname
        self.client_close = b"close" in connection_tokens
        # Decided from the headers: llhttp sets its own upgrade flag only after this call.
        self.wants_upgrade = b"upgrade" in connection_tokens and self._header(b"upgrade") is not None
        if self.max_body and content_length > self.max_body:
            raise _LimitExceeded(413, "RLY_624", "request body too large")
        if not self.routed:
            self._route(hostname, target, method == b"HEAD")
            if self.refusing:
                return
        elif hostname != self.host:
            # A different site on the same connection: never send it to this agent.
            raise _LimitExceeded(421, "RLY_625", "this connection serves another host")
        if self.wants_upgrade:
            self._upgrade_requested()
        self._send(self._rewrite_head(method, version, target, host, connection_tokens))
        self.exchanges.begin(method, target, method == b"HEAD")
        self.requests += 1
        self.stream_requests += 1

    def on_body(self, bytes body):
        if self.refusing:
            return
        self.body_size += len(body)
        self.exchanges.request_bytes(len(body))
        if self.max_body and self.body_size > self.max_body:
            raise _LimitExceeded(413, "RLY_624", "request body too large")
        if self.chunked:
            self._send(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            self._send(body)

    def on_message_complete(self):
        if self.chunked and not self.refusing:
            self._send(b"0\r\n\r\n")  # trailers are not forwarded
        if self.wants_upgrade and not self.parser.should_upgrade():
            # Forwarded with Upgrade, but llhttp goes on reading HTTP: so does the edge,
            # whatever the origin answers (at worst a 101 leaves the visitor with errors).
            self._forget_upgrade()

    # --- routing and rewriting ----------------------------------------------------------

    cdef void _route(self, str hostname, bytes url, bint head):
        accept = self._header(b"accept")
        challenge = self.front.acme_http01(url)
        if challenge is not None:
            self._respond_local(challenge)
            return
        result = self.front.route(
            hostname, url, self.scheme, self.peer, accept, self.tls_endpoint,
            self.may_hand_off, head
        )
        if result[0] == -2:
            self._hand_off(result[1], True)
            return
        if result[0] == -1:
            self._respond_local(result[1])
            return
        if result[0] != 0:
            self._refuse(result[0], result[1], result[2])
            return
        link, header, rewrite, slot = result[1], result[2], result[3], result[4]
        try:
            self.stream_id = (<Link>link).session.open_stream()
        except YamuxError:
            self._refuse(503, "RLY_612", "the agent cannot take more connections")
            return
        self.link = link
        self.host = hostname
        self.host_rewrite = rewrite
        self.stream_header = header
        self.routed = True
        self.carried = None
        self.exchanges = Exchanges(self.kind, hostname, self.peer_ip, slot)
        self.attribute_to(slot)
        (<Link>link).channels[self.stream_id] = self
        self._send(header)

    cdef bint _hand_off(self, object target, bint answer_failure):
        """The endpoint is held by another worker: give it this connection's socket and
        what was read so far. The visitor sees nothing of it. True when it went over, or
        (``answer_failure``) was refused here: 503 RLY_611 and a close.

        A hand-over decided from the head's bytes alone does not answer a failure (False,
        nothing done): the head is then parsed here and routed again, without a second
        try (one visitor, one failure counted), so that the page knows its request (a
        HEAD gets no body, an Accept its format) and the head is read before the close
        (a close with unread bytes is a reset, which loses the page)."""
        self.refusing = True
        if not self.handoff_refused and self.front.hand_off(
                self.transport, bytes(self.carried), target):
            self.carried = None
            self.finished = True
            self.transport.abort()  # our descriptor only: the socket lives on over there
            return True
        if not answer_failure:
            self.refusing = False
            return False
        self.carried = None
        self.transport.pause_reading()
        self._write_page(503, "RLY_611", "the agent serving this host cannot be reached")
        self.finished = True
        self.transport.close()
        return True

    cdef bytes _rewrite_head(self, bytes method, str version, bytes target, bytes host,
                             set connection_tokens):
        cdef bytes name, value
        cdef list out = []
        cdef list forwarded_for = []
        cdef bint host_sent = False
        out.append(b"%b %b HTTP/%b\r\n" % (method, target, version.encode()))
        for name, value in self.headers:
            if name in HOP_BY_HOP or name in connection_tokens or name in REPLACED:
                if not (self.wants_upgrade and name == b"upgrade"):
                    continue
            if name == b"host":
                # The routed authority (an absolute-form target's, if there was one).
                value = self.host_rewrite if self.host_rewrite is not None else host
                host_sent = True
            elif name == b"x-forwarded-for":
                forwarded_for.append(value)
                continue
            out.append(b"%b: %b\r\n" % (name, value))
        if not host_sent and host:
            out.append(b"host: %b\r\n" % (self.host_rewrite if self.host_rewrite is not None
                                          else host))
        # Every X-Forwarded-For the visitor sent, in order (RFC 9110 §5.3: one list).
        forwarded_for.append(self.forwarded_for)
        out.append(b"x-forwarded-for: %b\r\n" % b", ".join(forwarded_for))
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

    # --- Upgrade: raw only after a 101 ----------------------------------------------

    cdef int _upgrade_requested(self) except -1:
        """An Upgrade request is about to be forwarded: find its response's status."""
        self.upgrade_verdict = VERDICT_NONE
        if self.stream_requests == 0:
            # Its response is the first on this stream.
            self.await_status = True
            self.status_buf = bytearray()
            return 0
        # Earlier responses may still be on their way, and the edge does not parse them to
        # find where they end: finish this stream (the origin closes once they are sent)
        # and send the Upgrade request on a fresh one, whose first response is its own.
        if self.remote_eof:
            raise _LimitExceeded(400, "RLY_620", "the upstream closed this connection")
        try:
            (<Link>self.link).session.close_stream(self.stream_id)
        except YamuxError:
            raise _LimitExceeded(502, "RLY_621", "the edge could not forward the request")
        (<Link>self.link).schedule_flush()
        self.restreaming = True
        self.held = []
        self.stream_requests = 0
        self.reads_held = True
        self._update_reading()
        return 0

    cdef void _upgrade_request_done(self, object data, Py_ssize_t offset):
        """llhttp stopped after an Upgrade request: the rest is not HTTP if the origin
        switches protocols. Hold it (and stop reading) until the verdict."""
        if self.finished or self.refusing:
            return
        self.upgrade_tail = bytes(data[offset:])
        self.upgrade_parsed = True
        if not self.wants_upgrade:
            # Not forwarded as an Upgrade (see on_message_complete): still HTTP.
            self.upgrade_verdict = VERDICT_DECLINED
        if self.upgrade_verdict != VERDICT_NONE:
            self._apply_upgrade_verdict()
            return
        self.reads_held = True
        self._update_reading()

    cdef void _forget_upgrade(self):
        self.await_status = False
        self.status_buf = None
        self.upgrade_verdict = VERDICT_NONE

    cdef void _scan_status(self, const char* data, Py_ssize_t length):
        """Look for the final status of the Upgrade response (1xx heads before it are
        skipped); decide once it is known. Only runs while ``await_status``."""
        cdef bytearray buf = self.status_buf
        cdef Py_ssize_t line_end, head_end, other
        cdef int status
        buf += data[:length]
        while True:
            line_end = buf.find(b"\n")
            if line_end < 0:
                if len(buf) > MAX_STATUS_SCAN:
                    self._upgrade_decided(False)
                return
            line = bytes(buf[:line_end]).rstrip(b"\r")
            if (len(line) < 12 or not line.startswith(b"HTTP/1.") or line[8:9] != b" "
                    or not line[9:12].isdigit() or (len(line) > 12 and line[12:13] != b" ")):
                self._upgrade_decided(False)  # not a status line: certainly no 101
                return
            status = int(line[9:12])
            if status == 101:
                self._upgrade_decided(True)
                return
            if status >= 200 or status < 100:
                self._upgrade_decided(False)
                return
            # An interim response (100 Continue, 103 Early Hints): skip its head.
            head_end = buf.find(b"\n\r\n", line_end)
            other = buf.find(b"\n\n", line_end)
            if head_end < 0 or (0 <= other < head_end):
                head_end = other
                if head_end < 0:
                    if len(buf) > MAX_STATUS_SCAN:
                        self._upgrade_decided(False)
                    return
                del buf[:head_end + 2]
            else:
                del buf[:head_end + 3]

    cdef void _upgrade_decided(self, bint switched):
        self.await_status = False
        self.status_buf = None
        self.upgrade_verdict = VERDICT_SWITCHED if switched else VERDICT_DECLINED
        if self.upgrade_parsed:
            self._apply_upgrade_verdict()

    cdef void _apply_upgrade_verdict(self):
        cdef bytes tail = self.upgrade_tail
        cdef int verdict = self.upgrade_verdict
        self.upgrade_tail = None
        self.upgrade_parsed = False
        self.upgrade_verdict = VERDICT_NONE
        if self.finished or self.refusing:
            return
        self.reads_held = False
        if verdict == VERDICT_SWITCHED:
            self.upgraded = True
            if tail:
                self._send(tail)
        else:
            # Declined: the visitor's next bytes are requests again, parsed from the start.
            self.parser = httptools.HttpRequestParser(self)
            if tail:
                self._feed(tail)
        if not self.reads_held:
            self._update_reading()

    cdef void _next_stream(self):
        """The previous stream's responses are through: the held Upgrade request (and
        whatever followed it) goes on a fresh stream to the same endpoint."""
        cdef Link link = <Link>self.link
        cdef list held = self.held
        self.restreaming = False
        self.held = None
        link.channels.pop(self.stream_id, None)
        if link.closed:
            self._abort()
            return
        try:
            self.stream_id = link.session.open_stream()
        except YamuxError:
            self.stream_id = -1
            self._write_page(503, "RLY_612", "the agent cannot take more connections")
            self.finished = True
            self.transport.close()
            return
        link.channels[self.stream_id] = self
        self.await_status = True
        self.status_buf = bytearray()
        Pump._send(self, self.stream_header)
        for piece in held:
            Pump._send(self, piece)
        if self._local_eof:
            try:
                link.session.close_stream(self.stream_id)
            except YamuxError:
                pass
        if not self.upgrade_parsed:
            # The Upgrade request's body is still coming: read on.
            self.reads_held = False
            self._update_reading()

    cdef void _send(self, object data):
        if self.restreaming:
            self.held.append(bytes(data))
            return
        Pump._send(self, data)

    cdef bint _wants_pause(self):
        # Pump's reasons, plus the hold of an Upgrade in progress.
        return Pump._wants_pause(self) or self.reads_held

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
            self.restreaming = False
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
        self.exchanges.feed(data, length)
        Pump.deliver(self, data, length)
        if self.await_status:
            self._scan_status(data, length)

    cdef void deliver_bytes(self, bytes data):
        self.response_started = True
        self.activity += 1
        self.exchanges.feed(data, len(data))
        Pump.deliver_bytes(self, data)
        if self.await_status:
            self._scan_status(data, len(data))

    cdef void deliver_run(self, const char* base, const uint32_t* ev, Py_ssize_t first,
                          Py_ssize_t n):
        cdef Py_ssize_t j
        self.response_started = True
        self.activity += 1
        for j in range(first, first + n):
            self.exchanges.feed(base + ev[4 * j + 2], ev[4 * j + 3])
        Pump.deliver_run(self, base, ev, first, n)
        j = first
        while self.await_status and j < first + n:
            self._scan_status(base + ev[4 * j + 2], ev[4 * j + 3])
            j += 1

    cdef void remote_fin(self):
        if self.restreaming and not self.finished:
            self._next_stream()
            return
        Pump.remote_fin(self)

    cdef bint _page_instead_of_answer(self, str code, str message):
        """A 502 page and the end of the connection, when no answer has begun (after one
        began, the visitor can only be cut); whether it was sent."""
        if self.response_started or self.transport is None or self.finished:
            return False
        self._write_page(502, code, message)
        self.finished = True
        self.transport.close()
        return True

    cdef void remote_reset(self):
        if not self._page_instead_of_answer("RLY_613", "the agent could not reach the upstream"):
            Pump.remote_reset(self)

    cdef void link_lost(self):
        # Not the upstream's fault: the connection carrying the request (the agent's
        # link, or the link to the node that holds the agent) went down under it.
        if not self._page_instead_of_answer("RLY_616", "the tunnel carrying this request was lost"):
            Pump.link_lost(self)

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
            if self.routed and self.requests and not self.response_started and not self.upgraded:
                # A request went out and nothing came back: the visitor learns why (the
                # code the agent uses for a dial that timed out), the agent drops the
                # upstream connection (the reset).
                self._reset_stream()
                self._write_page(504, "RLY_614", "the upstream did not answer in time")
                self.finished = True
                self.transport.close()
            else:
                self._abort()
            return
        self.watchdog = self.front.loop.call_later(self._watch_period(), self._watch)

    cdef void _cancel_timers(self):
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None


cdef tuple _split_absolute(bytes target):
    """(authority, origin-form target) of an absolute-form target (RFC 9112 §3.2.2).
    Only http and https; no userinfo (RFC 9110 §4.2.4 forbids it in http URIs)."""
    cdef bytes lower = target[:8].lower()
    cdef bytes rest
    cdef Py_ssize_t end, i
    if lower.startswith(b"http://"):
        rest = target[7:]
    elif lower.startswith(b"https://"):
        rest = target[8:]
    else:
        raise _LimitExceeded(400, "RLY_628", "request target is neither a path nor http(s)")
    end = len(rest)
    for sep in (b"/", b"?", b"#"):
        i = rest.find(sep)
        if 0 <= i < end:
            end = i
    authority = rest[:end]
    path = rest[end:]
    if not authority or b"@" in authority:
        raise _LimitExceeded(400, "RLY_628", "request target has no usable authority")
    if not path.startswith(b"/"):
        path = b"/" + path
    return authority, path
