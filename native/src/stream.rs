//! Per-stream state machine and send backlog.
//!
//! ```text
//!            open_stream                    inbound SYN
//!   Init ──────────────▶ SynSent      Init ───────────▶ SynReceived
//!   SynSent ──ACK──▶ Established      SynReceived ──accept──▶ Established
//!   {SynSent,SynReceived,Established} ──FIN sent──▶ LocalClosed ──FIN recv──▶ Closed
//!   {SynSent,SynReceived,Established} ──FIN recv──▶ RemoteClosed ──FIN sent──▶ Closed
//!   any ──RST (either way)──▶ Reset
//! ```
//!
//! The handshake (ACK received / accept called) and the half-closes are independent: a
//! stream may be half-closed before its ACK arrives. The handshake flags live beside the
//! state so that a LocalClosed stream still knows whether it was acknowledged.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::flow::{RecvWindow, SendWindow};

/// Lifecycle of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Allocated, nothing sent or received yet.
    Init,
    /// We opened it (SYN sent), no ACK yet.
    SynSent,
    /// The peer opened it (SYN received), not accepted yet.
    SynReceived,
    /// Open both ways.
    Established,
    /// We sent FIN; the peer may still send.
    LocalClosed,
    /// The peer sent FIN; we may still send.
    RemoteClosed,
    /// FIN both ways.
    Closed,
    /// RST sent or received.
    Reset,
}

impl State {
    /// We may still queue data.
    pub fn can_send(self) -> bool {
        matches!(
            self,
            State::Init
                | State::SynSent
                | State::SynReceived
                | State::Established
                | State::RemoteClosed
        )
    }
    /// The peer may still send data.
    pub fn can_receive(self) -> bool {
        matches!(
            self,
            State::Init
                | State::SynSent
                | State::SynReceived
                | State::Established
                | State::LocalClosed
        )
    }
}

/// One stream.
#[derive(Debug)]
pub struct Stream {
    pub id: u32,
    state: State,
    /// True for streams we opened.
    pub outbound: bool,
    /// Outbound: the peer's ACK arrived. Inbound: we accepted.
    pub handshaken: bool,
    /// close_stream() was called; FIN goes out once the backlog is flushed.
    pub fin_pending: bool,
    pub recv: RecvWindow,
    pub send: SendWindow,
    /// Unsent payload.
    pub backlog: VecDeque<u8>,
    /// Reported over `pending_high_water`; WRITABLE due when the backlog drops to low water.
    pub over_high_water: bool,
    /// Has backlog and zero send window (counted once per stall).
    pub stalled: bool,
    /// Offset in the session's outgoing buffer of this stream's pending window update, valid
    /// while `wu_gen` equals the session's outgoing generation (coalescing).
    pub wu_at: usize,
    pub wu_gen: u64,
    /// Queued in the session's round-robin ring (has backlog and send window).
    pub in_ring: bool,
    /// Payload received in the current epoch (started at `rx_epoch_start`) and in the
    /// previous one (None before a whole epoch passed): is this stream light traffic?
    rx_epoch_start: Instant,
    rx_epoch_bytes: u64,
    rx_prev_epoch_bytes: Option<u64>,
}

impl Stream {
    pub fn new(
        id: u32,
        outbound: bool,
        recv_window: u32,
        send_window: u32,
        now: Instant,
    ) -> Stream {
        Stream {
            id,
            state: State::Init,
            outbound,
            handshaken: false,
            fin_pending: false,
            recv: RecvWindow::new(recv_window, now),
            send: SendWindow::new(send_window),
            backlog: VecDeque::new(),
            over_high_water: false,
            stalled: false,
            wu_at: 0,
            wu_gen: 0,
            in_ring: false,
            rx_epoch_start: now,
            rx_epoch_bytes: 0,
            rx_prev_epoch_bytes: None,
        }
    }

    /// Account `n` payload bytes received at `now`, in epochs of `epoch`. True while the
    /// stream is light: under `light` bytes in this epoch and in the previous one (a
    /// request/response stream, not a bulk transfer).
    pub fn note_rx(&mut self, n: u32, now: Instant, epoch: Duration, light: u64) -> bool {
        let since = now.saturating_duration_since(self.rx_epoch_start);
        if since >= epoch {
            let previous = if since >= epoch * 2 {
                0
            } else {
                self.rx_epoch_bytes
            };
            self.rx_prev_epoch_bytes = Some(previous);
            self.rx_epoch_start = now;
            self.rx_epoch_bytes = 0;
        }
        self.rx_epoch_bytes += u64::from(n);
        self.is_light(now, epoch, light)
    }

