//! Flow control: per-stream receive window (with auto-tuning), send window, session budget.
//!
//! Receive side invariant: `available + held + consumed == window`, where
//! * `available` is the credit the peer still has (data beyond it is a violation),
//! * `held` is payload delivered to the caller while the stream was read-paused (no credit
//!   is returned for it until unpaused),
//! * `consumed` is payload the caller has taken whose credit we have not yet returned.
//!
//! A window update is due once `consumed >= window / 2` (hashicorp's rule). It returns
//! `consumed` plus, when auto-tuning grows the window, the growth.
//!
//! Auto-tuning (like rust-yamux): if the previous update for this stream went out less than
//! `2 × RTT` ago, the window is the bottleneck (the peer burns half a window in under one
//! round trip), so the window doubles, capped by `max_window` and by the session budget
//! (the sum of all streams' receive windows stays `<= session_budget`). Until a pong has
//! measured the RTT we assume [`ASSUMED_RTT`] = 1 ms: small enough that an unknown link never
//! makes us grow windows by guesswork (growth then needs > ~64 MB/s per stream at 256 KiB),
//! large enough that a loopback/LAN bulk transfer still grows. Which RTT: the session
//! passes the smoothed RTT for a stream alone, and the least measured RTT while a light
//! stream is busy (so its own queue does not count as path delay); then the window also
//! never grows past, and shrinks toward, a floor (see [`RecvWindow::grant`]).

use std::time::{Duration, Instant};

use crate::error::Error;

/// RTT assumed for auto-tuning until a pong measured one.
pub const ASSUMED_RTT: Duration = Duration::from_millis(1);
/// The least RTT auto-tuning works with. Pings measure the path while both event loops
/// are idle (~0.1 ms on loopback), but under load credit comes back an event-loop
/// iteration or two later; windows tuned to the idle figure cost a bulk download 40% of
/// its throughput (measured), windows tuned to the queue-inflated smoothed RTT cost small
/// requests 10x their p99 (head-of-line).
pub const MIN_TUNING_RTT: Duration = Duration::from_micros(250);

/// Sum of all streams' receive windows, bounded by the session budget for growth.
#[derive(Debug, Clone)]
pub struct Budget {
    pub limit: u64,
    /// Sum of the receive windows of all live streams.
    pub windows: u64,
}

impl Budget {
    pub fn new(limit: u64) -> Budget {
        Budget { limit, windows: 0 }
    }

    /// How much the windows may still grow in total.
    pub fn headroom(&self) -> u64 {
        self.limit.saturating_sub(self.windows)
    }
}

/// Receive window of one stream.
#[derive(Debug, Clone)]
pub struct RecvWindow {
    window: u32,
    available: u32,
    held: u32,
    consumed: u32,
    paused: bool,
    last_update: Instant,
}

/// A window update that is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Credit to send.
    pub credit: u32,
    /// Of which growth of the window.
    pub grown: u32,
    /// Consumed bytes not returned: the window shrank by this much.
    pub shrunk: u32,
}

impl RecvWindow {
    /// A window of `window` bytes, all of it available to the peer.
    pub fn new(window: u32, now: Instant) -> RecvWindow {
        RecvWindow {
            window,
            available: window,
            held: 0,
            consumed: 0,
            paused: false,
            last_update: now,
        }
    }

    pub fn window(&self) -> u32 {
        self.window
    }
    pub fn available(&self) -> u32 {
        self.available
    }
    pub fn held(&self) -> u32 {
        self.held
    }
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Enlarge the window by `extra` (advertised with our SYN or ACK): the peer gets the credit.
    pub fn enlarge(&mut self, extra: u32) {
        self.window = self.window.saturating_add(extra);
        self.available = self.available.saturating_add(extra);
    }

    /// May the peer send a frame of `len` bytes now?
    pub fn check(&self, len: u32, sid: u32) -> Result<(), Error> {
        if len > self.available {
            Err(Error::FlowControlViolation(sid))
        } else {
            Ok(())
        }
    }

