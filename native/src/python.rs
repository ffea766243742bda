//! The PyO3 face: module `relay_native`. Thin: argument conversion, errors → exceptions.

use std::ffi::{c_int, c_void};
use std::mem::MaybeUninit;
use std::ptr;

use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict};

use crate::error::{Error, GOAWAY_INTERNAL, GOAWAY_NORMAL, GOAWAY_PROTOCOL};
use crate::session::{self, Config, Session};

mod exc {
    use pyo3::create_exception;
    use pyo3::exceptions::PyException;

    create_exception!(
        relay_native,
        YamuxError,
        PyException,
        "Root of every error the session raises."
    );
    create_exception!(
        relay_native,
        ProtocolError,
        YamuxError,
        "The peer broke the protocol; GoAway(1) queued."
    );
    create_exception!(relay_native, InvalidVersion, ProtocolError);
    create_exception!(relay_native, UnknownFrameType, ProtocolError);
    create_exception!(relay_native, InvalidFlags, ProtocolError);
    create_exception!(relay_native, InvalidStreamId, ProtocolError);
    create_exception!(relay_native, DuplicateStream, ProtocolError);
    create_exception!(relay_native, WindowOverflow, ProtocolError);
    create_exception!(relay_native, FlowControlViolation, ProtocolError);
    create_exception!(relay_native, StreamResetFlood, ProtocolError);
    create_exception!(relay_native, SessionBudgetExceeded, ProtocolError);
    create_exception!(relay_native, FrameTooLarge, ProtocolError);
    create_exception!(relay_native, RefusalFlood, ProtocolError);
    create_exception!(relay_native, PeerStreamLimit, ProtocolError);
    create_exception!(
        relay_native,
        KeepaliveTimeout,
        YamuxError,
        "A keepalive ping went unanswered."
    );
    create_exception!(relay_native, StreamLimitReached, YamuxError);
    create_exception!(relay_native, SessionClosed, YamuxError);
    create_exception!(relay_native, UnknownStream, YamuxError);
    create_exception!(
        relay_native,
        StreamClosed,
        UnknownStream,
        "send() on a stream closed for sending."
    );
}

/// Convert a session error into the matching exception, with `goaway_code` and `name` set.
fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let msg = e.to_string();
    let err = match e {
        Error::InvalidVersion(_) => exc::InvalidVersion::new_err(msg),
        Error::UnknownFrameType(_) => exc::UnknownFrameType::new_err(msg),
        Error::InvalidFlags(_) => exc::InvalidFlags::new_err(msg),
        Error::InvalidStreamId(_) => exc::InvalidStreamId::new_err(msg),
        Error::DuplicateStream(_) => exc::DuplicateStream::new_err(msg),
        Error::WindowOverflow(_) => exc::WindowOverflow::new_err(msg),
        Error::FlowControlViolation(_) => exc::FlowControlViolation::new_err(msg),
        Error::StreamResetFlood => exc::StreamResetFlood::new_err(msg),
        Error::SessionBudgetExceeded => exc::SessionBudgetExceeded::new_err(msg),
        Error::FrameTooLarge(_) => exc::FrameTooLarge::new_err(msg),
        Error::RefusalFlood => exc::RefusalFlood::new_err(msg),
        Error::PeerStreamLimit(_) => exc::PeerStreamLimit::new_err(msg),
        Error::KeepaliveTimeout => exc::KeepaliveTimeout::new_err(msg),
        Error::StreamLimitReached => exc::StreamLimitReached::new_err(msg),
        Error::SessionClosed => exc::SessionClosed::new_err(msg),
        Error::UnknownStream(_) => exc::UnknownStream::new_err(msg),
        Error::StreamClosed(_) => exc::StreamClosed::new_err(msg),
    };
    let v = err.value(py);
    let _ = v.setattr("goaway_code", e.goaway_code());
    let _ = v.setattr("name", e.name());
    err
}