    /// Whether the stream is light at `now` (what `note_rx` says, without accounting or
    /// rolling the epochs): a bulk stream is light for its first `light` bytes, and must
    /// stop counting as contention as soon as it passes them.
    pub fn is_light(&self, now: Instant, epoch: Duration, light: u64) -> bool {
        let since = now.saturating_duration_since(self.rx_epoch_start);
        if since >= epoch * 2 {
            return true; // nothing received for two epochs
        }
        if since >= epoch {
            return self.rx_epoch_bytes < light; // that epoch is now the previous one
        }
        self.rx_epoch_bytes < light && self.rx_prev_epoch_bytes.is_none_or(|p| p < light)
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// SYN sent (Init → SynSent).
    pub fn on_syn_sent(&mut self) {
        if self.state == State::Init {
            self.state = State::SynSent;
        }
    }

    /// SYN received (Init → SynReceived).
    pub fn on_syn_received(&mut self) {
        if self.state == State::Init {
            self.state = State::SynReceived;
        }
    }

    /// ACK received on an outbound stream. Returns true the first time.
    pub fn on_ack(&mut self) -> bool {
        if !self.outbound || self.handshaken {
            return false;
        }
        self.handshaken = true;
        if self.state == State::SynSent {
            self.state = State::Established;
        }
        true
    }

    /// We accepted an inbound stream. Returns true the first time.
    pub fn on_accept(&mut self) -> bool {
        if self.outbound || self.handshaken {
            return false;
        }
        self.handshaken = true;
        if self.state == State::SynReceived {
            self.state = State::Established;
        }
        true
    }

    /// We sent FIN. Returns true if the stream is now closed both ways.
    pub fn on_fin_sent(&mut self) -> bool {
        self.fin_pending = false;
        self.state = match self.state {
            State::RemoteClosed | State::Closed => State::Closed,
            State::Reset => State::Reset,
            _ => State::LocalClosed,
        };
        self.state == State::Closed
    }

    /// The peer sent FIN. Returns true if the stream is now closed both ways.
    pub fn on_fin_received(&mut self) -> bool {
        self.state = match self.state {
            State::LocalClosed | State::Closed => State::Closed,
            State::Reset => State::Reset,
            _ => State::RemoteClosed,
        };
        self.state == State::Closed
    }

    /// RST sent or received.
    pub fn on_reset(&mut self) {
        self.state = State::Reset;
        self.backlog = VecDeque::new();
    }

    /// Inbound stream not yet accepted.
    pub fn awaiting_accept(&self) -> bool {
        !self.outbound && !self.handshaken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(outbound: bool) -> Stream {
        Stream::new(1, outbound, 1024, 1024, Instant::now())
    }

    #[test]
    fn outbound_handshake_then_both_fins_close() {
        let mut st = s(true);
        assert_eq!(st.state(), State::Init);
        st.on_syn_sent();
        assert_eq!(st.state(), State::SynSent);
        assert!(st.on_ack());
        assert!(!st.on_ack());
        assert_eq!(st.state(), State::Established);
        assert!(!st.on_fin_sent());
        assert_eq!(st.state(), State::LocalClosed);
        assert!(!st.state().can_send());
        assert!(st.state().can_receive());
        assert!(st.on_fin_received());
        assert_eq!(st.state(), State::Closed);
    }

    #[test]
    fn half_close_before_ack_keeps_handshake_pending() {
        let mut st = s(true);
        st.on_syn_sent();
        st.on_fin_sent();
        assert_eq!(st.state(), State::LocalClosed);
        assert!(st.on_ack());
        assert_eq!(st.state(), State::LocalClosed);
    }

    #[test]
    fn inbound_accept_and_remote_fin_first() {
        let mut st = s(false);
        st.on_syn_received();
        assert!(st.awaiting_accept());
        assert!(!st.on_fin_received());
        assert_eq!(st.state(), State::RemoteClosed);
        assert!(st.on_accept());
        assert!(!st.awaiting_accept());
        assert_eq!(st.state(), State::RemoteClosed);
        assert!(st.state().can_send());
        assert!(st.on_fin_sent());
    }

    #[test]
    fn reset_drops_backlog() {
        let mut st = s(true);
        st.backlog.extend([1u8, 2, 3]);
        st.on_reset();
        assert_eq!(st.state(), State::Reset);
        assert!(st.backlog.is_empty());
        assert!(!st.state().can_send() && !st.state().can_receive());
    }
}
