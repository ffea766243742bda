//! Typed errors. One enum; each variant knows its GoAway code and a stable snake_case name
//! (the `name` attribute of the Python exception).

use core::fmt;

/// GoAway codes (spec): normal termination.
pub const GOAWAY_NORMAL: u32 = 0;
/// GoAway codes (spec): protocol error.
pub const GOAWAY_PROTOCOL: u32 = 1;
/// GoAway codes (spec): internal error.
pub const GOAWAY_INTERNAL: u32 = 2;

/// Every error a session can return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    // ---- protocol errors: the peer broke the protocol; GoAway(1) queued, session dead ----
    /// Header version byte was not 0.
    InvalidVersion(u8),
    /// Header type byte was not 0..=3.
    UnknownFrameType(u8),
    /// A flag combination the spec does not allow (e.g. SYN+ACK, a ping without SYN or ACK).
    InvalidFlags(u16),
    /// Wrong parity for a SYN, id 0 on a stream frame, ids not increasing, frames for an id
    /// that was never opened, Ping/GoAway off stream 0.
    InvalidStreamId(u32),
    /// SYN on a stream id that is live.
    DuplicateStream(u32),
    /// Window-update credit would push a send window past `u32::MAX`.
    WindowOverflow(u32),
    /// Data beyond the advertised receive window (including an oversize SYN data frame).
    FlowControlViolation(u32),
    /// Open-then-reset churn past `max_resets_per_second`.
    StreamResetFlood,
    /// Buffered receive bytes past the session budget (reserved, see `flow.rs`).
    SessionBudgetExceeded,
    /// A data frame longer than the largest window we could ever grant.
    FrameTooLarge(u32),
    /// Opens past the limits while our refusals pile up unread (see `MAX_UNSENT_ANSWERS`).
    RefusalFlood,
    /// A SYN past `max_peer_streams` (the stream id).
    PeerStreamLimit(u32),
    // ---- fatal, not the peer's framing: GoAway(2) queued, session dead ----
    /// A keepalive ping went unanswered past the timeout.
    KeepaliveTimeout,
    // ---- call errors: the session lives on ----
    /// `open_stream` with `max_streams` streams open.
    StreamLimitReached,
    /// A call after GoAway (opening) or after a fatal error.
    SessionClosed,
    /// A call named a stream id that is not open.
    UnknownStream(u32),
    /// A stream that is closed for sending (we sent or queued FIN).
    StreamClosed(u32),
}

impl Error {
    /// The code of the GoAway frame this error sends (or would send).
    /// Call errors, which send nothing, report GOAWAY_INTERNAL.
    pub fn goaway_code(&self) -> u32 {
        if self.is_protocol() {
            GOAWAY_PROTOCOL
        } else {
            GOAWAY_INTERNAL
        }
    }

    /// A stable identifier (never changes between versions).
    pub fn name(&self) -> &'static str {
        match self {
            Error::InvalidVersion(_) => "invalid_version",
            Error::UnknownFrameType(_) => "unknown_frame_type",
            Error::InvalidFlags(_) => "invalid_flags",
            Error::InvalidStreamId(_) => "invalid_stream_id",
            Error::DuplicateStream(_) => "duplicate_stream",
            Error::WindowOverflow(_) => "window_overflow",
            Error::FlowControlViolation(_) => "flow_control_violation",
            Error::StreamResetFlood => "stream_reset_flood",
            Error::SessionBudgetExceeded => "session_budget_exceeded",
            Error::FrameTooLarge(_) => "frame_too_large",
            Error::RefusalFlood => "refusal_flood",
            Error::PeerStreamLimit(_) => "peer_stream_limit",
            Error::KeepaliveTimeout => "keepalive_timeout",
            Error::StreamLimitReached => "stream_limit_reached",
            Error::SessionClosed => "session_closed",
            Error::UnknownStream(_) => "unknown_stream",
            Error::StreamClosed(_) => "stream_closed",
        }
    }

    /// The peer broke the protocol (GoAway(1)).
    pub fn is_protocol(&self) -> bool {
        matches!(
            self,
            Error::InvalidVersion(_)
                | Error::UnknownFrameType(_)
                | Error::InvalidFlags(_)
                | Error::InvalidStreamId(_)
                | Error::DuplicateStream(_)
                | Error::WindowOverflow(_)
                | Error::FlowControlViolation(_)
                | Error::StreamResetFlood
                | Error::SessionBudgetExceeded
                | Error::FrameTooLarge(_)
                | Error::RefusalFlood
                | Error::PeerStreamLimit(_)
        )
    }

    /// The error ends the session (a GoAway was queued).
    pub fn is_fatal(&self) -> bool {
        self.is_protocol() || matches!(self, Error::KeepaliveTimeout)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidVersion(v) => write!(f, "invalid yamux version {v}"),
            Error::UnknownFrameType(t) => write!(f, "unknown frame type {t}"),
            Error::InvalidFlags(fl) => write!(f, "invalid flags {fl:#06x}"),
            Error::InvalidStreamId(id) => write!(f, "invalid stream id {id}"),
            Error::DuplicateStream(id) => write!(f, "SYN on live stream {id}"),
            Error::WindowOverflow(id) => write!(f, "send window of stream {id} would pass 2**32-1"),
            Error::FlowControlViolation(id) => {
                write!(f, "stream {id}: data beyond the receive window")
            }
            Error::StreamResetFlood => write!(f, "open-then-reset churn past the configured rate"),
            Error::SessionBudgetExceeded => {
                write!(f, "buffered receive bytes past the session budget")
            }
            Error::FrameTooLarge(len) => {
                write!(f, "data frame of {len} bytes is larger than any window")
            }
            Error::RefusalFlood => {
                write!(
                    f,
                    "streams opened past the limits while refusals went unread"
                )
            }
            Error::PeerStreamLimit(id) => {
                write!(f, "stream {id} opened past the peer's stream limit")
            }
            Error::KeepaliveTimeout => write!(f, "keepalive ping unanswered"),
            Error::StreamLimitReached => write!(f, "max_streams streams are open"),
            Error::SessionClosed => write!(f, "session is closed"),
            Error::UnknownStream(id) => write!(f, "stream {id} is not open"),
            Error::StreamClosed(id) => write!(f, "stream {id} is closed for sending"),
        }
    }
}

impl std::error::Error for Error {}

/// A configuration value out of range (`ValueError` in Python).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_errors_carry_goaway_1_and_others_2() {
        assert_eq!(Error::WindowOverflow(1).goaway_code(), 1);
        assert_eq!(Error::InvalidVersion(3).goaway_code(), 1);
        assert_eq!(Error::KeepaliveTimeout.goaway_code(), 2);
        assert!(Error::KeepaliveTimeout.is_fatal());
        assert!(!Error::UnknownStream(1).is_fatal());
        assert_eq!(Error::WindowOverflow(1).name(), "window_overflow");
    }
}