/// Run `f` over the bytes of a bytes/bytearray/memoryview (any C-contiguous buffer)
/// without copying them, and without allocating (the `Py_buffer` lives on the stack).
fn with_bytes<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(b) = data.downcast::<PyBytes>() {
        return Ok(f(b.as_bytes()));
    }
    if let Ok(b) = data.downcast::<PyByteArray>() {
        // SAFETY: we hold the GIL and `f` never calls back into Python, so nothing can
        // resize or free the bytearray's storage while the slice lives.
        return Ok(f(unsafe { b.as_bytes() }));
    }
    /// Releases the buffer even if `f` panics.
    struct Held(MaybeUninit<ffi::Py_buffer>);
    impl Drop for Held {
        fn drop(&mut self) {
            // SAFETY: only constructed after PyObject_GetBuffer succeeded; GIL held.
            unsafe { ffi::PyBuffer_Release(self.0.as_mut_ptr()) }
        }
    }
    let mut raw = MaybeUninit::<ffi::Py_buffer>::uninit();
    // SAFETY: PyBUF_SIMPLE asks for one contiguous run of bytes (the exporter raises
    // BufferError otherwise); on success `raw` is initialised and must be released.
    if unsafe { ffi::PyObject_GetBuffer(data.as_ptr(), raw.as_mut_ptr(), ffi::PyBUF_SIMPLE) } != 0 {
        return Err(PyErr::fetch(data.py()));
    }
    let held = Held(raw);
    // SAFETY: initialised by the successful PyObject_GetBuffer above.
    let view = unsafe { held.0.assume_init_ref() };
    let len = view.len.max(0) as usize;
    let slice: &[u8] = if len == 0 || view.buf.is_null() {
        &[]
    } else {
        // SAFETY: the buffer is held (and so pinned) until `held` drops, it is contiguous
        // with `len` bytes, and we hold the GIL and never call back into Python meanwhile,
        // so no Python code can resize or mutate it.
        unsafe { std::slice::from_raw_parts(view.buf as *const u8, len) }
    };
    let r = f(slice);
    drop(held);
    Ok(r)
}

/// The bytes `Session.take_outgoing()` hands out: owns them (no copy) and exposes them
/// through the buffer protocol, read-only, 1-D, unsigned bytes (format "B").
#[pyclass(frozen, module = "relay_native", name = "OutgoingBuffer")]
pub struct OutgoingBuffer {
    data: Vec<u8>,
}

#[pymethods]
impl OutgoingBuffer {
    fn __len__(&self) -> usize {
        self.data.len()
    }

    fn __repr__(&self) -> String {
        format!("<relay_native.OutgoingBuffer len={}>", self.data.len())
    }

    /// # Safety
    /// Called by CPython with a valid `view`; the data never changes or moves while the
    /// object lives (frozen class, no mutating method), and `view.obj` keeps it alive.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("view is null"));
        }
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("OutgoingBuffer is read-only"));
        }
        let data = &slf.get().data;
        (*view).buf = data.as_ptr() as *mut c_void;
        (*view).len = data.len() as ffi::Py_ssize_t;
        (*view).readonly = 1;
        (*view).itemsize = 1;
        (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
            c"B".as_ptr() as *mut _
        } else {
            ptr::null_mut()
        };
        (*view).ndim = 1;
        (*view).shape = if flags & ffi::PyBUF_ND == ffi::PyBUF_ND {
            &mut (*view).len
        } else {
            ptr::null_mut()
        };
        (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
            &mut (*view).itemsize
        } else {
            ptr::null_mut()
        };
        (*view).suboffsets = ptr::null_mut();
        (*view).internal = ptr::null_mut();
        (*view).obj = slf.into_any().into_ptr(); // a new reference, released by CPython
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}
}

fn arg<T: TryFrom<u64>>(name: &str, v: &Bound<'_, PyAny>) -> PyResult<T> {
    let n: u64 = v
        .extract()
        .map_err(|_| PyValueError::new_err(format!("{name} must be a non-negative integer")))?;
    T::try_from(n).map_err(|_| PyValueError::new_err(format!("{name} is out of range")))
}

/// A sans-IO yamux session.
// Not `unsendable`: a Session is plain Rust data (Send), so the garbage collector may free
// it on whatever thread it runs (an executor thread, the ACME worker) without PyO3
// refusing the drop and leaking it.
#[pyclass(module = "relay_native", name = "Session")]
pub struct PySession {
    inner: Session,
}

