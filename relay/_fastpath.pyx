# cython: language_level=3
"""The byte path: asyncio protocols that move payload between sockets and a yamux session.

Per connection, Python decides (which stream, which upstream); per chunk only this
compiled code runs:

* ``Link`` is the ``BufferedProtocol`` of the agent link (a TLS transport). uvloop
  decrypts straight into a preallocated buffer; the native session parses it and
  returns packed events whose payload points into that same buffer, so a chunk is
  copied exactly once, into the destination socket's write.
* ``Pump`` is the ``BufferedProtocol`` of a visitor (edge) or upstream (agent) socket.
  All pumps of the process read into one shared buffer (and all links into another):
  uvloop calls ``get_buffer`` and ``buffer_updated`` back to back, and ``Session.send``
  copies before returning, so no view outlives the call and an idle stream or session
  costs no buffer of its own.
* ``BufferChannel`` collects a stream's bytes for Python (the control stream, and the
  agent's wait for a StreamHeader before it dials the upstream).

Outgoing frames accumulate in the session and are flushed once per event-loop
iteration (one TLS record batch, one ``write``), never once per frame.

Backpressure, both ways:
  destination socket full  -> ``set_read_paused``: the session withholds window credit,
                              the peer stops once the window is spent;
  stream backlog too large -> ``pause_reading`` on the source socket until WRITABLE;
  agent link full          -> frames wait in the session (its scheduler interleaves
                              streams); each pump still stops at its own high water.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.buffer cimport PyBUF_READ
from libc.stdint cimport uint32_t
from libc.errno cimport errno, EINTR
from libc.string cimport memcpy, memset

import socket

import relay_native

from relay._clock cimport monotonic, wallclock
from relay._series cimport MAX_ENDPOINT_SERIES as _MAX_SERIES, N_ENDPOINT_SLOTS

cdef extern from "sys/uio.h":
    struct iovec:
        void* iov_base
        size_t iov_len

cdef extern from "sys/socket.h":
    struct msghdr:
        void* msg_name
        int msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    ssize_t send(int fd, const void* buf, size_t length, int flags) nogil
    ssize_t sendmsg(int fd, const msghdr* msg, int flags) nogil
    int MSG_DONTWAIT
    int MSG_NOSIGNAL

cdef enum:
    # Chunks of one stream written with one sendmsg (a 256 KiB read holds at most 16
    # frames); a longer run sends the rest through the transport.
    RUN_IOV_MAX = 64

cdef extern from "malloc.h":
    int mallopt(int param, int value)
    int M_MMAP_THRESHOLD
    int M_TRIM_THRESHOLD

# Flushes and coalesced deliveries allocate buffers of a few hundred KiB, many times a
# second. Above glibc's mmap threshold each one is a fresh mmap: page faults and zeroing
# on every allocation (measured: ~15% of the edge's CPU in bulk transfers). Keep them on
# the heap, where freed chunks are reused.
mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024)
mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024)

cdef enum:
    EV_OPENED = 1
    EV_DATA = 2
    EV_FIN = 3
    EV_RESET = 4
    EV_WRITABLE = 5
    EV_CLOSED = 6
    EV_GOAWAY = 7
    EV_PONG = 8
    EV_ACKED = 9

# The enum above must agree with the native module; fail at import, not at run time.
assert (relay_native.EVENT_OPENED, relay_native.EVENT_DATA, relay_native.EVENT_FIN,
        relay_native.EVENT_RESET, relay_native.EVENT_WRITABLE, relay_native.EVENT_CLOSED,
        relay_native.EVENT_GOAWAY, relay_native.EVENT_PONG, relay_native.EVENT_ACKED) == (
        1, 2, 3, 4, 5, 6, 7, 8, 9), "relay_native event numbering changed"

cdef object YamuxError = relay_native.YamuxError

#: Write-buffer limits of the agent link transport, and the most one flush takes from the
#: session. Frames wait in the session, where its scheduler interleaves streams round
#: robin, rather than in the transport's FIFO, where a bulk stream's megabytes would sit
#: ahead of a small response (head-of-line latency).
LINK_WRITE_HIGH = 256 * 1024
LINK_WRITE_LOW = 64 * 1024
#: While writing is paused only control frames reach the transport; past this much unsent
#: the peer is not reading our answers, and the link stops reading until it does.
LINK_UNREAD_LIMIT = 2 * LINK_WRITE_HIGH
#: How long a closing link may take to hand its last frames to a peer that reads slowly.
LINK_CLOSE_LINGER = 5.0
#: The same after a fatal session error (protocol violation, keepalive timeout).
LINK_FAIL_LINGER = 0.25
#: TCP_NOTSENT_LOWAT on the link socket: the kernel keeps at most this much unsent data
#: queued, for the same reason (its send buffer otherwise grows to megabytes).
LINK_NOTSENT_LOWAT = 128 * 1024
LINK_READ_BUFFER = 256 * 1024
PUMP_READ_BUFFER = 256 * 1024
#: A lone bulk stream's reads are sized to what the session frames at once, unless that is
#: less than this (the session's DIRECT_FRAME_MIN: smaller sends take the backlog anyway).
PUMP_MIN_READ = 8 * 1024
#: A BufferChannel pauses the stream's credit once this much is waiting for Python.
CHANNEL_HIGH_WATER = 256 * 1024

# One read buffer for every link and one for every pump of this process. uvloop calls
# get_buffer, reads, and calls buffer_updated back to back for one connection, and every
# chunk is copied out (into a socket write, a BufferChannel, or the session's frames)
# before buffer_updated returns — so nothing outlives the call, and an idle session or
# stream owns no buffer at all (two per link cost 512 KiB of RSS per idle session).
cdef bytearray _LINK_BUFFER = bytearray(LINK_READ_BUFFER)
cdef object _LINK_VIEW = memoryview(_LINK_BUFFER)
cdef bytearray _PUMP_BUFFER = bytearray(PUMP_READ_BUFFER)
cdef object _PUMP_VIEW = memoryview(_PUMP_BUFFER)
cdef Py_ssize_t _PUMP_READ_BUFFER = PUMP_READ_BUFFER
cdef Py_ssize_t _PUMP_MIN_READ = PUMP_MIN_READ

# --- traffic counters --------------------------------------------------------------------
# Counted here, in C, as bytes move; relay/metrics.py reads them when Prometheus scrapes
# (``traffic()``): no Python runs per chunk for metrics. Kinds are the endpoint kinds of
# relay.protocol.StreamProtocol's order; "from socket" is what a pump read from its socket
# (the visitor at the edge, the upstream at the agent), "to socket" what it wrote there.
# "cluster": at the node a visitor was forwarded to, the inter-node stream's side of its
# socket pair (relay/cluster/nodelink.py); the visitor itself is counted by its kind.
KINDS = ("tcp", "http", "https", "tls", "cluster")
cdef enum:
    N_KINDS = 5
    KIND_CLUSTER = 4
    N_OPEN_BUCKETS = 12
cdef unsigned long long _from_socket[N_KINDS]
cdef unsigned long long _to_socket[N_KINDS]
cdef unsigned long long _opened[N_KINDS]
cdef long long _live[N_KINDS]
#: Stream-open latency (a visitor accepted → its first byte back from the upstream), upper
#: bounds in seconds; one more bucket (+Inf) counts the rest.
OPEN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
cdef double _open_bounds[N_OPEN_BUCKETS]
cdef unsigned long long _open_counts[N_OPEN_BUCKETS + 1]
cdef double _open_sum = 0.0
for _i, _bound in enumerate(OPEN_BUCKETS):
    _open_bounds[_i] = _bound
memset(_from_socket, 0, sizeof(_from_socket))
memset(_to_socket, 0, sizeof(_to_socket))
memset(_opened, 0, sizeof(_opened))
memset(_live, 0, sizeof(_live))
memset(_open_counts, 0, sizeof(_open_counts))


cdef inline void _observe_open(double seconds):
    global _open_sum
    cdef int i = 0
    while i < N_OPEN_BUCKETS and seconds > _open_bounds[i]:
        i += 1
    _open_counts[i] += 1
    _open_sum += seconds


# Per endpoint, only for endpoints the edge gave a series (relay/edge/endpoint_series.py):
# the same counts, indexed by the pump's slot (relay/_series.pxd).
cdef unsigned long long _ep_from[N_ENDPOINT_SLOTS]
cdef unsigned long long _ep_to[N_ENDPOINT_SLOTS]
cdef unsigned long long _ep_opened[N_ENDPOINT_SLOTS]
cdef long long _ep_live[N_ENDPOINT_SLOTS]
memset(_ep_from, 0, sizeof(_ep_from))
memset(_ep_to, 0, sizeof(_ep_to))
memset(_ep_opened, 0, sizeof(_ep_opened))
memset(_ep_live, 0, sizeof(_ep_live))
#: The most endpoints that can have series of their own (slots 1..this).
MAX_ENDPOINT_SERIES = _MAX_SERIES


cdef bint _logging = False
cdef list _closed_log = []
#: Connection records kept between two drains of the access log, at most.
cdef Py_ssize_t MAX_LOG_RECORDS = 100_000
cdef unsigned long long _log_dropped = 0


def set_logging(bint on):
    """Keep a record of each visitor connection that ends (``take_closed()``)."""
    global _logging
    _logging = on


def take_closed():
    """Records of visitor connections that ended since the last call:
    ``(start wall time, seconds, kind, endpoint, visitor, close reason, bytes from the
    visitor, bytes to the visitor)``; and how many were dropped since start because the
    log could not keep up."""
    global _closed_log
    taken, _closed_log = _closed_log, []
    return taken, _log_dropped


def endpoint_traffic(int count):
    """The same counters for endpoint slots 1..``count``: lists whose index i is slot
    i + 1 (bytes from and to the visitor's socket, connections opened and live)."""
    if not 0 <= count <= _MAX_SERIES:
        raise ValueError(f"count must be 0..{MAX_ENDPOINT_SERIES}, not {count}")
    return {
        "from_socket": [_ep_from[s] for s in range(1, count + 1)],
        "to_socket": [_ep_to[s] for s in range(1, count + 1)],
        "opened": [_ep_opened[s] for s in range(1, count + 1)],
        "live": [_ep_live[s] for s in range(1, count + 1)],
    }


def traffic():
    """The byte path's counters since the process started, for the metrics collector:
    per kind (``KINDS``) bytes read from and written to pump sockets, connections opened
    and live; the stream-open latency histogram (bucket counts, not cumulative; the last
    is +Inf) and its sum."""
    return {
        "from_socket": [_from_socket[k] for k in range(N_KINDS)],
        "to_socket": [_to_socket[k] for k in range(N_KINDS)],
        "opened": [_opened[k] for k in range(N_KINDS)],
        "live": [_live[k] for k in range(N_KINDS)],
        "open_buckets": [_open_counts[b] for b in range(N_OPEN_BUCKETS + 1)],
        "open_sum": _open_sum,
    }


cdef bytes _join(const char* base, const uint32_t* ev, Py_ssize_t first, Py_ssize_t n,
                  Py_ssize_t skip):
    """The payload of DATA events ``first .. first + n`` joined, less its first ``skip`` bytes."""
    cdef Py_ssize_t j, total = 0, pos = 0, off, length
    cdef bytes joined
    cdef char* dst
    for j in range(first, first + n):
        total += ev[4 * j + 3]
    joined = PyBytes_FromStringAndSize(NULL, total - skip)
    dst = PyBytes_AS_STRING(joined)
    for j in range(first, first + n):
        off = ev[4 * j + 2]
        length = ev[4 * j + 3]
        if skip >= length:
            skip -= length
            continue
        memcpy(dst + pos, base + off + skip, length - skip)
        pos += length - skip
        skip = 0
    return joined


cdef class Channel:
    """Where a stream's incoming payload goes."""


    cdef void deliver(self, const char* data, Py_ssize_t length):
        pass

    cdef void deliver_bytes(self, bytes data):
        self.deliver(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))

    cdef void deliver_run(self, const char* base, const uint32_t* ev, Py_ssize_t first,
                          Py_ssize_t n):
        """``n`` consecutive DATA events of this stream (chunks of ``base``) as one piece."""
        self.deliver_bytes(_join(base, ev, first, n, 0))

    cdef void remote_fin(self):
        pass

    cdef void remote_reset(self):
        pass

    cdef void writable(self):
        pass

    cdef void stream_closed(self):
        pass

    cdef void link_lost(self):
        self.remote_reset()


