# Declarations of the byte path's classes, so other Cython modules (the HTTP front) can
# subclass them and call their C-level methods without going through Python.

from libc.stdint cimport uint32_t


cdef class Link


cdef class Channel:
    cdef readonly Link link
    cdef readonly int stream_id

    cdef void deliver(self, const char* data, Py_ssize_t length)
    cdef void deliver_bytes(self, bytes data)
    cdef void deliver_run(self, const char* base, const uint32_t* ev, Py_ssize_t first,
                          Py_ssize_t n)
    cdef void remote_fin(self)
    cdef void remote_reset(self)
    cdef void writable(self)
    cdef void stream_closed(self)
    cdef void link_lost(self)


cdef class Link:
    cdef readonly object session
    cdef readonly object transport
    cdef readonly object loop
    cdef readonly object handler
    cdef readonly dict channels
    cdef bint _flush_scheduled
    cdef readonly bint write_paused
    cdef readonly bint closed
    cdef object _flush_cb
    cdef object _tick_handle
    cdef readonly object close_exc
    cdef readonly Py_ssize_t pending_high_water
    cdef list _flush_waiters
    cdef readonly bint unread_paused
    cdef object _close_deadline

    cdef void _dispatch(self, bytes events, const char* base)
    cdef void _write_frames(self)
    cdef void _deliver(self, const uint32_t* ev, Py_ssize_t first, Py_ssize_t n,
                       const char* base)
    cpdef schedule_flush(self)
    cdef void _flush_all(self)
    cdef void _close_transport(self, double linger)
    cdef _schedule_tick(self, double delay)


cdef class BufferChannel(Channel):
    cdef bytearray _data
    cdef readonly bint fin
    cdef readonly bint reset
    cdef readonly bint closed
    cdef object _waiter
    cdef bint _paused

    cdef void _wake(self)


cdef class Joint(Channel):
    cdef Joint other
    cdef readonly bint held
    cdef readonly bint done
    cdef bint counted

    cdef void _forward(self, object data, Py_ssize_t length)
    cdef void _reset_both(self)
    cdef void _reset_other(self)
    cdef void _reset_end(self)


cdef class Pump(Channel):
    cdef readonly object transport
    cdef int _fd
    cdef object _header_factory
    cdef bytes _preamble
    cdef bint _backlog_paused
    cdef bint _flush_wait
    cdef bint _reading_paused
    cdef bint _local_eof
    cdef readonly bint remote_eof
    cdef readonly bint finished
    #: Index into _fastpath.KINDS: which traffic counters this pump's bytes go to.
    cdef public int kind
    #: For the access log: the endpoint's name and the visitor's address (None: the pump
    #: is not a visitor's, or the log does not want it).
    cdef public object log_endpoint
    cdef public object log_visitor
    cdef bint _counted
    cdef bint _was_reset
    cdef double _opened_at
    cdef double _started
    cdef unsigned long long _bytes_from
    cdef unsigned long long _bytes_to
    #: Endpoint series slot (relay/_series.pxd; 0: none), see ``metric_slot``.
    cdef int _slot
    #: A visitor's pump (it opens the stream): called when the session it was routed to
    #: went away before the socket connected; returns the protocol to serve it instead.
    #: Last, so that the fields the byte path reads keep their places.
    cdef public object reroute

    cdef bint _direct_ok(self)
    cdef Py_ssize_t _send_direct(self, const char* data, Py_ssize_t length)
    cdef bint _wants_pause(self)
    cdef void _update_reading(self)
    cdef void _resume_after_flush(self)
    cdef bint _direct_room_spent(self)
    cdef void _abort(self)
    cdef void _reset_stream(self)
    cdef void attribute_to(self, int slot)
    cdef void _count_open(self, bint timed)
    cdef void _count_adopted(self)
    cdef void _count_close(self)
    cdef void _count_from_socket(self, Py_ssize_t length)
    cdef void _count_to_socket(self, Py_ssize_t length)
    cdef void _send(self, object data)