#[pymethods]
impl PySession {
    #[new]
    #[pyo3(signature = (
        *,
        client,
        initial_window = None,
        max_window = None,
        session_budget = None,
        max_frame_payload = None,
        max_streams = None,
        accept_backlog = None,
        keepalive_interval_ms = None,
        keepalive_timeout_ms = None,
        pending_high_water = None,
        pending_low_water = None,
        max_resets_per_second = None,
        max_peer_streams = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        client: bool,
        initial_window: Option<&Bound<'_, PyAny>>,
        max_window: Option<&Bound<'_, PyAny>>,
        session_budget: Option<&Bound<'_, PyAny>>,
        max_frame_payload: Option<&Bound<'_, PyAny>>,
        max_streams: Option<&Bound<'_, PyAny>>,
        accept_backlog: Option<&Bound<'_, PyAny>>,
        keepalive_interval_ms: Option<&Bound<'_, PyAny>>,
        keepalive_timeout_ms: Option<&Bound<'_, PyAny>>,
        pending_high_water: Option<&Bound<'_, PyAny>>,
        pending_low_water: Option<&Bound<'_, PyAny>>,
        max_resets_per_second: Option<&Bound<'_, PyAny>>,
        max_peer_streams: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let mut c = Config::new(client);
        macro_rules! set {
            ($field:ident) => {
                if let Some(v) = $field {
                    c.$field = arg(stringify!($field), v)?;
                }
            };
        }
        set!(initial_window);
        set!(max_window);
        set!(session_budget);
        set!(max_frame_payload);
        set!(max_streams);
        set!(accept_backlog);
        set!(keepalive_interval_ms);
        set!(keepalive_timeout_ms);
        set!(pending_high_water);
        set!(pending_low_water);
        set!(max_resets_per_second);
        set!(max_peer_streams);
        let inner = Session::new(c).map_err(|e| PyValueError::new_err(e.0))?;
        Ok(PySession { inner })
    }

    /// Feed bytes read from the link; return packed events.
    fn receive<'py>(
        &mut self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let inner = &mut self.inner;
        with_bytes(data, |buf| match inner.receive(buf) {
            Ok(ev) => Ok(PyBytes::new(py, ev)),
            Err(e) => Err(to_py(py, e)),
        })?
    }

    /// Events queued by calls since the last receive()/take_events() (e.g. EVENT_CLOSED
    /// when close_stream completes a close); receive() returns them too.
    fn take_events<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.take_events())
    }

    fn open_stream(&mut self, py: Python<'_>) -> PyResult<u32> {
        self.inner.open_stream().map_err(|e| to_py(py, e))
    }

    fn accept_stream(&mut self, py: Python<'_>, stream_id: u32) -> PyResult<()> {
        self.inner
            .accept_stream(stream_id)
            .map_err(|e| to_py(py, e))
    }

    fn send(&mut self, py: Python<'_>, stream_id: u32, data: &Bound<'_, PyAny>) -> PyResult<usize> {
        let inner = &mut self.inner;
        with_bytes(data, |buf| inner.send(stream_id, buf))?.map_err(|e| to_py(py, e))
    }

    fn close_stream(&mut self, py: Python<'_>, stream_id: u32) -> PyResult<()> {
        self.inner.close_stream(stream_id).map_err(|e| to_py(py, e))
    }

    fn reset_stream(&mut self, py: Python<'_>, stream_id: u32) -> PyResult<()> {
        self.inner.reset_stream(stream_id).map_err(|e| to_py(py, e))
    }

    fn set_read_paused(&mut self, py: Python<'_>, stream_id: u32, paused: bool) -> PyResult<()> {
        self.inner
            .set_read_paused(stream_id, paused)
            .map_err(|e| to_py(py, e))
    }

    fn ping(&mut self, py: Python<'_>) -> PyResult<u32> {
        self.inner.ping().map_err(|e| to_py(py, e))
    }

    fn tick(&mut self, py: Python<'_>) -> PyResult<u64> {
        self.inner.tick().map_err(|e| to_py(py, e))
    }

    #[pyo3(signature = (code = 0))]
    fn go_away(&mut self, code: u32) {
        self.inner.go_away(code)
    }

    #[pyo3(signature = (code = 0))]
    fn go_away_draining(&mut self, code: u32) {
        self.inner.go_away_draining(code)
    }

    /// Control frames, then stream data framed round-robin, at most `max_bytes` (see the
    /// stub), moved (not copied) into an OutgoingBuffer.
    #[pyo3(signature = (max_bytes = None))]
    fn take_outgoing(
        &mut self,
        py: Python<'_>,
        max_bytes: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<OutgoingBuffer>> {
        let limit = match max_bytes {
            Some(v) => Some(arg::<usize>("max_bytes", v)?),
            None => None,
        };
        Py::new(
            py,
            OutgoingBuffer {
                data: self.inner.take_outgoing_limited(limit),
            },
        )
    }

    #[getter]
    fn outgoing_len(&self) -> usize {
        self.inner.outgoing_len()
    }
    #[getter]
    fn pending_data(&self) -> u64 {
        self.inner.pending_data()
    }
    #[getter]
    fn has_events(&self) -> bool {
        self.inner.has_events()
    }
    #[getter]
    fn has_sendable(&self) -> bool {
        self.inner.has_sendable()
    }
    #[getter]
    fn stream_count(&self) -> usize {
        self.inner.stream_count()
    }
    #[getter]
    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }
    #[getter]
    fn local_went_away(&self) -> bool {
        self.inner.local_went_away()
    }
    #[getter]
    fn goaway_crossing(&self) -> bool {
        self.inner.goaway_crossing()
    }

    #[getter]
    fn remote_went_away(&self) -> bool {
        self.inner.remote_went_away()
    }
    #[getter]
    fn rtt_us(&self) -> u64 {
        self.inner.rtt_us()
    }

    fn direct_room(&self, stream_id: u32) -> Option<usize> {
        self.inner.direct_room(stream_id)
    }

    fn stream_window(&self, py: Python<'_>, stream_id: u32) -> PyResult<(u32, u32)> {
        self.inner
            .stream_window(stream_id)
            .map_err(|e| to_py(py, e))
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in self.inner.stats().fields() {
            d.set_item(k, v)?;
        }
        Ok(d)
    }
}

