# cython: language_level=3
"""TLS for the agent link straight on the socket: no memory BIOs, no copies in between.

uvloop's TLS transport runs OpenSSL over two memory BIOs: every byte read from the link
is copied into the incoming BIO before it is decrypted, and every record written is
copied out of the outgoing BIO into a new bytes object before the socket sees it.
perf put those copies (and the BIO buffer growth behind them) at 10-20% of the agent's
and the edge's CPU in a bulk transfer — as much as the AES-GCM itself.

Here OpenSSL reads and writes the socket itself:

* Python's ``ssl`` module does the handshake (``SSLSocket.do_handshake`` on a
  non-blocking socket), so certificate checks, SNI, ALPN, pins and error messages are
  exactly the standard library's;
* the data path then calls ``SSL_read_ex`` / ``SSL_write_ex`` on the same ``SSL*``:
  records are decrypted straight into the link's read buffer and encrypted straight
  from the session's outgoing buffer. ``read_ahead`` with a 64 KiB read buffer makes
  one ``read`` syscall fetch many records; ``SSL_MODE_RELEASE_BUFFERS`` gives those
  buffers back whenever they are empty, so an idle link holds none.

The ``SSL*`` is not exposed by the ``ssl`` module. We take it from the private
``_ssl._SSLSocket`` object, but only after proving the layout and the library
(``check_layout``): the context pointer stored next to it must be the very
``SSLContext`` object, OpenSSL must agree that the ``SSL*`` belongs to that
context's ``SSL_CTX*``, and both sides must read the same options word. The functions
are resolved from the ``libssl`` that ``_ssl`` itself loaded (``dlopen`` with
``RTLD_NOLOAD``), never from another copy. When any of this does not hold (a Python
with OpenSSL linked statically, another layout), ``unavailable()`` says why and the
link falls back to uvloop's TLS transport.

``TlsLinkTransport`` implements the transport methods ``relay._fastpath.Link`` uses
and drives it through the usual protocol callbacks (``get_buffer``/``buffer_updated``,
``pause_writing``/``resume_writing``, ``eof_received``, ``connection_lost``).
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from libc.errno cimport errno
from libc.stdint cimport uint64_t
from libc.stdlib cimport realloc
from libc.string cimport memcpy

import os
import ssl

cdef extern from "sys/socket.h":
    ssize_t send(int fd, const void* buf, size_t length, int flags) nogil
    int MSG_NOSIGNAL

cdef extern from "errno.h":
    int EAGAIN
    int EWOULDBLOCK
    int EINTR

cdef extern from "dlfcn.h":
    void* dlopen(const char* filename, int flags)
    void* dlsym(void* handle, const char* symbol)
    int RTLD_NOW
    int RTLD_NOLOAD

ctypedef int (*ssl_read_ex_t)(void* ssl, void* buf, size_t num, size_t* readbytes) nogil
ctypedef int (*ssl_write_ex_t)(void* ssl, const void* buf, size_t num, size_t* written) nogil
ctypedef int (*ssl_get_error_t)(const void* ssl, int ret) nogil
ctypedef long (*ssl_ctrl_t)(void* ssl, int cmd, long larg, void* parg) nogil
ctypedef void (*ssl_set_read_ahead_t)(void* ssl, int yes) nogil
ctypedef void (*ssl_set_default_read_buffer_len_t)(void* ssl, size_t length) nogil
ctypedef void* (*ssl_get_ssl_ctx_t)(const void* ssl) nogil
ctypedef uint64_t (*ssl_ctx_get_options_t)(const void* ctx) nogil
ctypedef int (*ssl_shutdown_t)(void* ssl) nogil
ctypedef unsigned long (*err_get_error_t)() nogil
ctypedef void (*err_clear_error_t)() nogil
ctypedef void (*err_error_string_n_t)(unsigned long e, char* buf, size_t length) nogil
ctypedef int (*bio_write_cb_t)(void* bio, const char* data, size_t length, size_t* written) noexcept nogil
ctypedef long (*bio_ctrl_cb_t)(void* bio, int cmd, long larg, void* parg) noexcept nogil
ctypedef void* (*bio_meth_new_t)(int kind, const char* name) nogil
ctypedef int (*bio_meth_set_write_ex_t)(void* method, bio_write_cb_t cb) nogil
ctypedef int (*bio_meth_set_ctrl_t)(void* method, bio_ctrl_cb_t cb) nogil
ctypedef int (*bio_get_new_index_t)() nogil
ctypedef void* (*bio_new_t)(const void* method) nogil
ctypedef void (*bio_set_init_t)(void* bio, int init) nogil
ctypedef void* (*ssl_get_wbio_t)(const void* ssl) nogil
ctypedef void (*ssl_set0_wbio_t)(void* ssl, void* bio) nogil
ctypedef int (*ssl_ctx_set_ciphersuites_t)(void* ctx, const char* suites) nogil

cdef enum:
    SSL_ERROR_NONE = 0
    SSL_ERROR_WANT_READ = 2
    SSL_ERROR_SYSCALL = 5
    SSL_ERROR_ZERO_RETURN = 6
    SSL_CTRL_MODE = 33
    SSL_MODE_RELEASE_BUFFERS = 0x10
    BIO_TYPE_SOURCE_SINK = 0x0400
    BIO_CTRL_FLUSH = 11

cdef ssl_read_ex_t _SSL_read_ex = NULL
cdef ssl_write_ex_t _SSL_write_ex = NULL
cdef ssl_get_error_t _SSL_get_error = NULL
cdef ssl_ctrl_t _SSL_ctrl = NULL
cdef ssl_set_read_ahead_t _SSL_set_read_ahead = NULL
cdef ssl_set_default_read_buffer_len_t _SSL_set_default_read_buffer_len = NULL
cdef ssl_get_ssl_ctx_t _SSL_get_SSL_CTX = NULL
cdef ssl_ctx_get_options_t _SSL_CTX_get_options = NULL
cdef ssl_shutdown_t _SSL_shutdown = NULL
cdef err_get_error_t _ERR_get_error = NULL
cdef err_clear_error_t _ERR_clear_error = NULL
cdef err_error_string_n_t _ERR_error_string_n = NULL
cdef bio_meth_new_t _BIO_meth_new = NULL
cdef bio_meth_set_write_ex_t _BIO_meth_set_write_ex = NULL
cdef bio_meth_set_ctrl_t _BIO_meth_set_ctrl = NULL
cdef bio_get_new_index_t _BIO_get_new_index = NULL
cdef bio_new_t _BIO_new = NULL
cdef bio_set_init_t _BIO_set_init = NULL
cdef ssl_get_wbio_t _SSL_get_wbio = NULL
cdef ssl_set0_wbio_t _SSL_set0_wbio = NULL
cdef ssl_ctx_set_ciphersuites_t _SSL_CTX_set_ciphersuites = NULL
cdef void* _STAGE_METHOD = NULL

#: OpenSSL's read buffer per link while data is arriving: with read_ahead, one read
#: syscall takes up to this much (about 4 full records). Measured (CPU-s per GB of edge +
#: agent, alternated runs): 256 KiB 3.2-4.4, 32 KiB 3.2-3.9, 64 KiB 2.8-3.2. The
#: records are copied out of it once more, so it should stay in cache.
READ_AHEAD_BUFFER = 64 * 1024
#: Most decrypted bytes handed to the protocol in one readable callback before the
#: event loop gets a turn (other links and sockets must not starve).
READ_BUDGET = 1024 * 1024
#: Most plaintext bytes written in one go; more stays queued until the socket drains.
DEFAULT_WRITE_HIGH = 256 * 1024
DEFAULT_WRITE_LOW = 64 * 1024

# The private layouts this relies on (CPython's Modules/_ssl.c, 3.11-3.13): both start
# with PyObject_HEAD; _SSLSocket then holds `PyObject *Socket; SSL *ssl; PySSLContext
# *ctx`, _SSLContext holds `SSL_CTX *ctx`. check_layout() proves them before any use.
ctypedef struct _PyHead:
    Py_ssize_t refcnt
    void* type

ctypedef struct _SSLSocketLayout:
    _PyHead head
    void* socket_ref
    void* ssl
    void* ctx

ctypedef struct _SSLContextLayout:
    _PyHead head
    void* ctx

cdef object _unavailable = None
cdef bint _resolved = False


cdef object _mapped_libssl():
    """The path of the one libssl mapped into this process (the one ``_ssl`` uses)."""
    paths = set()
    with open("/proc/self/maps", "rb") as maps:
        for line in maps:
            path = line.rstrip().rpartition(b" ")[2]
            if b"/libssl.so" in path:
                paths.add(path)
    if len(paths) != 1:
        return None
    return paths.pop()


cdef object _resolve():
    """Find OpenSSL's functions in the libssl ``_ssl`` loaded; a reason if impossible."""
    global _SSL_read_ex, _SSL_write_ex, _SSL_get_error, _SSL_ctrl, _SSL_set_read_ahead
    global _SSL_set_default_read_buffer_len, _SSL_get_SSL_CTX, _SSL_CTX_get_options
    global _SSL_shutdown, _ERR_get_error, _ERR_clear_error, _ERR_error_string_n
    global _BIO_meth_new, _BIO_meth_set_write_ex, _BIO_meth_set_ctrl, _BIO_get_new_index
    global _BIO_new, _BIO_set_init, _SSL_get_wbio, _SSL_set0_wbio, _STAGE_METHOD
    global _SSL_CTX_set_ciphersuites
    import _ssl  # noqa: F401  (loads libssl if nothing did yet)
    try:
        path = _mapped_libssl()
    except OSError as exc:
        return f"cannot read /proc/self/maps: {exc}"
    if path is None:
        return "the ssl module does not use exactly one shared libssl (statically linked?)"
    cdef void* handle = dlopen(<const char*>path, RTLD_NOW | RTLD_NOLOAD)
    if handle == NULL:
        return f"dlopen of {path.decode(errors='replace')} failed"
    names = (b"SSL_read_ex", b"SSL_write_ex", b"SSL_get_error", b"SSL_ctrl",
             b"SSL_set_read_ahead", b"SSL_set_default_read_buffer_len", b"SSL_get_SSL_CTX",
             b"SSL_CTX_get_options", b"SSL_shutdown", b"ERR_get_error", b"ERR_clear_error",
             b"ERR_error_string_n", b"BIO_meth_new", b"BIO_meth_set_write_ex",
             b"BIO_meth_set_ctrl", b"BIO_get_new_index", b"BIO_new", b"BIO_set_init",
             b"SSL_get_wbio", b"SSL_set0_wbio", b"SSL_CTX_set_ciphersuites")
    cdef void* found[21]
    cdef int i
    for i in range(21):
        found[i] = dlsym(handle, <const char*>names[i])
        if found[i] == NULL:
            return f"{names[i].decode()} not found in {path.decode(errors='replace')}"
    _SSL_read_ex = <ssl_read_ex_t>found[0]
    _SSL_write_ex = <ssl_write_ex_t>found[1]
    _SSL_get_error = <ssl_get_error_t>found[2]
    _SSL_ctrl = <ssl_ctrl_t>found[3]
    _SSL_set_read_ahead = <ssl_set_read_ahead_t>found[4]
    _SSL_set_default_read_buffer_len = <ssl_set_default_read_buffer_len_t>found[5]
    _SSL_get_SSL_CTX = <ssl_get_ssl_ctx_t>found[6]
    _SSL_CTX_get_options = <ssl_ctx_get_options_t>found[7]
    _SSL_shutdown = <ssl_shutdown_t>found[8]
    _ERR_get_error = <err_get_error_t>found[9]
    _ERR_clear_error = <err_clear_error_t>found[10]
    _ERR_error_string_n = <err_error_string_n_t>found[11]
    _BIO_meth_new = <bio_meth_new_t>found[12]
    _BIO_meth_set_write_ex = <bio_meth_set_write_ex_t>found[13]
    _BIO_meth_set_ctrl = <bio_meth_set_ctrl_t>found[14]
    _BIO_get_new_index = <bio_get_new_index_t>found[15]
    _BIO_new = <bio_new_t>found[16]
    _BIO_set_init = <bio_set_init_t>found[17]
    _SSL_get_wbio = <ssl_get_wbio_t>found[18]
    _SSL_set0_wbio = <ssl_set0_wbio_t>found[19]
    _SSL_CTX_set_ciphersuites = <ssl_ctx_set_ciphersuites_t>found[20]
    _STAGE_METHOD = _BIO_meth_new(_BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, b"relay-stage")
    if _STAGE_METHOD == NULL:
        return "BIO_meth_new failed"
    if not _BIO_meth_set_write_ex(_STAGE_METHOD, _stage_write) or not _BIO_meth_set_ctrl(
            _STAGE_METHOD, _stage_ctrl):
        return "cannot set up the staging BIO"
    return None


