//! relay-native: a sans-IO yamux session (hashicorp/yamux `spec.md`).
//!
//! No sockets, no threads: [`Session::receive`] turns bytes read from the link into packed
//! events, calls queue frames, [`Session::take_outgoing`] hands back the bytes to write.
//! The PyO3 face (`relay_native` Python module) lives in `python.rs` behind the `python`
//! feature.

pub mod error;
pub mod flow;
pub mod frame;
pub mod session;
pub mod stream;

#[cfg(feature = "python")]
mod python;

pub use error::{ConfigError, Error, GOAWAY_INTERNAL, GOAWAY_NORMAL, GOAWAY_PROTOCOL};
pub use frame::{Flags, FrameType, Header, DEFAULT_WINDOW, HEADER_LEN};
pub use session::{
    unpack_events, Config, Event, Session, Stats, EVENT_ACKED, EVENT_CLOSED, EVENT_DATA, EVENT_FIN,
    EVENT_GOAWAY, EVENT_LEN, EVENT_OPENED, EVENT_PONG, EVENT_RESET, EVENT_WRITABLE,
};

/// The crate version (also Python's `relay_native.__version__`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