    /// Account `len` delivered bytes (already checked against `available`). Returns the number
    /// of bytes newly held (0 unless paused).
    pub fn deliver(&mut self, len: u32) -> u32 {
        debug_assert!(len <= self.available);
        self.available -= len.min(self.available);
        if self.paused {
            self.held += len;
            len
        } else {
            self.consumed += len;
            0
        }
    }

    /// Pause or resume. Resuming makes held bytes consumed; returns the bytes released.
    pub fn set_paused(&mut self, paused: bool) -> u32 {
        self.paused = paused;
        if paused {
            return 0;
        }
        let released = self.held;
        self.consumed += released;
        self.held = 0;
        released
    }

    /// Whether a window update is due (half the window consumed).
    pub fn update_due(&self) -> bool {
        self.consumed > 0 && self.consumed >= self.window / 2
    }

    /// Produce the due window update (call only when `update_due`). `rtt` is the RTT to
    /// tune to, if known (see the session's `grant_window`); `max_window` caps growth;
    /// `budget` bounds the sum of windows. With `shrink_to` (the session's contended floor,
    /// passed while a light stream is busy), a window whose half took more than 4 × RTT to
    /// be consumed is oversized for this stream's rate: it shrinks toward `shrink_to` by
    /// returning less credit than was consumed (at most half of it, so a quarter of the
    /// window per update) — what is already granted stays granted. Meanwhile it never
    /// grows past `shrink_to`.
    pub fn grant(
        &mut self,
        now: Instant,
        rtt: Option<Duration>,
        max_window: u32,
        budget: &mut Budget,
        shrink_to: Option<u32>,
    ) -> Grant {
        let rtt = rtt.unwrap_or(ASSUMED_RTT).max(MIN_TUNING_RTT);
        let since = now.saturating_duration_since(self.last_update);
        let mut grown = 0u32;
        let mut shrunk = 0u32;
        // While other streams are busy, no growth past `shrink_to`: a receiver that was
        // off the CPU reads a burst and consumes half a window in microseconds, which
        // looks like a fast link; doubling on that made windows swing between 2 and 6 MiB
        // that small responses then queued behind (measured).
        let cap = shrink_to.map_or(max_window, |floor| floor.min(max_window));
        if since < rtt * 2 && self.window < cap {
            let want = self.window.min(cap - self.window) as u64;
            grown = want.min(budget.headroom()) as u32;
        } else if let Some(floor) = shrink_to {
            if since > rtt * 4 && self.window > floor {
                // Never all of the consumed credit: some always goes back.
                shrunk = (self.window - (self.window / 2).max(floor)).min(self.consumed / 2);
            }
        }
        let credit = self.consumed - shrunk + grown;
        self.window = self.window - shrunk + grown;
        self.available += credit;
        self.consumed = 0;
        self.last_update = now;
        budget.windows = budget.windows + grown as u64 - shrunk as u64;
        Grant {
            credit,
            grown,
            shrunk,
        }
    }
}

/// Send window of one stream: credit the peer gave us. Checked arithmetic: credit past
/// `u32::MAX` is a protocol error, never a wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendWindow(u32);