# --- the staging BIO ------------------------------------------------------------------
# OpenSSL's socket BIO writes every record (16 KiB) with its own write(2): on loopback
# each one runs the whole TCP transmit and receive path, and a 256 KiB flush became 16
# syscalls (measured: 4,700 writes/s against uvloop's 1,700 for the same bytes). This
# BIO, the links' write side, only appends records to one process-wide buffer; the
# transport sends it with one syscall after each SSL call (TlsLinkTransport._flush_stage)
# and keeps per link only what the socket did not take. The event loop runs one SSL call
# at a time and every call is followed by that flush, so one buffer serves all links.
cdef char* _stage = NULL
cdef size_t _stage_len = 0
cdef size_t _stage_cap = 0


cdef int _stage_write(void* bio, const char* data, size_t length, size_t* written) noexcept nogil:
    global _stage, _stage_len, _stage_cap
    cdef size_t cap
    cdef char* grown
    if _stage_len + length > _stage_cap:
        cap = _stage_cap * 2 if _stage_cap else 512 * 1024
        while cap < _stage_len + length:
            cap *= 2
        grown = <char*>realloc(_stage, cap)
        if grown == NULL:
            written[0] = 0
            return 0
        _stage = grown
        _stage_cap = cap
    memcpy(_stage + _stage_len, data, length)
    _stage_len += length
    written[0] = length
    return 1


