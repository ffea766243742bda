# Declarations of relay/_exchanges.pyx, for the HTTP front that drives it.

cdef class Exchanges:
    cdef int kind
    cdef int slot
    cdef str endpoint
    cdef str visitor
    cdef bytes line_prefix
    cdef int state
    cdef long long remaining
    cdef long long unclaimed
    cdef object head
    cdef object current
    cdef list queue

    cdef void begin(self, bytes method, bytes target, bint head_request)
    cdef void request_bytes(self, Py_ssize_t n)
    cdef void feed(self, const char* data, Py_ssize_t n)
    cdef Py_ssize_t _read_head(self, const char* data, Py_ssize_t n)
    cdef void _head_done(self, const char* head, Py_ssize_t length)
    cdef void _finish(self)
    cdef Py_ssize_t _line(self, char* line, list record, double elapsed, int status)
    cdef void end(self)