/// relay_native: a sans-IO yamux session (hashicorp/yamux spec.md).
#[pymodule]
#[pyo3(name = "relay_native")]
fn relay_native_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", crate::VERSION)?;
    m.add("EVENT_OPENED", session::EVENT_OPENED)?;
    m.add("EVENT_DATA", session::EVENT_DATA)?;
    m.add("EVENT_FIN", session::EVENT_FIN)?;
    m.add("EVENT_RESET", session::EVENT_RESET)?;
    m.add("EVENT_WRITABLE", session::EVENT_WRITABLE)?;
    m.add("EVENT_CLOSED", session::EVENT_CLOSED)?;
    m.add("EVENT_GOAWAY", session::EVENT_GOAWAY)?;
    m.add("EVENT_PONG", session::EVENT_PONG)?;
    m.add("EVENT_ACKED", session::EVENT_ACKED)?;
    m.add("GOAWAY_NORMAL", GOAWAY_NORMAL)?;
    m.add("GOAWAY_PROTOCOL", GOAWAY_PROTOCOL)?;
    m.add("GOAWAY_INTERNAL", GOAWAY_INTERNAL)?;
    macro_rules! add_exc {
        ($($name:ident),*) => {$(
            m.add(stringify!($name), py.get_type::<exc::$name>())?;
        )*};
    }
    add_exc!(
        YamuxError,
        ProtocolError,
        InvalidVersion,
        UnknownFrameType,
        InvalidFlags,
        InvalidStreamId,
        DuplicateStream,
        WindowOverflow,
        FlowControlViolation,
        StreamResetFlood,
        SessionBudgetExceeded,
        FrameTooLarge,
        RefusalFlood,
        PeerStreamLimit,
        KeepaliveTimeout,
        StreamLimitReached,
        SessionClosed,
        UnknownStream,
        StreamClosed
    );
    // Class-level defaults so the attributes exist even on exceptions raised from Python.
    let root = py.get_type::<exc::YamuxError>();
    root.setattr("goaway_code", GOAWAY_INTERNAL)?;
    root.setattr("name", "yamux_error")?;
    m.add_class::<PySession>()?;
    m.add_class::<OutgoingBuffer>()?;
    Ok(())
}