cdef long _stage_ctrl(void* bio, int cmd, long larg, void* parg) noexcept nogil:
    # FLUSH succeeds: the transport sends the stage after every SSL call. Nothing else
    # (pending counts, kTLS queries, ...) applies to this BIO.
    return 1 if cmd == BIO_CTRL_FLUSH else 0


def unavailable():
    """Why the direct TLS link cannot be used in this process, or None when it can.
    ``RELAY_TLS_DIRECT=0`` turns it off (uvloop's TLS transport is used instead)."""
    if os.environ.get("RELAY_TLS_DIRECT", "1") == "0":
        return "turned off by RELAY_TLS_DIRECT=0"
    return _library()


cdef object _library():
    """Why OpenSSL's functions cannot be reached here, or None (resolved once)."""
    global _unavailable, _resolved
    if not _resolved:
        _unavailable = _resolve()
        _resolved = True
    return _unavailable


cdef void* _ssl_pointer(object sslsock) except? NULL:
    """The ``SSL*`` behind an ``ssl.SSLSocket``, after proving the layout (see above)."""
    if unavailable() is not None:
        raise RuntimeError(f"direct TLS link unavailable: {unavailable()}")
    return _proven_ssl(sslsock)


cdef void* _proven_ssl(object sslsock) except? NULL:
    """The ``SSL*`` behind an ``ssl.SSLSocket`` or ``ssl.SSLObject`` (both hold an
    ``_ssl._SSLSocket`` and their context), after proving the layout."""
    sslobj = sslsock._sslobj
    context = sslsock.context
    if type(sslobj).__name__ != "_SSLSocket" or not isinstance(context, ssl.SSLContext):
        raise RuntimeError("unexpected ssl object types")
    cdef _SSLSocketLayout* layout = <_SSLSocketLayout*><void*>sslobj
    # A pure pointer comparison first: no OpenSSL call on a pointer not yet proven.
    if layout.ctx != <void*>context or layout.ssl == NULL:
        raise RuntimeError("the _ssl._SSLSocket layout is not the expected one")
    cdef void* ctx = (<_SSLContextLayout*><void*>context).ctx
    if _SSL_get_SSL_CTX(layout.ssl) != ctx:
        raise RuntimeError("the SSL* does not belong to the context's SSL_CTX*")
    if _SSL_CTX_get_options(ctx) != <uint64_t>context.options:
        raise RuntimeError("OpenSSL and the ssl module disagree on the context options")
    return layout.ssl


