# cython: language_level=3
"""Request/response exchanges of one HTTP visitor connection: which status each request
got, how many bytes went each way, how long it took — for metrics and the access log.

The edge forwards responses unparsed (one stream is one upstream connection). To know a
response's status and where it ends, this reads only each response's *head*, in C,
straight from the chunk being delivered (a copy only when a head spans chunks), and then
counts body bytes down from Content-Length: no byte of a body is looked at. Where the end
cannot be known from the head (chunked or close-delimited bodies) the exchange ends when
the visitor sends its next request, or the connection ends. Requests pipelined behind a
response whose end is unknown keep status 0 ("-" in the log).

Finished exchanges are counted in C arrays (status class and duration per endpoint kind)
that ``http_counts()`` hands to the metrics collector at scrape time and, while the access
log is on, appended to a list that ``take_finished()`` drains in batches.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.string cimport memcmp, memcpy, memset

from relay._clock cimport monotonic, wallclock
from relay._series cimport MAX_ENDPOINT_SERIES, N_ENDPOINT_SLOTS

cdef extern from "string.h":
    void* memmem(const void* haystack, size_t haystacklen, const void* needle, size_t needlelen)

cdef enum:
    N_KINDS = 4          # relay._fastpath.KINDS
    N_CLASSES = 6        # index 0: no status seen; 1..5: 1xx..5xx
    N_DURATION_BUCKETS = 14
    MAX_HEAD = 16384     # a response head longer than this is not looked into
    STATE_IDLE = 0
    STATE_HEAD = 1
    STATE_BODY = 2       # Content-Length bytes left in ``remaining``
    STATE_OPEN = 3       # body of unknown length: ends with the next request or the close
    STATE_BLIND = 4      # gave up (a head too long or unreadable): count bytes only

#: Upper bounds (seconds) of the request duration histogram; +Inf after.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0)
cdef double _bounds[N_DURATION_BUCKETS]
cdef unsigned long long _classes[N_KINDS][N_CLASSES]
cdef unsigned long long _buckets[N_KINDS][N_DURATION_BUCKETS + 1]
cdef double _duration_sum[N_KINDS]
for _i, _bound in enumerate(DURATION_BUCKETS):
    _bounds[_i] = _bound
memset(_classes, 0, sizeof(_classes))
memset(_buckets, 0, sizeof(_buckets))
memset(_duration_sum, 0, sizeof(_duration_sum))
# Requests by status class per endpoint series slot (relay/_series.pxd; opt-in).
cdef unsigned long long _ep_classes[N_ENDPOINT_SLOTS][N_CLASSES]
memset(_ep_classes, 0, sizeof(_ep_classes))

#: Endpoint kinds, as relay._fastpath.KINDS (for the log line).
KINDS = ("tcp", "http", "https", "tls")
#: The longest request target a log line carries (longer ones are cut).
cdef int MAX_TARGET = 2048
#: The longest " kind endpoint visitor " part of a line (longer ones are cut).
cdef int MAX_PREFIX = 1024
cdef long long _stamped_second = -1
cdef char _stamp[32]


cdef extern from "time.h":
    ctypedef long time_t
    struct tm:
        pass
    tm* gmtime_r(const time_t* timer, tm* result)
    size_t strftime(char* s, size_t maxsize, const char* fmt, const tm* t)


cdef const char* _timestamp(long long second):
    """``YYYY-MM-DDTHH:MM:SS`` of a Unix second, formatted again only when it changes."""
    global _stamped_second
    cdef tm parts
    cdef time_t t = <time_t>second
    if second != _stamped_second:
        _stamped_second = second
        gmtime_r(&t, &parts)
        strftime(_stamp, sizeof(_stamp), "%Y-%m-%dT%H:%M:%S", &parts)
    return _stamp


cdef int _logging = 0  # LOG_OFF, LOG_TEXT (finished lines as bytes) or LOG_RECORDS
#: Requests numbered in order since start: the access log's request ids.
cdef unsigned long long _requests = 0
cdef list _finished = []
#: Records kept for the access log between two drains; past this they are dropped (and
#: counted): a log that cannot keep up must not grow the edge without bound.
cdef Py_ssize_t MAX_PENDING_RECORDS = 100_000
cdef Py_ssize_t _pending = 0  # records (or text lines) kept since the last drain
cdef unsigned long long _dropped = 0
# Text lines are written one after another into this block; a full block becomes one
# bytes object in ``_finished``. One allocation per ~2,000 lines instead of one per line
# halved what the log costs per request in C (measured: 120 -> 60 ns).
cdef enum:
    TEXT_BLOCK = 262144
    MAX_LINE = 4096      # room for the longest line: prefix, target, method and numbers
cdef char _text[TEXT_BLOCK]
cdef Py_ssize_t _text_used = 0


cdef void _seal_text():
    """The lines written into the block so far become one bytes object in ``_finished``."""
    global _text_used
    if _text_used:
        _finished.append(PyBytes_FromStringAndSize(_text, _text_used))
        _text_used = 0


def endpoint_http_counts(int count):
    """Requests by status class (as ``http_counts()``'s) for endpoint slots 1..``count``:
    index i is slot i + 1."""
    if not 0 <= count <= MAX_ENDPOINT_SERIES:
        raise ValueError(f"count must be 0..{MAX_ENDPOINT_SERIES}, not {count}")
    return [[_ep_classes[s][c] for c in range(N_CLASSES)] for s in range(1, count + 1)]


def http_counts():
    """Counts since start, per kind: requests by status class (index 0: none seen) and
    the duration histogram (bucket counts, not cumulative, +Inf last) with its sum."""
    return {
        "classes": [[_classes[k][c] for c in range(N_CLASSES)] for k in range(N_KINDS)],
        "buckets": [[_buckets[k][b] for b in range(N_DURATION_BUCKETS + 1)]
                    for k in range(N_KINDS)],
        "sum": [_duration_sum[k] for k in range(N_KINDS)],
        "dropped": _dropped,
    }


cdef enum:
    MODE_OFF = 0
    MODE_TEXT = 1
    MODE_RECORDS = 2

LOG_OFF = MODE_OFF
#: Each finished exchange becomes its text log line, formatted here in C (formatting
#: lines in Python cost the edge 20% more CPU per request, measured).
LOG_TEXT = MODE_TEXT
#: Each finished exchange becomes a tuple, for a writer that formats it (JSON).
LOG_RECORDS = MODE_RECORDS


def set_logging(int mode):
    """What finished exchanges leave for the access log: nothing (``LOG_OFF``, counters
    only), text lines (``LOG_TEXT``) or records (``LOG_RECORDS``)."""
    global _logging
    _seal_text()  # lines written so far stay ahead of what the new mode records
    _logging = mode


def take_finished():
    """What finished since the last call: blocks of text lines (``bytes``, each ending in a
    newline) in ``LOG_TEXT`` mode, record tuples (see ``Exchanges._finish``) in
    ``LOG_RECORDS`` mode."""
    global _finished, _pending
    _seal_text()
    taken, _finished = _finished, []
    _pending = 0
    return taken


cdef class Exchanges:
    """The exchanges of one visitor connection; ``kind`` indexes the counters."""

    def __init__(self, int kind, str endpoint, str visitor, int metric_slot=0):
        self.kind = kind if 0 <= kind < N_KINDS else 1
        # The endpoint's series slot (0: none); out of range counts nowhere.
        self.slot = metric_slot if 0 < metric_slot <= MAX_ENDPOINT_SERIES else 0
        self.endpoint = endpoint
        self.visitor = visitor
        self.queue = []

    # Python's way in (tests, and anything that is not the compiled HTTP front).
    def request(self, bytes method, bytes target):
        self.begin(method, target, method == b"HEAD")

    def response_bytes(self, bytes data):
        self.feed(data, len(data))

    def close(self):
        self.end()

    cdef void begin(self, bytes method, bytes target, bint head_request):
        """A request head was forwarded. An exchange whose body had no known end is over:
        the visitor would not ask again before reading it."""
        global _requests
        if self.state == STATE_OPEN or (self.state == STATE_BLIND and self.current):
            self._finish()
        _requests += 1
        record = [monotonic(), wallclock(), method, target,
                  _requests, head_request, 0, 0, 0]
        if self.current is None and self.state == STATE_IDLE:
            self.current = record
        else:
            self.queue.append(record)  # pipelined behind a response still on its way

    cdef void request_bytes(self, Py_ssize_t n):
        """Request body bytes of the newest request."""
        target = self.queue[len(self.queue) - 1] if self.queue else self.current
        if target is not None:
            target[7] += n

    cdef void feed(self, const char* data, Py_ssize_t n):
        """Response bytes, as delivered to the visitor."""
        cdef Py_ssize_t pos = 0, used
        while pos < n:
            if self.state == STATE_IDLE:
                if self.current is None:
                    if not self.queue:
                        self.unclaimed += n - pos  # no request waits: count, attribute none
                        return
                    self.current = self.queue.pop(0)
                self.state = STATE_HEAD
                self.head = None
            if self.state == STATE_HEAD:
                pos += self._read_head(data + pos, n - pos)  # counts its bytes itself
                continue
            if self.state == STATE_BODY:
                used = n - pos if n - pos < self.remaining else self.remaining
                self.current[8] += used
                self.remaining -= used
                pos += used
                if self.remaining == 0:
                    self._finish()
                continue
            # STATE_OPEN / STATE_BLIND: everything to the current exchange
            if self.current is not None:
                self.current[8] += n - pos
            else:
                self.unclaimed += n - pos
            return

    cdef Py_ssize_t _read_head(self, const char* data, Py_ssize_t n):
        """Consume response-head bytes, counted to the current exchange before it may
        finish; returns how many of ``data`` belonged to the head."""
        cdef const char* end
        cdef const char* head
        cdef Py_ssize_t head_len, consumed, before
        cdef bytes joined
        if self.head is None:
            end = <const char*>memmem(data, n, b"\r\n\r\n", 4)
            if end != NULL:  # the common case: the whole head is in this chunk
                head_len = end - data + 4
                self.current[8] += head_len
                self._head_done(data, head_len)
                return head_len
            self.head = bytearray()
        before = len(self.head)
        take = n if n < MAX_HEAD - before else MAX_HEAD - before
        self.head += data[:take]
        joined = bytes(self.head)
        end = <const char*>memmem(<const char*>joined, len(joined), b"\r\n\r\n", 4)
        if end == NULL:
            self.current[8] += take
            if len(self.head) >= MAX_HEAD:
                self.state = STATE_BLIND
                self.head = None
            return take
        head_len = end - <const char*>joined + 4
        consumed = head_len - before
        self.current[8] += consumed
        self._head_done(<const char*>joined, head_len)
        return consumed

    cdef void _head_done(self, const char* head, Py_ssize_t length):
        cdef int status = _status(head, length)
        cdef long long content_length
        self.head = None
        record = self.current
        if status == 0:
            self.state = STATE_BLIND  # not an HTTP response head: stop looking
            return
        if 100 <= status < 200 and status != 101:
            self.state = STATE_HEAD  # an interim response; the final one follows
            return
        record[6] = status
        if status == 101:
            self.state = STATE_OPEN  # the connection changes protocol; ends with it
            return
        if record[5] or status == 204 or status == 304:
            self._finish()  # no body (a HEAD request, No Content, Not Modified)
            return
        content_length = _content_length(head, length)
        if content_length == 0:
            self._finish()
        elif content_length > 0:
            self.remaining = content_length
            self.state = STATE_BODY
        else:
            self.state = STATE_OPEN  # chunked or close-delimited

    cdef void _finish(self):
        """The current exchange is over: count it, record it for the log, move on."""
        global _dropped, _pending, _text_used
        cdef double elapsed
        cdef int status, klass, b = 0
        record = self.current
        self.current = None
        self.state = STATE_IDLE
        self.remaining = 0
        if record is None:
            return
        elapsed = monotonic() - <double>record[0]
        status = record[6]
        klass = status // 100 if 100 <= status < 600 else 0
        _classes[self.kind][klass] += 1
        if self.slot:
            _ep_classes[self.slot][klass] += 1
        while b < N_DURATION_BUCKETS and elapsed > _bounds[b]:
            b += 1
        _buckets[self.kind][b] += 1
        _duration_sum[self.kind] += elapsed
        if _logging:
            if _pending >= MAX_PENDING_RECORDS:
                _dropped += 1
                return
            _pending += 1
            if _logging == MODE_TEXT:
                if _text_used + MAX_LINE > TEXT_BLOCK:
                    _seal_text()
                _text_used += self._line(_text + _text_used, record, elapsed, status)
            else:
                _finished.append((record[1], elapsed, self.kind, self.endpoint, self.visitor,
                                  record[4], record[2], record[3], status, record[7],
                                  record[8]))

    cdef Py_ssize_t _line(self, char* line, list record, double elapsed, int status):
        """``2026-12-02T23:59:59.123Z http app.example 203.0.113.7 r1f GET /a 200 in=0
        out=512 0.003s``: the date and time formatted once per second, the connection's
        part once per connection, the rest written digit by digit (snprintf's general
        machinery, its float formatting most of all, was most of the log's cost). Written at
        ``line``, which has room for ``MAX_LINE`` bytes; returns the length written."""
        cdef double start = record[1]
        cdef long long second = <long long>start
        cdef int millis = <int>((start - second) * 1000)
        cdef bytes method = record[2], target = record[3]
        cdef char* out = line
        cdef long long elapsed_ms = <long long>(elapsed * 1000.0 + 0.5)
        if self.line_prefix is None:
            prefix = (" %s %s %s " % (KINDS[self.kind], self.endpoint, self.visitor or "-"))
            self.line_prefix = prefix.encode("utf-8", "replace")[:MAX_PREFIX]
        out = _put(out, _timestamp(second), 19)
        out[0] = b'.'
        out = _put_padded(out + 1, millis, 3)
        out[0] = b'Z'
        out = _put(out + 1, <char*>self.line_prefix, len(self.line_prefix))
        out[0] = b'r'
        out = _put_hex(out + 1, <unsigned long long>record[4])
        out[0] = b' '
        out = _put(out + 1, <char*>method, min(len(method), 16))
        out[0] = b' '
        out = _put(out + 1, <char*>target, min(len(target), MAX_TARGET))
        out[0] = b' '
        if status:
            out = _put_decimal(out + 1, status)
        else:
            out[1] = b'-'
            out += 2
        out = _put(out, b" in=", 4)
        out = _put_decimal(out, <long long>record[7])
        out = _put(out, b" out=", 5)
        out = _put_decimal(out, <long long>record[8])
        out[0] = b' '
        out = _put_decimal(out + 1, elapsed_ms // 1000)
        out[0] = b'.'
        out = _put_padded(out + 1, <int>(elapsed_ms % 1000), 3)
        out = _put(out, b"s\n", 2)
        return out - line

    cdef void end(self):
        """The connection is over: what is still open ends here (status 0 if never seen)."""
        if self.current is not None:
            self._finish()
        while self.queue:
            self.current = self.queue.pop(0)
            self._finish()


cdef inline char* _put(char* out, const char* text, Py_ssize_t n):
    memcpy(out, text, n)
    return out + n


cdef char* _put_decimal(char* out, long long value):
    """``value`` in decimal (a negative one as 0: counts and durations are never)."""
    cdef char digits[24]
    cdef int n = 0
    if value <= 0:
        out[0] = b'0'
        return out + 1
    while value:
        digits[n] = <char>(48 + value % 10)
        value //= 10
        n += 1
    while n:
        n -= 1
        out[0] = digits[n]
        out += 1
    return out


cdef char* _put_padded(char* out, int value, int width):
    """``value`` (0 <= value < 10**width) in ``width`` decimal digits."""
    cdef int i
    for i in range(width - 1, -1, -1):
        out[i] = <char>(48 + value % 10)
        value //= 10
    return out + width


cdef const char* _HEX_DIGITS = b"0123456789abcdef"


cdef char* _put_hex(char* out, unsigned long long value):
    cdef char digits[20]
    cdef int n = 0
    while True:
        digits[n] = _HEX_DIGITS[value & 15]
        value >>= 4
        n += 1
        if not value:
            break
    while n:
        n -= 1
        out[0] = digits[n]
        out += 1
    return out


cdef int _status(const char* head, Py_ssize_t n):
    """The status code of ``HTTP/1.x NNN ...``, or 0."""
    if n < 12 or memcmp(head, b"HTTP/1.", 7) != 0 or head[8] != b' ':
        return 0
    if not (b'0' <= head[9] <= b'9' and b'0' <= head[10] <= b'9' and b'0' <= head[11] <= b'9'):
        return 0
    return (head[9] - 48) * 100 + (head[10] - 48) * 10 + (head[11] - 48)


cdef long long _content_length(const char* head, Py_ssize_t n):
    """Content-Length of a response head; -1 when absent, chunked, or unreadable (the body
    then ends with the connection or the next request)."""
    cdef Py_ssize_t i = 0, j
    cdef long long value = -1
    cdef char c
    while i < n:
        # i is at the start of a line
        if n - i > 15 and _lower_equals(head + i, b"content-length:", 15):
            j = i + 15
            while j < n and (head[j] == b' ' or head[j] == b'\t'):
                j += 1
            value = 0
            while j < n and b'0' <= head[j] <= b'9':
                value = value * 10 + (head[j] - 48)
                if value > (1 << 50):
                    return -1
                j += 1
            if j < n and head[j] != b'\r' and head[j] != b' ':
                return -1  # a list or junk: do not trust it
        elif n - i > 18 and _lower_equals(head + i, b"transfer-encoding:", 18):
            return -1
        while i < n and head[i] != b'\n':
            i += 1
        i += 1
    return value


cdef bint _lower_equals(const char* text, const char* lower, Py_ssize_t n):
    cdef Py_ssize_t k
    cdef char c
    for k in range(n):
        c = text[k]
        if b'A' <= c <= b'Z':
            c = c + 32
        if c != lower[k]:
            return False
    return True