cdef class Link:
    """Protocol of the agent link: feeds the session, dispatches events, flushes frames."""


    def __init__(self, session, handler, loop, Py_ssize_t pending_high_water=1024 * 1024):
        """``handler`` is the Python side of the session (edge or agent). It gets:
        ``link_made(link)``, ``stream_opened(stream_id)``, ``goaway(code)``,
        ``pong(rtt_us)``, ``link_lost(exc)``. ``pending_high_water`` must equal the
        session's: a pump stops reading when its stream's backlog reaches it."""
        self.session = session
        self.pending_high_water = pending_high_water
        self.handler = handler
        self.loop = loop
        self.channels = {}
        self._flush_scheduled = False
        self.write_paused = False
        self.closed = False
        self._flush_cb = self._flush
        self._tick_handle = None
        self.close_exc = None
        self._flush_waiters = []
        self.unread_paused = False
        self._close_deadline = None

    # --- asyncio protocol -----------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(LINK_WRITE_HIGH, LINK_WRITE_LOW)
        sock = transport.get_extra_info("socket")
        if sock is not None and hasattr(socket, "TCP_NOTSENT_LOWAT"):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, LINK_NOTSENT_LOWAT)
            except OSError:
                pass  # not a TCP socket (e.g. a Unix socket): nothing to tune
        self._schedule_tick(0.0)
        self.handler.link_made(self)
        self.schedule_flush()

    def get_buffer(self, Py_ssize_t sizehint):
        return _LINK_VIEW

    def buffer_updated(self, Py_ssize_t nbytes):
        cdef bytes events
        if self.closed:
            return
        try:
            events = self.session.receive(_LINK_VIEW[:nbytes])
        except YamuxError as exc:
            self.fail(exc)
            return
        self._dispatch(events, PyByteArray_AS_STRING(_LINK_BUFFER))
        self.schedule_flush()

    cdef void _dispatch(self, bytes events, const char* base):
        """Hand packed events to channels and the handler. ``base`` is the buffer DATA
        events point into (events queued by calls carry no data)."""
        cdef const uint32_t* ev = <const uint32_t*>PyBytes_AS_STRING(events)
        cdef Py_ssize_t i, count = PyBytes_GET_SIZE(events) // 16
        cdef uint32_t kind, sid, a
        cdef Py_ssize_t run_first = 0, run_count = 0
        cdef object channel
        for i in range(count):
            kind = ev[4 * i]
            sid = ev[4 * i + 1]
            if kind == EV_DATA:
                # Consecutive chunks of one stream (one per 16 KiB frame) become one
                # write: uvloop writes at once, so a write per frame is a syscall per frame.
                if run_count and ev[4 * run_first + 1] == sid:
                    run_count += 1
                    continue
                if run_count:
                    self._deliver(ev, run_first, run_count, base)
                run_first = i
                run_count = 1
                continue
            if run_count:
                self._deliver(ev, run_first, run_count, base)
                run_count = 0
            a = ev[4 * i + 2]
            if kind == EV_WRITABLE:
                channel = self.channels.get(sid)
                if channel is not None:
                    (<Channel>channel).writable()
            elif kind == EV_FIN:
                channel = self.channels.get(sid)
                if channel is not None:
                    (<Channel>channel).remote_fin()
            elif kind == EV_RESET:
                channel = self.channels.pop(sid, None)
                if channel is not None:
                    (<Channel>channel).remote_reset()
            elif kind == EV_CLOSED:
                channel = self.channels.pop(sid, None)
                if channel is not None:
                    (<Channel>channel).stream_closed()
            elif kind == EV_OPENED:
                self.handler.stream_opened(sid)
            elif kind == EV_GOAWAY:
                self.handler.goaway(a)
            elif kind == EV_PONG:
                self.handler.pong(a)
        if run_count:
            self._deliver(ev, run_first, run_count, base)

    cdef void _deliver(self, const uint32_t* ev, Py_ssize_t first, Py_ssize_t n,
                              const char* base):
        """Hand ``n`` consecutive DATA events of one stream to its channel as one piece."""
        cdef object channel = self.channels.get(ev[4 * first + 1])
        if channel is None:
            return
        if n == 1:
            (<Channel>channel).deliver(base + ev[4 * first + 2], ev[4 * first + 3])
        else:
            (<Channel>channel).deliver_run(base, ev, first, n)

    def eof_received(self):
        return False

    def pause_writing(self):
        # The link is full: data now waits in the session (see _flush). Pumps keep
        # reading until their own stream's backlog passes pending_high_water, which
        # bounds the session's memory per stream without pausing every pump of the
        # link (two epoll_ctl calls per pump) each time the TLS buffer fills.
        self.write_paused = True

    def resume_writing(self):
        self.write_paused = False
        if self.unread_paused:
            # The peer reads again: so do we.
            self.unread_paused = False
            self.transport.resume_reading()
        self.schedule_flush()  # frames waiting in the session may go now

    def connection_lost(self, exc):
        self.closed = True
        if self.close_exc is None:
            self.close_exc = exc
        if self._close_deadline is not None:
            self._close_deadline.cancel()
            self._close_deadline = None
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        channels = list(self.channels.values())
        self.channels.clear()
        for channel in channels:
            (<Channel>channel).link_lost()
        self.handler.link_lost(self.close_exc)

    # --- flushing and timers ----------------------------------------------------------

    cpdef schedule_flush(self):
        if not self._flush_scheduled and not self.closed:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_cb)

    def _flush(self):
        self._flush_scheduled = False
        if self.closed or self.transport is None:
            return
        self._write_frames()
        if self.session.has_events:
            # A call completed something (close_stream after the peer's FIN, a FIN framed
            # at take time): its EVENT_CLOSED must reach the pump now, not with the link's
            # next input, which may be a keepalive ping 15 s away — the visitor's socket
            # would be held that long.
            self._dispatch(self.session.take_events(), NULL)

    cdef void _write_frames(self):
        cdef Py_ssize_t budget, control, queued
        session = self.session
        if self.write_paused:
            # Only control frames (window updates, pings, go-away) while the link is
            # full: data waits in the session until resume_writing.
            control = session.outgoing_len
            if control:
                self.transport.write(memoryview(session.take_outgoing(control)))
            if (not self.unread_paused
                    and self.transport.get_write_buffer_size() > LINK_UNREAD_LIMIT):
                # Only answers the peer provoked (RSTs, ping answers) grow the buffer past
                # the write limit, and the peer does not read them: stop reading its
                # provocations until it does (resume_writing). A peer that never reads
                # again is ended by the keepalive timeout, its buffer bounded meanwhile.
                self.unread_paused = True
                self.transport.pause_reading()
            return
        # One byte past the limit: a buffer filled to exactly LINK_WRITE_HIGH does not
        # pause the transport (it pauses above it), so no resume_writing would ever
        # schedule the next flush, and a link with nothing more to read (its peer
        # withholding credit, then granting it) stalled until its next input.
        budget = LINK_WRITE_HIGH + 1 - self.transport.get_write_buffer_size()
        if budget <= 0:
            return
        queued = session.outgoing_len
        if budget < queued <= 2 * budget:
            # Frames already queued (a lone bulk stream's, framed by send) a little over
            # the budget go out whole: a split copies what it takes and moves the rest
            # (9% of the edge's CPU in an upload, measured), and bounds nothing a later
            # frame would gain from, since the rest stays queued ahead of it anyway.
            budget = queued
        data = session.take_outgoing(budget)  # owns the session's buffer: no copy
        if len(data):
            self.transport.write(memoryview(data))
        if self._flush_waiters:
            waiters, self._flush_waiters = self._flush_waiters, []
            for pump in waiters:
                (<Pump>pump)._resume_after_flush()
        if (session.has_sendable or session.outgoing_len) and not self.write_paused:
            self.schedule_flush()  # more fits next iteration (the kernel took this one)

    cdef void _flush_all(self):
        """Everything the session holds, without a budget: the link is closing."""
        if self.transport is not None and not self.transport.is_closing():
            data = self.session.take_outgoing()
            if len(data):
                self.transport.write(memoryview(data))

    cdef _schedule_tick(self, double delay):
        self._tick_handle = self.loop.call_later(delay, self._tick)

    def _tick(self):
        self._tick_handle = None
        if self.closed:
            return
        try:
            next_ms = self.session.tick()
        except YamuxError as exc:
            self.fail(exc)
            return
        self.schedule_flush()
        self._schedule_tick(max(next_ms, 10) / 1000.0)

    # --- used by Python -----------------------------------------------------------------

    def fail(self, exc):
        """End the link after a fatal session error: the GoAway the session queued goes
        out first, then the transport closes."""
        if self.closed:
            return
        self.close_exc = exc
        self._flush_all()
        self.closed = True
        if self.transport is not None:
            # The GoAway is a courtesy: a peer that broke the protocol (or stopped
            # answering pings) gets a moment to read it, not the seconds a drain gets.
            self._close_transport(LINK_FAIL_LINGER)

    def close(self, double linger=LINK_CLOSE_LINGER):
        """Flush what is queued (e.g. a GoAway) and close the transport within ``linger``
        seconds."""
        if self.transport is None or self.transport.is_closing():
            return
        self._flush_all()
        self._close_transport(linger)

    cdef void _close_transport(self, double linger):
        # A closing transport waits for its buffer to drain: forever, if the peer never
        # reads. Past ``linger`` it is aborted (connection_lost cancels the deadline).
        self.transport.close()
        if self._close_deadline is None:
            self._close_deadline = self.loop.call_later(linger, self.abort)

    def abort(self):
        if self.transport is not None:
            self.transport.abort()

    def open_buffer_channel(self, int stream_id):
        """Register a BufferChannel for a stream (the control stream, or a new inbound
        stream whose header Python must read)."""
        channel = BufferChannel(self, stream_id)
        self.channels[stream_id] = channel
        return channel

    def send(self, int stream_id, data):
        backlog = self.session.send(stream_id, data)
        self.schedule_flush()
        return backlog

    def pump_count(self):
        return sum(1 for c in self.channels.values() if isinstance(c, Pump))