def set_tls13_suites(context, str suites):
    """Set ``context``'s TLS 1.3 cipher suites, in order of preference. The ssl module
    has no call for them (``set_ciphers`` is TLS 1.2's), so this calls
    ``SSL_CTX_set_ciphersuites`` on the context's ``SSL_CTX*``, once the layout is
    proven on a throwaway ``SSLObject`` of that very context (as for a link). Not
    affected by ``RELAY_TLS_DIRECT``. Raises RuntimeError when it cannot be done, or
    ValueError when OpenSSL refuses ``suites``."""
    reason = _library()
    if reason is not None:
        raise RuntimeError(f"cannot reach OpenSSL: {reason}")
    if not isinstance(context, ssl.SSLContext):
        raise TypeError("an ssl.SSLContext is needed")
    if context.protocol == ssl.PROTOCOL_TLS_SERVER:
        probe = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    else:
        probe = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="probe.invalid")
    _proven_ssl(probe)
    cdef void* ctx = (<_SSLContextLayout*><void*>context).ctx
    encoded = suites.encode("ascii")
    if _SSL_CTX_set_ciphersuites(ctx, <const char*>encoded) != 1:
        _ERR_clear_error()
        raise ValueError(f"OpenSSL refused the TLS 1.3 suites {suites!r}")