impl SendWindow {
    pub fn new(initial: u32) -> SendWindow {
        SendWindow(initial)
    }
    pub fn get(self) -> u32 {
        self.0
    }
    pub fn credit(&mut self, n: u32, sid: u32) -> Result<(), Error> {
        self.0 = self.0.checked_add(n).ok_or(Error::WindowOverflow(sid))?;
        Ok(())
    }
    pub fn spend(&mut self, n: u32) {
        debug_assert!(n <= self.0);
        self.0 -= n.min(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u32 = 256 * 1024;

    #[test]
    fn window_update_once_half_consumed() {
        let t = Instant::now();
        let mut w = RecvWindow::new(W, t);
        w.deliver(W / 2 - 1);
        assert!(!w.update_due());
        w.deliver(1);
        assert!(w.update_due());
        let mut b = Budget::new(u64::MAX);
        // Slow: no growth.
        let g = w.grant(t + Duration::from_secs(1), None, 16 << 20, &mut b, None);
        assert_eq!(
            g,
            Grant {
                credit: W / 2,
                grown: 0,
                shrunk: 0
            }
        );
        assert_eq!(w.available(), W);
    }

    #[test]
    fn paused_stream_holds_credit_until_unpaused() {
        let t = Instant::now();
        let mut w = RecvWindow::new(W, t);
        w.set_paused(true);
        assert_eq!(w.deliver(W), W);
        assert!(!w.update_due());
        assert_eq!(w.available(), 0);
        assert!(w.check(1, 1).is_err());
        assert_eq!(w.set_paused(false), W);
        assert!(w.update_due());
    }

    #[test]
    fn auto_tuning_doubles_window_within_max_and_budget() {
        let t = Instant::now();
        let mut w = RecvWindow::new(W, t);
        let mut b = Budget::new(W as u64 + W as u64 / 2);
        b.windows = W as u64;
        w.deliver(W / 2);
        // Fast consumer: update due well within 2 × RTT.
        let g = w.grant(
            t + Duration::from_micros(100),
            Some(Duration::from_millis(10)),
            16 << 20,
            &mut b,
            None,
        );
        // Budget allows only W/2 more.
        assert_eq!(g.grown, W / 2);
        assert_eq!(w.window(), W + W / 2);
        assert_eq!(b.windows, b.limit);
        // Capped by max_window.
        let mut w2 = RecvWindow::new(W, t);
        let mut b2 = Budget::new(u64::MAX);
        w2.deliver(W / 2);
        let g2 = w2.grant(t, Some(Duration::from_millis(10)), W + 1000, &mut b2, None);
        assert_eq!(g2.grown, 1000);
    }

    #[test]
    fn an_oversized_window_shrinks_by_half_toward_the_floor_when_asked() {
        let t = Instant::now();
        let rtt = Some(Duration::from_millis(1));
        let mut w = RecvWindow::new(4 * W, t);
        let mut b = Budget::new(u64::MAX);
        b.windows = 4 * W as u64;
        // Half the window took 10 ms (> 4 x RTT): halve, returning the rest of the credit.
        w.deliver(2 * W);
        let g = w.grant(
            t + Duration::from_millis(10),
            rtt,
            16 << 20,
            &mut b,
            Some(W),
        );
        assert_eq!((g.credit, g.grown, g.shrunk), (W, 0, W));
        assert_eq!((w.window(), w.available()), (3 * W, 3 * W));
        assert_eq!(b.windows, 3 * W as u64);
        // Without shrink_to (the stream is alone) the same pace keeps the window.
        let mut w2 = RecvWindow::new(4 * W, t);
        w2.deliver(2 * W);
        let g2 = w2.grant(t + Duration::from_millis(10), rtt, 16 << 20, &mut b, None);
        assert_eq!((g2.credit, g2.shrunk), (2 * W, 0));
        // Never below the floor; never the whole consumed credit.
        let mut w3 = RecvWindow::new(W + 1000, t);
        w3.deliver(W / 2 + 500);
        let g3 = w3.grant(
            t + Duration::from_millis(10),
            rtt,
            16 << 20,
            &mut b,
            Some(W),
        );
        assert_eq!((g3.shrunk, w3.window()), (1000, W));
        assert!(g3.credit > 0);
    }

    #[test]
    fn send_window_overflow_is_an_error_not_a_wrap() {
        let mut s = SendWindow::new(W);
        assert_eq!(s.credit(u32::MAX - W, 3), Ok(()));
        assert_eq!(s.get(), u32::MAX);
        assert_eq!(s.credit(1, 3), Err(Error::WindowOverflow(3)));
    }
}