cdef class BufferChannel(Channel):
    """Collects a stream's payload for Python code (control messages, stream headers)."""


    def __init__(self, Link link, int stream_id):
        self.link = link
        self.stream_id = stream_id
        self._data = bytearray()
        self.fin = False
        self.reset = False
        self.closed = False
        self._waiter = None
        self._paused = False

    cdef void deliver(self, const char* data, Py_ssize_t length):
        self._data += PyMemoryView_FromMemory(<char*>data, length, PyBUF_READ)
        if not self._paused and PyByteArray_GET_SIZE(self._data) > CHANNEL_HIGH_WATER:
            self._paused = True
            self.link.session.set_read_paused(self.stream_id, True)
        self._wake()

    cdef void remote_fin(self):
        self.fin = True
        self._wake()

    cdef void remote_reset(self):
        self.reset = True
        self._wake()

    cdef void stream_closed(self):
        self.closed = True
        self.fin = True
        self._wake()

    cdef void _wake(self):
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def buffered(self):
        return PyByteArray_GET_SIZE(self._data)

    def peek(self):
        """The buffered bytes, left in place."""
        return bytes(self._data)

    def take(self, Py_ssize_t n=-1):
        """Take up to ``n`` buffered bytes (all when n < 0)."""
        cdef Py_ssize_t size = PyByteArray_GET_SIZE(self._data)
        if n < 0 or n > size:
            n = size
        out = bytes(self._data[:n])
        del self._data[:n]
        if self._paused and PyByteArray_GET_SIZE(self._data) <= CHANNEL_HIGH_WATER // 2:
            self._paused = False
            if not self.link.closed and self.stream_id in self.link.channels:
                self.link.session.set_read_paused(self.stream_id, False)
                self.link.schedule_flush()
        return out

    def hold(self):
        """Stop returning window credit (the agent does this while it dials upstream)."""
        if not self._paused:
            self._paused = True
            self.link.session.set_read_paused(self.stream_id, True)

    def wait(self):
        """A future that completes when data, FIN or RST arrives (or the link dies)."""
        if self._waiter is None or self._waiter.done():
            self._waiter = self.link.loop.create_future()
        return self._waiter