def check_layout(sslsock):
    """Prove we can drive ``sslsock``'s ``SSL*`` directly (raises RuntimeError if not)."""
    _ssl_pointer(sslsock)


cdef object _ssl_error(int code, str where):
    """An exception for a failed SSL_read/SSL_write, from OpenSSL's error queue."""
    cdef unsigned long err = _ERR_get_error()
    cdef char buf[256]
    if code == SSL_ERROR_SYSCALL and err == 0:
        saved = errno
        if saved:
            return OSError(saved, f"{where}: {os.strerror(saved)}")
        return ConnectionResetError(f"{where}: the peer closed the link without close_notify")
    if err == 0:
        return ssl.SSLError(code, f"{where}: TLS error {code}")
    _ERR_error_string_n(err, buf, sizeof(buf))
    _ERR_clear_error()
    return ssl.SSLError(code, f"{where}: {buf.decode(errors='replace')}")


cdef class TlsLinkTransport:
    """An asyncio-style transport over a non-blocking ``ssl.SSLSocket``: OpenSSL reads
    the socket itself and writes records into the staging BIO (see the module
    docstring)."""

    cdef readonly object sock
    cdef object loop
    cdef object protocol
    cdef void* ssl
    cdef int fd
    cdef bytearray _wire  # ciphertext the socket has not taken yet
    cdef Py_ssize_t _high
    cdef Py_ssize_t _low
    cdef bint _write_paused
    cdef bint _writer_added
    cdef bint _reader_added
    cdef bint _reading_paused
    cdef bint _closing
    cdef bint _closed
    cdef bint _read_scheduled
    cdef bint _staged
    cdef object _on_readable_cb
    cdef object _on_writable_cb
    cdef dict _extra

    def __init__(self, loop, sslsock):
        """Take ``sslsock`` (non-blocking, handshake not yet done) and prepare its SSL*:
        read_ahead with a large buffer must be set before the first record is read."""
        self.loop = loop
        self.sock = sslsock
        self.fd = sslsock.fileno()
        self.ssl = _ssl_pointer(sslsock)
        _SSL_set_read_ahead(self.ssl, 1)
        _SSL_set_default_read_buffer_len(self.ssl, READ_AHEAD_BUFFER)
        _SSL_ctrl(self.ssl, SSL_CTRL_MODE, SSL_MODE_RELEASE_BUFFERS, NULL)
        self._wire = bytearray()
        self._high = DEFAULT_WRITE_HIGH
        self._low = DEFAULT_WRITE_LOW
        self._on_readable_cb = self._on_readable
        self._on_writable_cb = self._on_writable
        self._extra = {}
        self.protocol = None

    def start(self, protocol):
        """The handshake is done: attach ``protocol`` and start reading.

        Raises OSError, with nothing attached, when the peer is already gone (a reset right
        after the handshake makes ``getpeername`` fail with ENOTCONN): the caller closes
        the transport and no ``connection_lost`` follows for a protocol that never got
        ``connection_made``."""
        cdef void* stage_bio
        if self._closed:
            raise RuntimeError("transport already closed")
        sock = self.sock
        extra = {
            "socket": sock,
            "ssl_object": sock,
            "sslcontext": sock.context,
            "peername": sock.getpeername(),
            "sockname": sock.getsockname(),
            "cipher": sock.cipher(),
            "peercert": sock.getpeercert(),
        }
        # From here on records go to the staging BIO; the socket BIO keeps reading.
        # SSL_set0_wbio drops the wbio's reference to the socket BIO; its rbio keeps one.
        stage_bio = _BIO_new(_STAGE_METHOD)
        if stage_bio == NULL:
            raise MemoryError("BIO_new failed")
        _BIO_set_init(stage_bio, 1)
        _SSL_set0_wbio(self.ssl, stage_bio)
        self._staged = True
        self._extra = extra
        self.protocol = protocol
        protocol.connection_made(self)
        if self._closed or self._closing:
            return
        self.loop.add_reader(self.fd, self._on_readable_cb)
        self._reader_added = True
        # Records may already sit in OpenSSL's read-ahead buffer (they came with the
        # handshake's last flight): epoll will not report those.
        self._schedule_read()

    # --- transport API used by Link -------------------------------------------------

    def get_extra_info(self, name, default=None):
        return self._extra.get(name, default)

    def set_write_buffer_limits(self, high=None, low=None):
        if high is None:
            high = DEFAULT_WRITE_HIGH if low is None else 4 * low
        if low is None:
            low = high // 4
        if not 0 <= low <= high:
            raise ValueError(f"high ({high}) must be >= low ({low}) must be >= 0")
        self._high = high
        self._low = low

    def get_write_buffer_size(self):
        return PyByteArray_GET_SIZE(self._wire)

    def is_closing(self):
        return self._closing or self._closed

    def can_write_eof(self):
        return False

    def pause_reading(self):
        if not self._reading_paused and not self._closing:
            self._reading_paused = True
            self._remove_reader()

    def resume_reading(self):
        if self._reading_paused and not self._closing:
            self._reading_paused = False
            self.loop.add_reader(self.fd, self._on_readable_cb)
            self._reader_added = True
            self._schedule_read()

    def write(self, data):
        """Encrypt ``data`` now (into the stage) and send what the socket takes."""
        cdef Py_buffer view
        cdef size_t done = 0, written
        cdef int ret, err
        if self._closing or self._closed:
            return
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            while <Py_ssize_t>done < view.len:
                _ERR_clear_error()
                ret = _SSL_write_ex(self.ssl, <const char*>view.buf + done,
                                    <size_t>(view.len - done), &written)
                if ret != 1:
                    # The staging BIO never refuses, so this is a real error.
                    err = _SSL_get_error(self.ssl, ret)
                    self._flush_stage()
                    self._finish(_ssl_error(err, "writing the link"), False)
                    return
                done += written
        finally:
            PyBuffer_Release(&view)
        self._flush_stage()
        self._after_write()

    def close(self):
        """Send what is queued, then close_notify, then close the socket."""
        if self._closing or self._closed:
            return
        self._closing = True
        self._remove_reader()
        if not PyByteArray_GET_SIZE(self._wire):
            self._finish(None, True)

    def abort(self):
        self._finish(None, False)

    # --- the event loop's callbacks ------------------------------------------------------

    cdef void _schedule_read(self):
        if not self._read_scheduled:
            self._read_scheduled = True
            self.loop.call_soon(self._on_readable_cb)

    def _on_readable(self):
        cdef Py_buffer view
        cdef size_t got
        cdef Py_ssize_t filled, total = 0
        cdef int ret, err
        cdef object protocol = self.protocol
        self._read_scheduled = False
        if self._closed or self._closing or self._reading_paused:
            return
        while total < READ_BUDGET:
            buf = protocol.get_buffer(-1)
            PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE)
            filled = 0
            err = SSL_ERROR_NONE
            try:
                # Fill the protocol's buffer with as many records as are here: one
                # buffer_updated per buffer, so a stream's frames stay together.
                while filled < view.len:
                    _ERR_clear_error()
                    ret = _SSL_read_ex(self.ssl, <char*>view.buf + filled,
                                       <size_t>(view.len - filled), &got)
                    if ret != 1:
                        err = _SSL_get_error(self.ssl, ret)
                        break
                    filled += <Py_ssize_t>got
            finally:
                PyBuffer_Release(&view)
            if _stage_len:
                # Reading can write too: TLS 1.3 session tickets, KeyUpdate answers.
                self._flush_stage()
                self._after_write()
                if self._closed:
                    return
            if filled:
                total += filled
                protocol.buffer_updated(filled)
                if self._closed or self._closing or self._reading_paused:
                    return
            if err == SSL_ERROR_NONE:
                continue  # the buffer was full; more may be waiting
            if err == SSL_ERROR_WANT_READ:
                return
            if err == SSL_ERROR_ZERO_RETURN:
                self._remove_reader()
                if not protocol.eof_received():
                    self.close()
                return
            self._finish(_ssl_error(err, "reading the link"), False)
            return
        self._schedule_read()  # budget spent: let the loop run others first

    def _on_writable(self):
        cdef Py_ssize_t size = PyByteArray_GET_SIZE(self._wire)
        cdef Py_ssize_t sent
        if self._closed:
            return
        if size:
            sent = self._send(PyByteArray_AS_STRING(self._wire), size)
            if sent < 0:
                return
            if sent:
                del self._wire[:sent]
        self._after_write()

    cdef Py_ssize_t _send(self, const char* data, Py_ssize_t length):
        """send(2) as much of ``data`` as the socket takes; -1 after a fatal error."""
        cdef Py_ssize_t done = 0
        cdef ssize_t n
        cdef int code
        while done < length:
            n = send(self.fd, data + done, <size_t>(length - done), MSG_NOSIGNAL)
            if n >= 0:
                done += n
                continue
            code = errno
            if code == EINTR:
                continue
            if code == EAGAIN or code == EWOULDBLOCK:
                break
            self._finish(OSError(code, f"writing the link: {os.strerror(code)}"), False)
            return -1
        return done

    cdef void _flush_stage(self):
        """Send the records the last SSL call staged; keep what the socket refuses."""
        global _stage_len
        cdef Py_ssize_t length = <Py_ssize_t>_stage_len
        cdef Py_ssize_t sent = 0
        if not length:
            return
        _stage_len = 0  # taken now: _send may end the link, whose SSL_shutdown stages
        if self._closed:
            return
        if not PyByteArray_GET_SIZE(self._wire):
            sent = self._send(_stage, length)
            if sent < 0:
                return
        if sent < length:
            self._wire += (<const char*>_stage)[sent:length]

    cdef void _after_write(self):
        cdef Py_ssize_t size = PyByteArray_GET_SIZE(self._wire)
        if self._closed:
            return
        if size == 0:
            if self._writer_added:
                self.loop.remove_writer(self.fd)
                self._writer_added = False
            if self._closing:
                self._finish(None, True)
                return
        elif not self._writer_added:
            self.loop.add_writer(self.fd, self._on_writable_cb)
            self._writer_added = True
        # ">=": Link's flush budget is (high - size), so at exactly `high` it writes
        # nothing and waits for resume_writing; pausing there guarantees that call.
        if not self._write_paused and size >= self._high:
            self._write_paused = True
            self.protocol.pause_writing()
        elif self._write_paused and size <= self._low:
            self._write_paused = False
            self.protocol.resume_writing()

    cdef void _remove_reader(self):
        if self._reader_added:
            self.loop.remove_reader(self.fd)
            self._reader_added = False

    cdef void _finish(self, object exc, bint notify):
        """Close the socket (after a close_notify when ``notify``) and tell the protocol."""
        global _stage_len
        if self._closed:
            return
        self._closed = True
        self._closing = True
        self._remove_reader()
        if self._writer_added:
            self.loop.remove_writer(self.fd)
            self._writer_added = False
        if notify and self._staged:
            _ERR_clear_error()
            _SSL_shutdown(self.ssl)  # queues close_notify in the stage
            _ERR_clear_error()
            if _stage_len and not PyByteArray_GET_SIZE(self._wire):
                send(self.fd, _stage, _stage_len, MSG_NOSIGNAL)  # best effort
        _stage_len = 0
        self.ssl = NULL
        try:
            self.sock.close()
        except OSError:
            pass
        if self.protocol is not None:
            self.loop.call_soon(self.protocol.connection_lost, exc)