cdef class Joint(Channel):
    """One end of two streams on two links joined to each other: what arrives on this
    end's stream is sent on the other end's, FIN and RST included. Between edge nodes
    (relay/cluster/nodelink.py) a visitor's stream from another node is joined to a new
    stream to its agent: no socket between them, and no Python per chunk.

    Backpressure as a pump's: when the other stream's backlog passes the other link's
    ``pending_high_water``, this stream's credit is withheld (``set_read_paused``) until
    the other stream is writable again. ``counted``: this end's bytes count as kind
    "cluster" (the end on the link between nodes)."""


    def __init__(self, Link link, int stream_id, bint counted=False):
        self.link = link
        self.stream_id = stream_id
        self.other = None
        self.held = False
        self.done = False
        self.counted = counted

    @staticmethod
    def join(Link a, int a_stream, Link b, int b_stream, bint count_a=True):
        """Join stream ``a_stream`` of ``a`` to ``b_stream`` of ``b`` (both open, neither
        with a channel yet, or with one this replaces); returns the two ends."""
        cdef Joint ja = Joint(a, a_stream, count_a)
        cdef Joint jb = Joint(b, b_stream, not count_a)
        ja.other = jb
        jb.other = ja
        a.channels[a_stream] = ja
        b.channels[b_stream] = jb
        return ja, jb

    cdef void deliver(self, const char* data, Py_ssize_t length):
        self._forward(PyMemoryView_FromMemory(<char*>data, length, PyBUF_READ), length)

    cdef void deliver_bytes(self, bytes data):
        self._forward(data, PyBytes_GET_SIZE(data))

    cdef void deliver_run(self, const char* base, const uint32_t* ev, Py_ssize_t first,
                          Py_ssize_t n):
        cdef Py_ssize_t j
        for j in range(first, first + n):
            if self.done:
                return
            self.deliver(base + ev[4 * j + 2], ev[4 * j + 3])

    cdef void _forward(self, object data, Py_ssize_t length):
        cdef Joint other = self.other
        if self.done or other is None or other.done or other.link.closed:
            return
        if self.counted:
            _from_socket[KIND_CLUSTER] += length
        elif other.counted:
            _to_socket[KIND_CLUSTER] += length
        try:
            backlog = other.link.session.send(other.stream_id, data)
        except YamuxError:
            self._reset_both()
            return
        other.link.schedule_flush()
        if backlog > other.link.pending_high_water and not self.held:
            self.held = True
            self.link.session.set_read_paused(self.stream_id, True)

    cdef void writable(self):
        # This stream drained: the other end may take in again what it forwards here.
        cdef Joint other = self.other
        if other is None or not other.held or other.done or other.link.closed:
            return
        other.held = False
        other.link.session.set_read_paused(other.stream_id, False)
        other.link.schedule_flush()

    cdef void remote_fin(self):
        cdef Joint other = self.other
        if other is None or other.done or other.link.closed:
            return
        try:
            other.link.session.close_stream(other.stream_id)
        except YamuxError:
            pass
        other.link.schedule_flush()

    cdef void remote_reset(self):
        self.done = True  # the peer reset it: nothing to send back
        self._reset_other()

    cdef void stream_closed(self):
        self.done = True  # both directions ended cleanly; the other end hears it itself

    cdef void _reset_both(self):
        self._reset_end()
        self._reset_other()

    cdef void _reset_other(self):
        if self.other is not None:
            self.other._reset_end()

    cdef void _reset_end(self):
        """Reset this end's stream (unless it ended) and stop taking its events."""
        cdef Link link = self.link
        if self.done:
            return
        self.done = True
        if link.closed:
            return
        if link.channels.get(self.stream_id) is self:
            del link.channels[self.stream_id]
        try:
            link.session.reset_stream(self.stream_id)
        except YamuxError:
            pass
        link.schedule_flush()


cdef class Pump(Channel):
    """Protocol of a visitor or upstream socket, joined to one stream of a Link.

    ``Pump(link, header_factory=f)`` opens a new stream when its socket connects (edge
    side) and sends ``f(transport)`` (the StreamHeader) first; ``Pump(link, stream_id=n)``
    adopts a stream that already exists (agent side): bytes that its BufferChannel
    collected while the upstream was being dialled are written first, after
    ``preamble`` (e.g. a PROXY protocol header).
    """


    def __init__(self, Link link, int stream_id=-1, header_factory=None, bytes preamble=b"",
                 int kind=0):
        self.link = link
        self.stream_id = stream_id
        self._header_factory = header_factory
        self._preamble = preamble
        self.kind = kind if 0 <= kind < N_KINDS else 0
        self._backlog_paused = False
        self._flush_wait = False
        self._reading_paused = False
        self._local_eof = False
        self.remote_eof = False
        self.finished = False
        self._fd = -1
        self.reroute = None

    # --- asyncio protocol -----------------------------------------------------------

    def connection_made(self, transport):
        cdef Link link = self.link
        cdef bint opens_stream = self.stream_id < 0
        self.transport = transport
        sock = transport.get_extra_info("socket")
        # Only a plain socket: a TLS transport reports its raw socket too, and bytes
        # sent there would bypass the encryption.
        if (sock is not None and transport.get_extra_info("sslcontext") is None
                and transport.get_extra_info("ssl_object") is None):
            self._fd = sock.fileno()  # deliveries may send(2) directly
        if opens_stream and self.reroute is not None and (
                link.closed or link.session.remote_went_away or link.session.local_went_away):
            # Routed a loop turn ago (the protocol is made before the socket connects) to
            # a session that went away since: its agent's GoAway, a restart, its link
            # lost. Routed once more instead (another link or pool member, a handover or
            # a refusal), rather than reset.
            other = self.reroute()
            self.reroute = None
            self.finished = True
            self.transport = None
            if other is None:
                transport.abort()
            else:
                transport.set_protocol(other)
                other.connection_made(transport)
            return
        if link.closed:
            transport.abort()
            self.finished = True
            return
        if self.stream_id < 0:
            try:
                header = self._header_factory(transport)
                self.stream_id = link.session.open_stream()
            except YamuxError:
                transport.abort()
                self.finished = True
                return
            self._header_factory = None
            link.session.send(self.stream_id, header)
        else:
            previous = link.channels.get(self.stream_id)
            if previous is None:
                # The stream ended while the upstream was being dialled.
                transport.abort()
                self.finished = True
                return
            if self._preamble:
                transport.write(self._preamble)  # e.g. a PROXY protocol header
            if isinstance(previous, BufferChannel):
                early = (<BufferChannel>previous).take(-1)
                if early:
                    self._count_to_socket(len(early))
                    transport.write(early)
                if (<BufferChannel>previous).reset:
                    transport.abort()
                    self.finished = True
                    return
                if (<BufferChannel>previous).fin:
                    self.remote_eof = True
                    if transport.can_write_eof():
                        transport.write_eof()
            link.session.set_read_paused(self.stream_id, False)
        link.channels[self.stream_id] = self
        link.schedule_flush()
        # A visitor's pump (it opened the stream) times the stream-open latency.
        self._count_open(opens_stream)
        if self.log_endpoint is not None and self.log_visitor is None:
            # Set beforehand for a visitor another node forwarded (relay/edge/cluster.py).
            self.log_visitor = transport.get_extra_info("peername")

    def get_buffer(self, Py_ssize_t sizehint):
        cdef Link link = self.link
        if self.stream_id >= 0 and not link.closed:
            # A lone bulk stream reads no more than the session frames at once (one copy):
            # the rest waits in the socket, not in the stream's backlog, where it would
            # cost a second copy, and every byte after it too until the backlog drained.
            room = link.session.direct_room(self.stream_id)
            if room is not None and _PUMP_MIN_READ <= room < _PUMP_READ_BUFFER:
                return _PUMP_VIEW[:room]
        return _PUMP_VIEW

    def buffer_updated(self, Py_ssize_t nbytes):
        cdef Link link = self.link
        if self.finished or link.closed:
            return
        self._count_from_socket(nbytes)
        self._send(_PUMP_VIEW[:nbytes])
        if self.finished or link.closed or self._flush_wait:
            return
        if self._direct_room_spent():
            # Stop reading until the link's next flush. uvloop would otherwise read again
            # at once (libuv reads up to 32 times while reads fill the buffer) and queue it
            # all in the backlog: two copies per byte for the rest of an upload (20% of the
            # edge's CPU in memmove, measured). Paused and resumed before the next poll,
            # the socket's epoll registration does not change.
            self._flush_wait = True
            link._flush_waiters.append(self)
            self._update_reading()

    cdef void _send(self, object data):
        """Queue ``data`` on the stream; stop reading the socket while the backlog is high."""
        cdef Link link = self.link
        try:
            backlog = link.session.send(self.stream_id, data)
        except YamuxError:
            self._abort()
            return
        link.schedule_flush()
        if backlog > link.pending_high_water and not self._backlog_paused:
            self._backlog_paused = True
            self._update_reading()

    def eof_received(self):
        cdef Link link = self.link
        self._local_eof = True
        if not self.finished and not link.closed:
            try:
                link.session.close_stream(self.stream_id)
            except YamuxError:
                pass
            link.schedule_flush()
        # Keep the socket open for writing: the other direction may still be busy.
        return True

    def pause_writing(self):
        if not self.finished and not self.link.closed:
            self.link.session.set_read_paused(self.stream_id, True)

    def resume_writing(self):
        if not self.finished and not self.link.closed:
            self.link.session.set_read_paused(self.stream_id, False)
            self.link.schedule_flush()

    def connection_lost(self, exc):
        if exc is not None:
            self._was_reset = True
        self._count_close()
        # The socket died before the stream ended cleanly: tell the peer at once.
        self._reset_stream()
        self.finished = True

    # --- events from the link ---------------------------------------------------------

    cdef void deliver(self, const char* data, Py_ssize_t length):
        cdef Py_ssize_t sent
        if self.transport is not None and not self.finished:
            self._count_to_socket(length)
            sent = self._send_direct(data, length)
            if sent < length:
                self.transport.write(PyBytes_FromStringAndSize(data + sent, length - sent))

    cdef void deliver_run(self, const char* base, const uint32_t* ev, Py_ssize_t first,
                          Py_ssize_t n):
        cdef iovec iov[RUN_IOV_MAX]
        cdef msghdr msg
        cdef Py_ssize_t j, count, total = 0, run_bytes = 0
        cdef ssize_t sent = 0
        if self.transport is None or self.finished:
            return
        for j in range(first, first + n):
            run_bytes += ev[4 * j + 3]
        self._count_to_socket(run_bytes)
        count = n if n < RUN_IOV_MAX else RUN_IOV_MAX
        if self._direct_ok():
            for j in range(count):
                iov[j].iov_base = <void*>(base + ev[4 * (first + j) + 2])
                iov[j].iov_len = ev[4 * (first + j) + 3]
                total += ev[4 * (first + j) + 3]
            memset(&msg, 0, sizeof(msg))
            msg.msg_iov = iov
            msg.msg_iovlen = count
            while True:
                sent = sendmsg(self._fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL)
                if sent >= 0 or errno != EINTR:
                    break
            if sent < 0:
                sent = 0  # EAGAIN, or an error the transport's own write will report
            if sent == total and count == n:
                return
        # What the socket did not take (and chunks past RUN_IOV_MAX) goes through the
        # transport, which buffers it and raises pause_writing when it fills.
        self.transport.write(_join(base, ev, first, n, sent))

    cdef bint _direct_ok(self):
        return (self._fd >= 0 and self.transport.get_write_buffer_size() == 0
                and not self.transport.is_closing())

    cdef Py_ssize_t _send_direct(self, const char* data, Py_ssize_t length):
        """send(2) straight from the link's buffer while uvloop has nothing queued for
        this socket (so the order of bytes holds): no copy into a bytes object. How much
        the socket took; the caller hands the rest to the transport."""
        cdef ssize_t n
        if not self._direct_ok():
            return 0
        while True:
            n = send(self._fd, data, <size_t>length, MSG_DONTWAIT | MSG_NOSIGNAL)
            if n >= 0:
                return n
            if errno != EINTR:
                return 0  # EAGAIN, or an error the transport's own write will report

    cdef void deliver_bytes(self, bytes data):
        if self.transport is not None and not self.finished:
            self._count_to_socket(PyBytes_GET_SIZE(data))
            self.transport.write(data)

    cdef void remote_fin(self):
        self.remote_eof = True
        if self.transport is None or self.finished:
            return
        if self._local_eof:
            return  # both directions done; EV_CLOSED follows and closes the socket
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()

    cdef void remote_reset(self):
        self._was_reset = True
        self._abort()

    cdef void writable(self):
        if self._backlog_paused:
            self._backlog_paused = False
            self._update_reading()

    cdef void stream_closed(self):
        self.finished = True
        if self.transport is not None:
            self.transport.close()  # flushes what is buffered, then closes

    cdef void _resume_after_flush(self):
        """The link flushed: read again if the session has room for a direct frame now
        (or no direct path at all); otherwise wait for the next flush."""
        cdef Link link = self.link
        if not self._flush_wait:
            return
        if self.finished or link.closed:
            self._flush_wait = False
            return
        if self._direct_room_spent():
            link._flush_waiters.append(self)
            return
        self._flush_wait = False
        self._update_reading()

    cdef bint _direct_room_spent(self):
        """The stream is on the one-copy path but the session cannot frame a worthwhile
        read at once (outgoing buffer full, or send window spent)."""
        room = self.link.session.direct_room(self.stream_id)
        return room is not None and room < _PUMP_MIN_READ

    cdef bint _wants_pause(self):
        """Whether the socket should not be read now (subclasses add their reasons)."""
        return self._backlog_paused or self._flush_wait

    cdef void _update_reading(self):
        cdef bint want_paused = self._wants_pause()
        if self.transport is None or self.finished or want_paused == self._reading_paused:
            return
        self._reading_paused = want_paused
        if want_paused:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    cdef void _abort(self):
        """Cut the socket and reset the stream: the other side must hear of it at once
        (an aborted transport reports connection_lost with ``finished`` already set, so
        that path cannot do it), or the agent holds the upstream connection forever."""
        self._reset_stream()
        self._was_reset = True
        self.finished = True
        if self.transport is not None:
            self.transport.abort()

    cdef void _reset_stream(self):
        """Reset the stream (unless this pump is done with it) and stop taking its events."""
        cdef Link link = self.link
        if self.finished or self.stream_id < 0 or link is None or link.closed:
            return
        if link.channels.get(self.stream_id) is self:
            del link.channels[self.stream_id]
        try:
            link.session.reset_stream(self.stream_id)  # a no-op if the peer reset it
        except YamuxError:
            pass
        link.schedule_flush()

    # --- traffic counters (see traffic()) -------------------------------------------------

    @property
    def metric_slot(self):
        """The endpoint series this pump's connection counts in (0: none). Set before the
        connection is made; an HTTP visitor is given its slot when its first request is
        routed (``attribute_to``)."""
        return self._slot

    @metric_slot.setter
    def metric_slot(self, int slot):
        if not 0 <= slot <= _MAX_SERIES:
            raise ValueError(f"metric_slot must be 0..{MAX_ENDPOINT_SERIES}, not {slot}")
        if self._counted:
            raise ValueError("metric_slot is set before the connection is made")
        self._slot = slot

    cdef void attribute_to(self, int slot):
        """Count this connection under endpoint ``slot`` from now on, with what it has
        carried so far (an HTTP visitor's first request head was read before its endpoint
        was known)."""
        if self._slot or slot <= 0 or slot > _MAX_SERIES:
            return
        self._slot = slot
        _ep_from[slot] += self._bytes_from
        _ep_to[slot] += self._bytes_to
        if self._counted:
            _ep_opened[slot] += 1
            _ep_live[slot] += 1

    cdef void _count_open(self, bint timed):
        if self._counted:
            return
        self._counted = True
        _opened[self.kind] += 1
        _live[self.kind] += 1
        if self._slot:
            _ep_opened[self._slot] += 1
            _ep_live[self._slot] += 1
        self._started = monotonic()
        if timed:
            self._opened_at = self._started

    cdef void _count_adopted(self):
        # A visitor another worker accepted and handed over (relay/cluster/handoff.py):
        # that worker counted it as opened, and the bytes it read; here it is live.
        if self._counted:
            return
        self._counted = True
        _live[self.kind] += 1
        if self._slot:
            _ep_live[self._slot] += 1
        self._started = monotonic()

    cdef void _count_from_socket(self, Py_ssize_t length):
        _from_socket[self.kind] += length
        self._bytes_from += length
        if self._slot:
            _ep_from[self._slot] += length

    cdef void _count_close(self):
        global _log_dropped
        if not self._counted:
            return
        self._counted = False
        _live[self.kind] -= 1
        if self._slot:
            _ep_live[self._slot] -= 1
        if _logging and self.log_endpoint is not None:
            if len(_closed_log) >= MAX_LOG_RECORDS:
                _log_dropped += 1
                return
            elapsed = monotonic() - self._started
            _closed_log.append((wallclock() - elapsed, elapsed, self.kind, self.log_endpoint,
                                self.log_visitor, "reset" if self._was_reset else "closed",
                                self._bytes_from, self._bytes_to))

    cdef void _count_to_socket(self, Py_ssize_t length):
        _to_socket[self.kind] += length
        self._bytes_to += length
        if self._slot:
            _ep_to[self._slot] += length
        if self._opened_at != 0.0:
            _observe_open(monotonic() - self._opened_at)
            self._opened_at = 0.0


