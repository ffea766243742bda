//! The sans-IO yamux session: bytes in → packed events out; calls in → bytes to send.
//!
//! * `receive` parses frames from the caller's buffer without copying payload: an
//!   [`EVENT_DATA`] names `(offset, len)` into that very buffer. At most 11 header bytes are
//!   kept between calls; a frame's payload is reported chunk by chunk as it arrives.
//! * Control frames (window updates, SYN/ACK, FIN, RST, pings and their answers, GoAway)
//!   are appended to one outgoing buffer as calls and input produce them. Stream data
//!   normally is not: `send` appends to the stream's backlog, and
//!   [`Session::take_outgoing_limited`] frames it at take time, after the queued frames,
//!   round-robin across the streams that
//!   have backlog and send window (a ring of stream ids: O(1) per frame, no scan), one frame
//!   of at most `max_frame_payload` per stream per round, within an optional byte budget.
//!   Per stream the order is preserved: its SYN/ACK is queued before any of its data can be
//!   framed, its FIN only once its last byte is framed, RST drops its backlog. Window
//!   updates are coalesced — at most one pending per stream in the outgoing buffer, later
//!   credit is added into it in place. Every ping is answered with
//!   its own opaque value (hashicorp matches each answer to its ping), and every open past
//!   the limits is refused with RST — while the outgoing buffer holds less than
//!   [`MAX_UNSENT_ANSWERS`]. Past it, pings go unanswered and a refused open is fatal
//!   ([`Error::RefusalFlood`]). So a peer that provokes answers but never reads cannot grow
//!   our queue without bound, and a peer that reads gets every answer, however many
//!   pings or opens one read carried.
//! * Direct framing: a send of at least [`DIRECT_FRAME_MIN`] bytes, on a stream with no
//!   backlog, while no other stream waits in the scheduler, is framed straight into the
//!   outgoing buffer (up to [`DIRECT_FRAME_LIMIT`] queued): one copy instead of two
//!   (backlog, then frame) for a lone bulk stream. Budgeted takes split such a frame at
//!   the budget; control frames queued after it follow it.
//! * Back-pressure: `send` returns the bytes of the backlog *beyond the send window* (what
//!   waits for the peer's credit; the bytes within the window are committed to the next
//!   take). `pending_high_water`/`pending_low_water` and [`EVENT_WRITABLE`] apply to that
//!   same number, so WRITABLE is raised by `receive` (on credit), exactly when the
//!   write-everything-at-once design raised it.
//! * FIN goes out as its own empty WindowUpdate frame after the last data frame, as hashicorp
//!   sends it: hashicorp v0.1.2 (`stream.readData`) applies a data frame's FIN *before* it
//!   buffers that frame's payload, so a concurrent `Read` can see EOF and lose the payload.
//! * Time is passed in (`*_at(now)`) so tests are deterministic; the plain methods read
//!   `Instant::now()`.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use crate::error::{ConfigError, Error, GOAWAY_INTERNAL, GOAWAY_PROTOCOL};
use crate::flow::Budget;
use crate::frame::{Flags, FrameType, Header, DEFAULT_WINDOW, HEADER_LEN};
use crate::stream::Stream;

/// Peer opened `stream_id` (SYN); accept it with [`Session::accept_stream`].
pub const EVENT_OPENED: u32 = 1;
/// Payload for `stream_id` is `input[a .. a + b]` of this `receive` call.
pub const EVENT_DATA: u32 = 2;
/// Peer half-closed `stream_id`.
pub const EVENT_FIN: u32 = 3;
/// Peer reset (or refused) `stream_id`; it is gone.
pub const EVENT_RESET: u32 = 4;
/// `stream_id`'s backlog fell to `<= pending_low_water` after passing high water.
pub const EVENT_WRITABLE: u32 = 5;
/// `stream_id` is closed both ways and forgotten.
pub const EVENT_CLOSED: u32 = 6;
/// Peer sent GoAway; `a` = code.
pub const EVENT_GOAWAY: u32 = 7;
/// A ping we sent was answered; `a` = RTT in microseconds.
pub const EVENT_PONG: u32 = 8;
/// Peer accepted (ACK) a stream we opened.
pub const EVENT_ACKED: u32 = 9;

/// Size of one packed event.
pub const EVENT_LEN: usize = 16;

/// Outstanding pings we track (more are sent but their answers are ignored).
const MAX_TRACKED_PINGS: usize = 64;

/// Answers the peer provokes (ping answers, RSTs refusing its opens) are queued only while
/// the outgoing buffer holds less than this: room for one flush of directly framed data
/// plus 64 KiB (5,461 twelve-byte answers). Past it the peer is not reading what we send.
pub const MAX_UNSENT_ANSWERS: usize = DIRECT_FRAME_LIMIT + 64 * 1024;

/// How far below the highest peer stream id (counted in ids of the peer's parity) a SYN may
/// still open a stream. See [`PeerIds`].
pub const PEER_ID_REORDER_WINDOW: u32 = 1024;

/// Session configuration (see the Python stub for meanings and defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub client: bool,
    pub initial_window: u32,
    pub max_window: u32,
    pub session_budget: u64,
    pub max_frame_payload: u32,
    pub max_streams: u32,
    pub accept_backlog: u32,
    pub keepalive_interval_ms: u64,
    pub keepalive_timeout_ms: u64,
    pub pending_high_water: usize,
    pub pending_low_water: usize,
    pub max_resets_per_second: u32,
    /// The most streams the peer may ever open in this session (0: no limit but
    /// `max_streams`). More is a protocol violation: an edge allows its agent one, the
    /// control stream.
    pub max_peer_streams: u32,
}

impl Config {
    /// The defaults of the Python stub.
    pub fn new(client: bool) -> Config {
        Config {
            client,
            initial_window: DEFAULT_WINDOW,
            max_window: 16 * 1024 * 1024,
            session_budget: 64 * 1024 * 1024,
            max_frame_payload: 16 * 1024,
            max_streams: 65536,
            accept_backlog: 256,
            keepalive_interval_ms: 30_000,
            keepalive_timeout_ms: 10_000,
            pending_high_water: 1024 * 1024,
            pending_low_water: 256 * 1024,
            max_resets_per_second: 1000,
            max_peer_streams: 0,
        }
    }

    /// Check ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError(m.to_string()));
        if self.initial_window < DEFAULT_WINDOW {
            return bad("initial_window must be at least 262144 (256 KiB)");
        }
        if self.max_window < self.initial_window {
            return bad("max_window must be >= initial_window");
        }
        if self.session_budget < self.initial_window as u64 {
            return bad("session_budget must be >= initial_window");
        }
        if self.max_frame_payload == 0 {
            return bad("max_frame_payload must be positive");
        }
        if self.max_streams == 0 {
            return bad("max_streams must be positive");
        }
        if self.keepalive_interval_ms > 0 && self.keepalive_timeout_ms == 0 {
            return bad("keepalive_timeout_ms must be positive when keepalive is enabled");
        }
        if self.pending_low_water > self.pending_high_water {
            return bad("pending_low_water must be <= pending_high_water");
        }
        if self.max_resets_per_second == 0 {
            return bad("max_resets_per_second must be positive");
        }
        Ok(())
    }
}

/// Monotonic counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub data_frames_in: u64,
    pub data_frames_out: u64,
    pub window_updates_in: u64,
    pub window_updates_out: u64,
    pub pings_in: u64,
    pub pings_out: u64,
    pub streams_opened_local: u64,
    pub streams_opened_remote: u64,
    pub streams_reset_local: u64,
    pub streams_reset_remote: u64,
    /// Peer-opened streams answered with RST (goaway, max_streams, accept backlog);
    /// also counted in `streams_reset_local`.
    pub streams_refused: u64,
    pub window_stalls: u64,
    pub window_grows: u64,
    pub window_shrinks: u64,
    /// Payload bytes `send` framed at once (one copy), a subset of `bytes_out`.
    pub bytes_framed_directly: u64,
    pub protocol_errors: u64,
    /// GoAway frames sent (by `go_away` or a fatal error) and received.
    pub goaways_out: u64,
    pub goaways_in: u64,
}

impl Stats {
    /// `(name, value)` pairs in a stable order.
    pub fn fields(&self) -> [(&'static str, u64); 22] {
        [
            ("frames_in", self.frames_in),
            ("frames_out", self.frames_out),
            ("bytes_in", self.bytes_in),
            ("bytes_out", self.bytes_out),
            ("data_frames_in", self.data_frames_in),
            ("data_frames_out", self.data_frames_out),
            ("window_updates_in", self.window_updates_in),
            ("window_updates_out", self.window_updates_out),
            ("pings_in", self.pings_in),
            ("pings_out", self.pings_out),
            ("streams_opened_local", self.streams_opened_local),
            ("streams_opened_remote", self.streams_opened_remote),
            ("streams_reset_local", self.streams_reset_local),
            ("streams_reset_remote", self.streams_reset_remote),
            ("streams_refused", self.streams_refused),
            ("window_stalls", self.window_stalls),
            ("window_grows", self.window_grows),
            ("window_shrinks", self.window_shrinks),
            ("bytes_framed_directly", self.bytes_framed_directly),
            ("protocol_errors", self.protocol_errors),
            ("goaways_out", self.goaways_out),
            ("goaways_in", self.goaways_in),
        ]
    }
}

/// One unpacked event (tests and Rust callers; Python walks the packed bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub kind: u32,
    pub stream_id: u32,
    pub a: u32,
    pub b: u32,
}

/// Unpack packed events.
pub fn unpack_events(buf: &[u8]) -> impl Iterator<Item = Event> + '_ {
    buf.chunks_exact(EVENT_LEN).map(|c| {
        let w = |i: usize| u32::from_ne_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
        Event {
            kind: w(0),
            stream_id: w(4),
            a: w(8),
            b: w(12),
        }
    })
}

/// Cheap hasher for stream ids (mostly sequential integers; the map holds at most
/// `max_streams` keys, and the peer's ids only grow, apart from a bounded reorder window).
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type StreamMap = HashMap<u32, Stream, BuildHasherDefault<IdHasher>>;

/// Which stream ids the peer has used.
///
/// hashicorp/yamux allocates ids atomically but sends each SYN from the opening goroutine, so
/// SYNs of concurrent `OpenStream` calls reach us out of id order; the spec asks only for the
/// right parity. Remembering every id ever used would be unbounded, so:
///
/// * `max` is the highest id the peer has used; a SYN above it always opens a stream.
/// * A SYN at most [`PEER_ID_REORDER_WINDOW`] ids (of the peer's parity) below `max` opens a
///   stream if that id was never used: a ring of that many bits, one per id, records use.
/// * A SYN further below `max`, or on an id used before (closed, reset, refused), is
///   `InvalidStreamId` (ids are never reused); on a live id it is `DuplicateStream`.
/// * A non-SYN frame on a non-live id `<= max` is ignored, payload dropped — what hashicorp
///   does for frames of unknown streams (`handleStreamMessage`): late frames of closed or
///   reset streams are normal. A non-SYN frame above `max` is `InvalidStreamId`.
///
/// Memory: 128 bytes, whatever the peer does.
#[derive(Debug, Clone)]
struct PeerIds {
    max: u32,
    used: [u64; (PEER_ID_REORDER_WINDOW / 64) as usize],
}

impl PeerIds {
    fn new() -> PeerIds {
        PeerIds {
            max: 0,
            used: [0; (PEER_ID_REORDER_WINDOW / 64) as usize],
        }
    }

    /// Ring slot of an id: ids of one parity are `2k` or `2k + 1`; `k` numbers them.
    fn slot(sid: u32) -> (usize, u64) {
        let k = (sid >> 1) % PEER_ID_REORDER_WINDOW;
        ((k / 64) as usize, 1u64 << (k % 64))
    }

    /// May a SYN on `sid` (right parity, not live) open a stream?
    fn may_open(&self, sid: u32) -> bool {
        if sid > self.max {
            return true;
        }
        if (self.max >> 1) - (sid >> 1) >= PEER_ID_REORDER_WINDOW {
            return false; // below the window: treated as used
        }
        let (w, b) = PeerIds::slot(sid);
        self.used[w] & b == 0
    }

    /// Record that the peer used `sid` (a SYN, accepted or refused).
    fn mark(&mut self, sid: u32) {
        if sid > self.max {
            let (old, new) = (self.max >> 1, sid >> 1);
            if new - old >= PEER_ID_REORDER_WINDOW {
                self.used = [0; (PEER_ID_REORDER_WINDOW / 64) as usize];
            } else {
                // Ids entering the window (old, new] are unused so far.
                for k in old + 1..=new {
                    let (w, b) = PeerIds::slot(k << 1);
                    self.used[w] &= !b;
                }
            }
            self.max = sid;
        }
        let (w, b) = PeerIds::slot(sid);
        self.used[w] |= b;
    }
}

/// A data frame whose payload is still arriving.
#[derive(Debug, Clone, Copy)]
struct Payload {
    sid: u32,
    remaining: u32,
    flags: Flags,
    deliver: bool,
}

/// The session.
/// Bytes of one stream framed per round-robin turn (a few frames): fair at sub-millisecond
/// granularity, yet long enough runs for the receiver to coalesce writes.
pub const DATA_QUANTUM: usize = 64 * 1024;
/// A stream's window is tuned for sharing the link while a light stream received data
/// this recently (see `grant_window`); also the epoch of `Stream::note_rx`.
pub const CONTENTION_WINDOW: Duration = Duration::from_millis(100);
/// A stream receiving less than this per CONTENTION_WINDOW (2.6 MB/s) is light traffic.
pub const LIGHT_STREAM_BYTES: u64 = 256 * 1024;
/// While contended, windows shrink to (and never grow past) the initial window divided by
/// this: 128 KiB by default, which at the least RTT (250 µs at most, see MIN_TUNING_RTT)
/// still allows 500 MB/s. Measured beside 200 req/s of small requests on the 2-core
/// machine (p99 beside / bulk MB/s, medians of 6): 256 KiB 13.0 ms / 280; 128 KiB
/// 6.6 ms / 227; 64 KiB 5.6 ms / 192. The tail is mostly CPU: less bulk rate, fewer
/// runnable processes; 128 KiB halves it for a fifth of the bulk rate.
pub const CONTENDED_WINDOW_DIVISOR: u32 = 2;
/// Pings the session sends on its first ticks to measure the path while the link is
/// still quiet (one could meet the agent's own setup traffic), [`RTT_PROBE_INTERVAL`] apart.
pub const RTT_PROBES: u32 = 4;
pub const RTT_PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// `send` frames straight into the outgoing buffer (one copy, not two: backlog, then
/// frame) while no other stream waits in the scheduler, the stream has no backlog, and
/// the outgoing buffer holds less than this. It equals the link's write budget per
/// flush, so a small frame never waits behind more than one flush of bulk data.
pub const DIRECT_FRAME_LIMIT: usize = 256 * 1024;
/// Smaller sends take the backlog: there consecutive small sends of one stream become one
/// frame at take time, and the copy saved would be negligible.
pub const DIRECT_FRAME_MIN: usize = 8 * 1024;

pub struct Session {
    cfg: Config,
    streams: StreamMap,
    /// Next id we open (u64 so exhaustion is visible).
    next_id: u64,
    /// Ids the peer opened (highest, and which ones just below it).
    peer_ids: PeerIds,
    /// Inbound streams not yet accepted.
    unaccepted: u32,
    /// `unaccepted` when the current `receive` call began: the streams the application
    /// left unaccepted after it last saw events. The accept backlog counts only these,
    /// because the application cannot accept in the middle of a receive call: a burst of
    /// opens in one read (a few hundred visitors arriving at once) is not a slow
    /// application, and refusing it would reset visitors the agent was ready to serve.
    unaccepted_at_receive: u32,
    // ---- input ----
    hdr: [u8; HEADER_LEN],
    hdr_len: usize,
    payload: Option<Payload>,
    events: Vec<u8>,
    events_handed: bool,
    // ---- output ----
    out: Vec<u8>,
    /// Bumped whenever the outgoing buffer is taken; pending-frame offsets are valid only in
    /// their generation.
    out_gen: u64,
    /// Bytes drained from the front of `out` by partial (budgeted) takes in this generation;
    /// `wu_at` offsets are logical (`out_base + index`).
    out_base: usize,
    /// Length of the last outgoing buffer taken (capacity hint for the next one).
    out_hint: usize,
    /// Round-robin ring of streams that have backlog and send window (`Stream::in_ring`).
    /// Ids of streams forgotten while queued stay until popped (ids are never reused).
    ring: VecDeque<u32>,
    /// Live streams in `ring`.
    ring_live: usize,
    /// Sum over streams of `min(backlog, send window)`: payload that could be framed now.
    pending_data: u64,
    // ---- pings ----
    next_ping: u32,
    pings: VecDeque<(u32, Instant)>,
    srtt: Option<Duration>,
    /// The least RTT any ping measured: what auto-tuning uses while streams contend.
    min_rtt: Option<Duration>,
    /// The two light streams (see `Stream::note_rx`) that last received data, and when
    /// (0: none); two, so a stream still light itself does not hide the other.
    last_light_rx: [(u32, Instant); 2],
    /// Probes (of RTT_PROBES) sent so far, and when the last one went.
    rtt_probes_sent: u32,
    rtt_probe_at: Option<Instant>,
    next_keepalive: Instant,
    /// When bytes last came from the peer. A ping counts as unanswered only after the
    /// peer has been silent for the timeout since it went: on a saturated link its pong
    /// may wait seconds behind bulk data, which proves the peer alive meanwhile.
    last_input: Instant,
    // ---- lifecycle ----
    local_goaway: bool,
    /// The ping sent right behind a draining GoAway (`go_away_draining`): until its answer
    /// comes back, the peer may have opened streams before it read our GoAway, and they
    /// are accepted. Its answer follows every SYN the peer sent before reading the GoAway.
    crossing_ping: Option<u32>,
    remote_goaway: bool,
    dead: bool,
    // ---- rapid-reset defence ----
    reset_window_start: Instant,
    resets_in_window: u32,
    budget: Budget,
    stats: Stats,
}

impl Session {
    /// A session reading the monotonic clock.
    pub fn new(cfg: Config) -> Result<Session, ConfigError> {
        Session::new_at(cfg, Instant::now())
    }

    /// A session created at `now`.
    pub fn new_at(cfg: Config, now: Instant) -> Result<Session, ConfigError> {
        cfg.validate()?;
        let next_id = if cfg.client { 1 } else { 2 };
        let budget = Budget::new(cfg.session_budget);
        Ok(Session {
            next_keepalive: now + Duration::from_millis(cfg.keepalive_interval_ms),
            last_input: now,
            cfg,
            streams: StreamMap::default(),
            next_id,
            peer_ids: PeerIds::new(),
            unaccepted: 0,
            unaccepted_at_receive: 0,
            hdr: [0; HEADER_LEN],
            hdr_len: 0,
            payload: None,
            events: Vec::with_capacity(64 * EVENT_LEN),
            events_handed: false,
            out: Vec::with_capacity(64 * 1024),
            out_gen: 1,
            out_base: 0,
            out_hint: 0,
            ring: VecDeque::new(),
            ring_live: 0,
            pending_data: 0,
            next_ping: 1,
            pings: VecDeque::new(),
            srtt: None,
            min_rtt: None,
            last_light_rx: [(0, now); 2],
            rtt_probes_sent: 0,
            rtt_probe_at: None,
            local_goaway: false,
            crossing_ping: None,
            remote_goaway: false,
            dead: false,
            reset_window_start: now,
            resets_in_window: 0,
            budget,
            stats: Stats::default(),
        })
    }

    // ================================================================ properties

    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// Bytes already framed and waiting to be taken: control frames only (window updates,
    /// SYN/ACK, FIN, RST, pings, GoAway). Stream data is framed at take time.
    pub fn outgoing_len(&self) -> usize {
        self.out.len()
    }
    /// Stream payload that could be framed now: the sum over streams of
    /// `min(unframed backlog, send window)` (excludes frame headers and blocked bytes).
    pub fn pending_data(&self) -> u64 {
        if self.dead {
            0 // nothing more is framed after a fatal error
        } else {
            self.pending_data
        }
    }
    /// Some stream has payload that the next take would frame (O(1)).
    pub fn has_sendable(&self) -> bool {
        self.ring_live > 0 && !self.dead
    }
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }
    pub fn is_closed(&self) -> bool {
        self.dead || (self.local_goaway && self.remote_goaway && self.streams.is_empty())
    }
    pub fn is_dead(&self) -> bool {
        self.dead
    }
    pub fn local_went_away(&self) -> bool {
        self.local_goaway
    }
    /// After `go_away_draining`: true until the peer has surely read our GoAway (the
    /// answer to the ping behind it came back), i.e. while streams it opened before that
    /// may still arrive, and are accepted.
    pub fn goaway_crossing(&self) -> bool {
        self.crossing_ping.is_some()
    }
    pub fn remote_went_away(&self) -> bool {
        self.remote_goaway
    }
    /// The least RTT any ping measured: the path without our own queue, which windows
    /// are tuned to while streams contend (see `grant_window`).
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// Smoothed RTT in microseconds, 0 until measured.
    pub fn rtt_us(&self) -> u64 {
        self.srtt.map_or(0, |d| d.as_micros() as u64)
    }
    /// Sum of all streams' receive windows (bounded by `session_budget` for growth).
    pub fn receive_windows_total(&self) -> u64 {
        self.budget.windows
    }
    /// `(receive window, send window)` of a stream.
    pub fn stream_window(&self, sid: u32) -> Result<(u32, u32), Error> {
        let st = self.streams.get(&sid).ok_or(Error::UnknownStream(sid))?;
        Ok((st.recv.window(), st.send.get()))
    }
    /// Unframed bytes of a stream (all of them, whether or not the send window covers them).
    pub fn stream_backlog(&self, sid: u32) -> Result<usize, Error> {
        let st = self.streams.get(&sid).ok_or(Error::UnknownStream(sid))?;
        Ok(st.backlog.len())
    }

    // ================================================================ output

    /// The control frames queued for the link (not yet taken). Stream data is not in here:
    /// it is framed by the `take_outgoing*` calls.
    pub fn outgoing(&self) -> &[u8] {
        &self.out
    }

    /// Forget the queued control frames (after copying them out), keeping the capacity.
    pub fn clear_outgoing(&mut self) {
        self.out.clear();
        if self.out.capacity() > 4 * 1024 * 1024 {
            self.out.shrink_to(64 * 1024);
        }
        self.out_gen += 1;
        self.out_base = 0;
    }

    /// Everything sendable, framed: `take_outgoing_limited(None)`.
    pub fn take_outgoing(&mut self) -> Vec<u8> {
        self.take_outgoing_limited(None)
    }

    /// Frames for the link, at most `max_bytes` of them (headers included).
    ///
    /// First the control frames queued by calls and input (window updates, SYN/ACK, FIN,
    /// RST, ping answers, GoAway) in the order they were queued, then stream data framed now,
    /// round-robin over the streams that have backlog and send window: one frame of at most
    /// `max_frame_payload` per stream per round (the round continues across takes). A
    /// stream's FIN follows its last data frame (in this take, or first in the next one).
    ///
    /// Budget: the result never exceeds `max_bytes`, except that it is never empty while
    /// something is sendable: if not even one minimal frame fits, exactly one frame is
    /// returned (a 12-byte control frame, or else a data frame with 1 byte of payload, 13
    /// bytes). The last data frame of a take may be shortened to fill the budget.
    /// `None` frames everything sendable and moves the buffer out without copying.
    pub fn take_outgoing_limited(&mut self, max_bytes: Option<usize>) -> Vec<u8> {
        let limit = max_bytes.unwrap_or(usize::MAX);
        let ctrl = self.out.len();
        if ctrl > limit {
            return self.take_queued_prefix(limit);
        }
        let mut room = limit - ctrl;
        if ctrl == 0 {
            room = room.max(HEADER_LEN + 1);
        }
        let deferred_fin = if self.dead {
            None
        } else {
            self.frame_data(&mut room)
        };
        let out = self.hand_out();
        if let Some(sid) = deferred_fin {
            // Its last data frame is in `out`: the FIN leads the next take.
            self.send_fin(sid);
        }
        out
    }

    /// Move the whole outgoing buffer out (no copy) and start a new generation.
    fn hand_out(&mut self) -> Vec<u8> {
        self.out_gen += 1;
        self.out_base = 0;
        if self.out.is_empty() {
            return Vec::new();
        }
        // Smoothed size hint, rounded up to a power of two and clamped: enough that a steady
        // flow rarely reallocates, small enough that one burst does not pin a big buffer.
        self.out_hint = (self.out_hint + self.out.len()) / 2;
        let cap = self
            .out_hint
            .next_power_of_two()
            .clamp(4 * 1024, 1024 * 1024);
        std::mem::replace(&mut self.out, Vec::with_capacity(cap))
    }

    /// The queued frames are more than the budget: hand out the whole frames that fit and,
    /// where a data frame (framed directly by `send`) straddles the budget, its first part
    /// (the rest stays queued under a rewritten header). Control frames (header only) are
    /// never split. At least one frame: a control frame, or a data frame's first byte.
    fn take_queued_prefix(&mut self, limit: usize) -> Vec<u8> {
        let mut k = 0;
        let mut split = None;
        while k + HEADER_LEN <= self.out.len() {
            let h = &self.out[k..k + HEADER_LEN];
            let is_data = h[1] == FrameType::Data as u8;
            let payload = if is_data {
                u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize
            } else {
                0
            };
            if k + HEADER_LEN + payload > limit && (k > 0 || is_data) {
                let room = limit.saturating_sub(k + HEADER_LEN);
                if is_data && payload > 1 && (room > 0 || k == 0) {
                    split = Some(room.max(1));
                } else if k == 0 {
                    k = HEADER_LEN + payload; // a 1-byte data frame: 13 bytes, as promised
                }
                break;
            }
            k += HEADER_LEN + payload;
        }
        let mut taken = Vec::with_capacity(k + split.map_or(0, |n| HEADER_LEN + n));
        taken.extend_from_slice(&self.out[..k]);
        let mut drained = k;
        if let Some(n) = split {
            // out[k..]: header, payload. Take header(len n) + payload[..n]; write the rest's
            // header just before payload[n..] (over bytes already copied), then drain.
            let mut head = [0u8; HEADER_LEN];
            head.copy_from_slice(&self.out[k..k + HEADER_LEN]);
            let total = u32::from_be_bytes([head[8], head[9], head[10], head[11]]) as usize;
            head[8..].copy_from_slice(&(n as u32).to_be_bytes());
            taken.extend_from_slice(&head);
            taken.extend_from_slice(&self.out[k + HEADER_LEN..k + HEADER_LEN + n]);
            head[8..].copy_from_slice(&((total - n) as u32).to_be_bytes());
            self.out[k + n..k + n + HEADER_LEN].copy_from_slice(&head);
            drained = k + n;
        }
        self.out.drain(..drained);
        self.out_base += drained;
        taken
    }

    /// Frame stream data round-robin into `out` while `room` allows a frame with at least one
    /// payload byte. Returns a stream whose FIN is due but did not fit.
    fn frame_data(&mut self, room: &mut usize) -> Option<u32> {
        let maxp = self.cfg.max_frame_payload as usize;
        let mut deferred = None;
        while *room > HEADER_LEN && self.ring_live > 0 {
            let Some(sid) = self.ring.pop_front() else {
                break;
            };
            let Some(st) = self.streams.get_mut(&sid) else {
                continue; // forgotten while queued (ring_live already fixed by forget)
            };
            let avail = sendable(st);
            if avail == 0 {
                st.in_ring = false;
                self.ring_live -= 1;
                continue;
            }
            // A turn is up to DATA_QUANTUM bytes (several frames) of this stream: the
            // receiver joins consecutive frames of one stream into one socket write, so
            // a quantum of one 16 KiB frame would cost it a syscall per frame.
            let mut quantum = DATA_QUANTUM.max(maxp);
            let mut left = avail;
            while left > 0 && quantum > 0 && *room > HEADER_LEN {
                let n = left.min(maxp).min(quantum).min(*room - HEADER_LEN);
                Header::new(FrameType::Data, Flags::NONE, sid, n as u32).encode_into(&mut self.out);
                let (a, b) = st.backlog.as_slices();
                let na = n.min(a.len());
                self.out.extend_from_slice(&a[..na]);
                self.out.extend_from_slice(&b[..n - na]);
                st.backlog.drain(..n);
                st.send.spend(n as u32);
                self.pending_data -= n as u64;
                *room -= HEADER_LEN + n;
                self.stats.frames_out += 1;
                self.stats.data_frames_out += 1;
                self.stats.bytes_out += n as u64;
                left -= n;
                quantum -= n;
            }
            if left > 0 {
                self.ring.push_back(sid);
            } else {
                st.in_ring = false;
                self.ring_live -= 1;
            }
            note_stall(&mut self.stats, st);
            if st.backlog.is_empty() {
                if st.backlog.capacity() > 64 * 1024 {
                    st.backlog = VecDeque::new();
                }
                if st.fin_pending {
                    if *room >= HEADER_LEN {
                        *room -= HEADER_LEN;
                        self.send_fin(sid);
                    } else {
                        deferred = Some(sid);
                        break;
                    }
                }
            }
        }
        if self.ring_live == 0 {
            self.ring.clear(); // only ids of forgotten streams can be left
        }
        deferred
    }

    /// Events queued by calls (e.g. EVENT_CLOSED when `close_stream` completes a close)
    /// since the last `receive`/`take_events`; `receive` returns them first as well.
    pub fn take_events(&mut self) -> &[u8] {
        if self.events_handed {
            self.events.clear();
        }
        self.events_handed = true;
        &self.events
    }

    /// Whether calls queued events that no `receive`/`take_events` has returned yet: the
    /// byte path asks this once per flush and dispatches them (an EVENT_CLOSED must not wait
    /// for the link's next input, which may be a keepalive ping seconds away).
    pub fn has_events(&self) -> bool {
        !self.events_handed && !self.events.is_empty()
    }

    // ================================================================ input

    /// Feed bytes read from the link; returns packed events.
    pub fn receive(&mut self, data: &[u8]) -> Result<&[u8], Error> {
        self.receive_at(data, Instant::now())
    }

    /// `receive` at time `now`.
    pub fn receive_at(&mut self, data: &[u8], now: Instant) -> Result<&[u8], Error> {
        if self.dead {
            return Err(Error::SessionClosed);
        }
        if self.events_handed {
            self.events.clear();
            self.events_handed = false;
        }
        match self.receive_inner(data, now) {
            Ok(()) => {
                self.events_handed = true;
                Ok(&self.events)
            }
            Err(e) => {
                self.events.clear();
                Err(self.fail(e))
            }
        }
    }

    fn receive_inner(&mut self, data: &[u8], now: Instant) -> Result<(), Error> {
        self.unaccepted_at_receive = self.unaccepted;
        if !data.is_empty() {
            self.last_input = now;
        }
        let mut pos = 0usize;
        while pos < data.len() {
            if let Some(mut p) = self.payload {
                let n = (p.remaining as usize).min(data.len() - pos) as u32;
                self.stats.bytes_in += n as u64;
                if p.deliver {
                    p.deliver = self.deliver(p.sid, pos, n, now);
                }
                pos += n as usize;
                p.remaining -= n;
                if p.remaining == 0 {
                    self.payload = None;
                    self.finish_frame(p.sid, p.flags, now)?;
                } else {
                    self.payload = Some(p);
                }
                continue;
            }
            let header = if self.hdr_len == 0 && data.len() - pos >= HEADER_LEN {
                let h = Header::decode(data[pos..pos + HEADER_LEN].try_into().expect("12 bytes"));
                pos += HEADER_LEN;
                h?
            } else {
                let take = (HEADER_LEN - self.hdr_len).min(data.len() - pos);
                self.hdr[self.hdr_len..self.hdr_len + take].copy_from_slice(&data[pos..pos + take]);
                self.hdr_len += take;
                pos += take;
                if self.hdr_len < HEADER_LEN {
                    break;
                }
                self.hdr_len = 0;
                Header::decode(&self.hdr)?
            };
            self.on_header(header, now)?;
        }
        Ok(())
    }

    /// A chunk of a data frame's payload arrived. Returns whether later chunks are delivered.
    fn deliver(&mut self, sid: u32, pos: usize, n: u32, now: Instant) -> bool {
        let Some(st) = self.streams.get_mut(&sid) else {
            return false; // reset by a call between two receive() calls
        };
        st.recv.deliver(n);
        let due = st.recv.update_due();
        if st.note_rx(n, now, CONTENTION_WINDOW, LIGHT_STREAM_BYTES) {
            if self.last_light_rx[0].0 != sid {
                self.last_light_rx[1] = self.last_light_rx[0];
            }
            self.last_light_rx[0] = (sid, now);
        }
        push_event(&mut self.events, EVENT_DATA, sid, pos as u32, n);
        if due {
            self.grant_window(sid, now);
        }
        true
    }

    fn on_header(&mut self, h: Header, now: Instant) -> Result<(), Error> {
        self.stats.frames_in += 1;
        match h.typ {
            FrameType::Data | FrameType::WindowUpdate => self.on_stream_frame(h, now),
            FrameType::Ping => self.on_ping(h, now),
            FrameType::GoAway => {
                if h.stream_id != 0 {
                    return Err(Error::InvalidStreamId(h.stream_id));
                }
                self.remote_goaway = true;
                self.stats.goaways_in += 1;
                self.push_event(EVENT_GOAWAY, 0, h.length, 0);
                Ok(())
            }
        }
    }

    fn is_ours(&self, sid: u32) -> bool {
        (sid % 2 == 1) == self.cfg.client
    }

    fn on_stream_frame(&mut self, h: Header, now: Instant) -> Result<(), Error> {
        let sid = h.stream_id;
        let f = h.flags;
        let is_data = h.typ == FrameType::Data;
        if is_data {
            self.stats.data_frames_in += 1;
        } else {
            self.stats.window_updates_in += 1;
        }
        if sid == 0 {
            return Err(Error::InvalidStreamId(0));
        }
        if f.contains(Flags::SYN) && f.contains(Flags::ACK) {
            return Err(Error::InvalidFlags(f.bits()));
        }
        let live = if f.contains(Flags::SYN) {
            // CVE-2026-32314: refuse an oversize SYN data frame before allocating anything.
            if is_data && h.length > DEFAULT_WINDOW {
                return Err(Error::FlowControlViolation(sid));
            }
            self.open_inbound(sid, now)?
        } else if self.streams.contains_key(&sid) {
            true
        } else {
            // Not live: a late frame for a stream that existed is ignored; an id that was
            // never opened is a protocol error.
            let known = if self.is_ours(sid) {
                (sid as u64) < self.next_id
            } else {
                sid <= self.peer_ids.max
            };
            if !known {
                return Err(Error::InvalidStreamId(sid));
            }
            // Known but not live: closed, reset or refused (or, for a peer id in the reorder
            // window, not opened yet): ignored like hashicorp does, payload dropped.
            false
        };
        if is_data && h.length > self.cfg.max_window {
            return Err(Error::FrameTooLarge(h.length));
        }
        if !live {
            if is_data && h.length > 0 {
                self.payload = Some(Payload {
                    sid,
                    remaining: h.length,
                    flags: f,
                    deliver: false,
                });
            }
            return Ok(());
        }
        let st = self.streams.get_mut(&sid).expect("live stream");
        let before = sendable(st);
        if f.contains(Flags::ACK) && st.on_ack() {
            self.push_event(EVENT_ACKED, sid, 0, 0);
        }
        let st = self.streams.get_mut(&sid).expect("live stream");
        if is_data {
            let deliver = st.state().can_receive();
            if deliver {
                st.recv.check(h.length, sid)?;
            }
            if h.length == 0 {
                return self.finish_frame(sid, f, now);
            }
            self.payload = Some(Payload {
                sid,
                remaining: h.length,
                flags: f,
                deliver,
            });
            return Ok(());
        }
        // Window update: credit (for SYN/ACK the extra above 256 KiB), then flags.
        if f.contains(Flags::RST) {
            return self.finish_frame(sid, f, now);
        }
        st.send.credit(h.length, sid)?;
        if h.length > 0 {
            self.on_credit(sid, before);
        }
        self.finish_frame(sid, f, now)
    }

    /// The peer opened `sid`. Returns whether the stream is live (false: refused with RST).
    fn open_inbound(&mut self, sid: u32, now: Instant) -> Result<bool, Error> {
        if self.is_ours(sid) {
            return Err(Error::InvalidStreamId(sid));
        }
        if self.streams.contains_key(&sid) {
            return Err(Error::DuplicateStream(sid));
        }
        // Out-of-order SYNs are fine within the reorder window (see `PeerIds`).
        if !self.peer_ids.may_open(sid) {
            return Err(Error::InvalidStreamId(sid));
        }
        if self.cfg.max_peer_streams > 0
            && self.stats.streams_opened_remote + self.stats.streams_refused
                >= self.cfg.max_peer_streams as u64
        {
            // Checked before a stream (or an RST) exists: a peer that may open one stream
            // cannot make us allocate thousands in one read.
            return Err(Error::PeerStreamLimit(sid));
        }
        self.peer_ids.mark(sid);
        if (self.local_goaway && self.crossing_ping.is_none())
            || self.remote_goaway
            || self.streams.len() >= self.cfg.max_streams as usize
            || self.unaccepted_at_receive >= self.cfg.accept_backlog
        {
            if self.out.len() >= MAX_UNSENT_ANSWERS {
                // The peer opens past the limits and does not read the refusals: end it
                // rather than queue refusals without bound.
                return Err(Error::RefusalFlood);
            }
            self.emit_rst(sid);
            self.stats.streams_refused += 1;
            return Ok(false);
        }
        let mut st = Stream::new(sid, false, DEFAULT_WINDOW, DEFAULT_WINDOW, now);
        st.on_syn_received();
        self.streams.insert(sid, st);
        self.unaccepted += 1;
        self.budget.windows += DEFAULT_WINDOW as u64;
        self.stats.streams_opened_remote += 1;
        self.push_event(EVENT_OPENED, sid, 0, 0);
        Ok(true)
    }

    /// A frame of a live stream ended: FIN/RST take effect after its payload.
    fn finish_frame(&mut self, sid: u32, f: Flags, now: Instant) -> Result<(), Error> {
        if f.contains(Flags::RST) {
            return self.on_peer_reset(sid, now);
        }
        if f.contains(Flags::FIN) {
            let Some(st) = self.streams.get_mut(&sid) else {
                return Ok(());
            };
            if !st.state().can_receive() {
                return Ok(()); // duplicate FIN
            }
            let closed = st.on_fin_received();
            self.push_event(EVENT_FIN, sid, 0, 0);
            if closed {
                self.forget(sid);
                self.push_event(EVENT_CLOSED, sid, 0, 0);
            }
        }
        Ok(())
    }

    fn on_peer_reset(&mut self, sid: u32, now: Instant) -> Result<(), Error> {
        let Some(st) = self.forget(sid) else {
            return Ok(());
        };
        self.stats.streams_reset_remote += 1;
        self.push_event(EVENT_RESET, sid, 0, 0);
        if !st.outbound {
            // Rapid-reset defence: streams the peer opens and resets, per one-second window.
            if now.saturating_duration_since(self.reset_window_start) >= Duration::from_secs(1) {
                self.reset_window_start = now;
                self.resets_in_window = 0;
            }
            self.resets_in_window += 1;
            if self.resets_in_window > self.cfg.max_resets_per_second {
                return Err(Error::StreamResetFlood);
            }
        }
        Ok(())
    }

    fn on_ping(&mut self, h: Header, now: Instant) -> Result<(), Error> {
        if h.stream_id != 0 {
            return Err(Error::InvalidStreamId(h.stream_id));
        }
        self.stats.pings_in += 1;
        let syn = h.flags.contains(Flags::SYN);
        let ack = h.flags.contains(Flags::ACK);
        if syn == ack {
            return Err(Error::InvalidFlags(h.flags.bits()));
        }
        if syn {
            // Each ping gets its own answer (the peer matches answers to ping ids), however
            // many one read carries — unless our output is piling up unsent: a peer that
            // pings and never reads gets nothing more until we can write again.
            if self.out.len() < MAX_UNSENT_ANSWERS {
                self.emit(Header::new(FrameType::Ping, Flags::ACK, 0, h.length));
                self.stats.pings_out += 1;
            }
            return Ok(());
        }
        // A pong. Answers may be coalesced by the peer, so one answers all earlier pings too.
        if let Some(i) = self.pings.iter().position(|&(o, _)| o == h.length) {
            let sent = self.pings[i].1;
            self.pings.drain(..=i);
            if let Some(p) = self.crossing_ping {
                // Answers come in order: once this one is in, so is every earlier one.
                if !self.pings.iter().any(|&(o, _)| o == p) {
                    self.crossing_ping = None;
                }
            }
            let rtt = now.saturating_duration_since(sent);
            self.srtt = Some(match self.srtt {
                None => rtt,
                Some(s) => (s * 7 + rtt) / 8,
            });
            self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
            let us = rtt.as_micros().min(u32::MAX as u128) as u32;
            self.push_event(EVENT_PONG, 0, us, 0);
        }
        Ok(())
    }

    // ================================================================ calls

    /// Open a stream; returns its id.
    pub fn open_stream(&mut self) -> Result<u32, Error> {
        self.open_stream_at(Instant::now())
    }

    /// `open_stream` at time `now`.
    pub fn open_stream_at(&mut self, now: Instant) -> Result<u32, Error> {
        if self.dead || self.local_goaway || self.remote_goaway {
            return Err(Error::SessionClosed);
        }
        if self.streams.len() >= self.cfg.max_streams as usize || self.next_id > u32::MAX as u64 {
            return Err(Error::StreamLimitReached);
        }
        let sid = self.next_id as u32;
        self.next_id += 2;
        let iw = self.cfg.initial_window;
        let mut st = Stream::new(sid, true, iw, DEFAULT_WINDOW, now);
        emit_wu(
            &mut self.out,
            (self.out_gen, self.out_base),
            &mut self.stats,
            &mut st,
            Flags::SYN,
            iw - DEFAULT_WINDOW,
        );
        st.on_syn_sent();
        self.streams.insert(sid, st);
        self.budget.windows += iw as u64;
        self.stats.streams_opened_local += 1;
        Ok(sid)
    }

    /// ACK a stream the peer opened.
    pub fn accept_stream(&mut self, sid: u32) -> Result<(), Error> {
        if self.dead {
            return Err(Error::SessionClosed);
        }
        match self.streams.get(&sid) {
            Some(st) if st.awaiting_accept() => {
                self.accept(sid);
                Ok(())
            }
            Some(_) => Ok(()),
            // Reset by the peer before we got to it: not the caller's fault.
            None if !self.is_ours(sid) && sid != 0 && sid <= self.peer_ids.max => Ok(()),
            None => Err(Error::UnknownStream(sid)),
        }
    }

    fn accept(&mut self, sid: u32) {
        let st = self.streams.get_mut(&sid).expect("live stream");
        if !st.on_accept() {
            return;
        }
        self.unaccepted -= 1;
        let extra = self.cfg.initial_window - DEFAULT_WINDOW;
        st.recv.enlarge(extra);
        self.budget.windows += extra as u64;
        emit_wu(
            &mut self.out,
            (self.out_gen, self.out_base),
            &mut self.stats,
            st,
            Flags::ACK,
            extra,
        );
    }

    /// Queue data; returns the stream's backlog in bytes.
    pub fn send(&mut self, sid: u32, data: &[u8]) -> Result<usize, Error> {
        if self.dead {
            return Err(Error::SessionClosed);
        }
        let st = self
            .streams
            .get_mut(&sid)
            .ok_or(Error::UnknownStream(sid))?;
        if !st.state().can_send() || st.fin_pending {
            return Err(Error::StreamClosed(sid));
        }
        if st.awaiting_accept() {
            self.accept(sid); // the ACK goes before our first data
        }
        let st = self.streams.get_mut(&sid).expect("live stream");
        let mut data = data;
        if data.len() >= DIRECT_FRAME_MIN
            && st.backlog.is_empty()
            && self.ring_live == 0
            && self.out.len() < DIRECT_FRAME_LIMIT
        {
            // Nothing to be fair to: frame now, within the send window.
            let direct = data
                .len()
                .min(st.send.get() as usize)
                .min(DIRECT_FRAME_LIMIT - self.out.len());
            if direct > 0 {
                let maxp = self.cfg.max_frame_payload as usize;
                for chunk in data[..direct].chunks(maxp) {
                    Header::new(FrameType::Data, Flags::NONE, sid, chunk.len() as u32)
                        .encode_into(&mut self.out);
                    self.out.extend_from_slice(chunk);
                    self.stats.frames_out += 1;
                    self.stats.data_frames_out += 1;
                }
                self.stats.bytes_out += direct as u64;
                self.stats.bytes_framed_directly += direct as u64;
                st.send.spend(direct as u32);
                data = &data[direct..];
            }
        }
        let before = sendable(st);
        st.backlog.extend(data);
        let after = sendable(st);
        let blocked = st.backlog.len() - after;
        if blocked > self.cfg.pending_high_water {
            st.over_high_water = true;
        }
        note_stall(&mut self.stats, st);
        self.requeue(sid, before, after);
        Ok(blocked)
    }

    /// A stream's sendable amount went from `before` to `after` (by send or credit): fix the
    /// sum and put the stream in the ring if it became sendable.
    fn requeue(&mut self, sid: u32, before: usize, after: usize) {
        self.pending_data = self.pending_data + after as u64 - before as u64;
        if after > 0 {
            let st = self.streams.get_mut(&sid).expect("live stream");
            if !st.in_ring {
                st.in_ring = true;
                self.ring.push_back(sid);
                self.ring_live += 1;
            }
        }
    }

    /// How many bytes a `send` on `sid` would frame at once right now: `None` when sends
    /// take the backlog whatever the reader does (other streams wait in the scheduler, it
    /// has a backlog, it is closed or unknown); otherwise the room, 0 while the outgoing
    /// buffer is full or the send window spent. A reader that reads no more than this
    /// keeps a lone bulk stream on the one-copy path: bytes that arrive while the outgoing
    /// buffer is full would go to the backlog, and every later send behind them until it
    /// drains (the steady state of an upload before: two copies per byte, measured).
    pub fn direct_room(&self, sid: u32) -> Option<usize> {
        let st = self.streams.get(&sid)?;
        if self.dead
            || self.ring_live > 0
            || !st.backlog.is_empty()
            || !st.state().can_send()
            || st.fin_pending
        {
            return None;
        }
        Some((st.send.get() as usize).min(DIRECT_FRAME_LIMIT.saturating_sub(self.out.len())))
    }

    /// Half-close (FIN after the backlog). Closing twice, or an unknown id, is a no-op.
    pub fn close_stream(&mut self, sid: u32) -> Result<(), Error> {
        if self.dead {
            return Ok(());
        }
        let Some(st) = self.streams.get_mut(&sid) else {
            return Ok(());
        };
        if !st.state().can_send() || st.fin_pending {
            return Ok(());
        }
        if st.awaiting_accept() {
            self.accept(sid);
        }
        let st = self.streams.get_mut(&sid).expect("live stream");
        st.fin_pending = true;
        if st.backlog.is_empty() {
            // Every data byte is framed already (taken, since data never stays in `out`).
            self.send_fin(sid);
        }
        Ok(())
    }

    /// Reset at once, dropping the backlog. Unknown ids are a no-op.
    pub fn reset_stream(&mut self, sid: u32) -> Result<(), Error> {
        if self.dead {
            return Ok(());
        }
        if self.forget(sid).is_some() {
            self.emit_rst(sid);
        }
        Ok(())
    }

    /// Pause or resume returning credit for received payload of a stream.
    pub fn set_read_paused(&mut self, sid: u32, paused: bool) -> Result<(), Error> {
        self.set_read_paused_at(sid, paused, Instant::now())
    }

    /// `set_read_paused` at time `now`.
    pub fn set_read_paused_at(
        &mut self,
        sid: u32,
        paused: bool,
        now: Instant,
    ) -> Result<(), Error> {
        if self.dead {
            return Ok(());
        }
        let Some(st) = self.streams.get_mut(&sid) else {
            return Ok(());
        };
        st.recv.set_paused(paused);
        if !paused && st.recv.update_due() && st.state().can_receive() {
            self.grant_window(sid, now);
        }
        Ok(())
    }

    /// Queue a ping; returns its opaque value.
    pub fn ping(&mut self) -> Result<u32, Error> {
        self.ping_at(Instant::now())
    }

    /// `ping` at time `now`.
    pub fn ping_at(&mut self, now: Instant) -> Result<u32, Error> {
        if self.dead {
            return Err(Error::SessionClosed);
        }
        Ok(self.send_ping(now))
    }

    fn send_ping(&mut self, now: Instant) -> u32 {
        let opaque = self.next_ping;
        self.next_ping = self.next_ping.wrapping_add(1);
        if self.pings.len() < MAX_TRACKED_PINGS {
            self.pings.push_back((opaque, now));
        }
        self.emit(Header::new(FrameType::Ping, Flags::SYN, 0, opaque));
        self.stats.pings_out += 1;
        opaque
    }

    /// Drive timers; returns milliseconds until the next call is useful.
    pub fn tick(&mut self) -> Result<u64, Error> {
        self.tick_at(Instant::now())
    }

    /// `tick` at time `now`.
    pub fn tick_at(&mut self, now: Instant) -> Result<u64, Error> {
        const IDLE: Duration = Duration::from_secs(60);
        if self.dead || self.cfg.keepalive_interval_ms == 0 {
            return Ok(IDLE.as_millis() as u64);
        }
        let timeout = Duration::from_millis(self.cfg.keepalive_timeout_ms);
        // The oldest ping's deadline: the timeout after it went, or after the peer's last
        // bytes if those came later (a pong queued behind bulk data is late, not lost).
        let deadline = |s: &Session| {
            s.pings
                .front()
                .map(|&(_, sent)| sent.max(s.last_input) + timeout)
        };
        if deadline(self).is_some_and(|d| now >= d) {
            return Err(self.fail(Error::KeepaliveTimeout));
        }
        // Measure the path on the first ticks, while the link is quiet: a first ping sent
        // once bulk data fills the link measures that queue instead.
        let next_probe = |s: &Session| s.rtt_probe_at.map_or(now, |at| at + RTT_PROBE_INTERVAL);
        if self.rtt_probes_sent < RTT_PROBES && now >= next_probe(self) && self.pings.is_empty() {
            self.rtt_probes_sent += 1;
            self.rtt_probe_at = Some(now);
            self.send_ping(now);
        }
        let probe_wait = (self.rtt_probes_sent < RTT_PROBES).then(|| {
            next_probe(self)
                .saturating_duration_since(now)
                .max(Duration::from_millis(1))
        });
        let interval = Duration::from_millis(self.cfg.keepalive_interval_ms);
        if now >= self.next_keepalive {
            if self.pings.is_empty() {
                self.send_ping(now);
            }
            self.next_keepalive = now + interval;
        }
        let mut wait = self.next_keepalive.saturating_duration_since(now);
        if let Some(p) = probe_wait {
            wait = wait.min(p);
        }
        if let Some(d) = deadline(self) {
            wait = wait.min(d.saturating_duration_since(now));
        }
        Ok((wait.as_micros().div_ceil(1000) as u64).max(1))
    }

    /// Queue GoAway(code): no new streams either way; existing streams go on.
    pub fn go_away(&mut self, code: u32) {
        if self.dead || self.local_goaway {
            return;
        }
        self.local_goaway = true;
        self.emit(Header::new(FrameType::GoAway, Flags::NONE, 0, code));
        self.stats.goaways_out += 1;
    }

    /// `go_away_draining` now.
    pub fn go_away_draining(&mut self, code: u32) {
        self.go_away_draining_at(code, Instant::now())
    }

    /// Queue GoAway(code) and a ping right behind it, for a side that drains (its live
    /// streams finish): the peer may have opened streams before it read the GoAway, and
    /// refusing them would fail visitors it had already routed here. Those are accepted
    /// until the ping's answer comes back, which the peer sends after every SYN it queued
    /// before reading the GoAway; later opens are refused as after `go_away`. A GoAway
    /// already sent is not sent again, and then nothing crosses.
    pub fn go_away_draining_at(&mut self, code: u32, now: Instant) {
        if self.dead || self.local_goaway {
            return;
        }
        self.go_away(code);
        if self.pings.len() < MAX_TRACKED_PINGS {
            self.crossing_ping = Some(self.send_ping(now));
        }
    }

    // ================================================================ internals

    fn push_event(&mut self, kind: u32, sid: u32, a: u32, b: u32) {
        if self.events_handed {
            self.events.clear();
            self.events_handed = false;
        }
        push_event(&mut self.events, kind, sid, a, b);
    }

    fn emit(&mut self, h: Header) {
        h.encode_into(&mut self.out);
        self.stats.frames_out += 1;
    }

    fn emit_rst(&mut self, sid: u32) {
        self.emit(Header::new(FrameType::WindowUpdate, Flags::RST, sid, 0));
        self.stats.window_updates_out += 1;
        self.stats.streams_reset_local += 1;
    }

    /// Remove a stream from the table, fixing the accounting.
    fn forget(&mut self, sid: u32) -> Option<Stream> {
        let mut st = self.streams.remove(&sid)?;
        self.budget.windows -= st.recv.window() as u64;
        self.pending_data -= sendable(&st) as u64;
        if st.in_ring {
            self.ring_live -= 1; // its id stays in the ring until popped...
            if self.ring_live == 0 {
                self.ring.clear(); // ...or until no live stream is left in it
            }
        }
        if st.awaiting_accept() {
            self.unaccepted -= 1;
        }
        st.on_reset();
        Some(st)
    }

    /// Send the due window update of a stream (auto-tuning the window).
    fn grant_window(&mut self, sid: u32, now: Instant) {
        if self.srtt.is_none() && self.rtt_probes_sent == 0 {
            // No tick has probed yet (or keepalive is off): measure now.
            self.rtt_probes_sent = 1;
            self.rtt_probe_at = Some(now);
            self.send_ping(now);
        }
        // Alone (or beside other bulk streams), a stream tunes to the smoothed RTT: generous
        // windows, full speed on any path. While a light stream (requests and responses)
        // received data within CONTENTION_WINDOW, it tunes to the least measured RTT and
        // oversized windows shrink: a ping that waited behind our own bulk data measures
        // that queue, and windows tuned to it grew to megabytes that small responses then
        // waited behind (head-of-line: 8-13x p99, measured). Bulk streams among themselves
        // are not contention: conservative windows cost 8 streams a quarter of their speed.
        // A light stream that can receive no more (FIN or gone) is no contention, nor one
        // no longer light (every bulk stream is light for its first bytes: 8 bulk
        // streams starting together shrank each other's windows for 100 ms, measured).
        let streams = &self.streams;
        let contended = self.last_light_rx.iter().any(|&(light, at)| {
            light != 0
                && light != sid
                && now.saturating_duration_since(at) < CONTENTION_WINDOW
                && streams.get(&light).is_some_and(|st| {
                    st.state().can_receive()
                        && st.is_light(now, CONTENTION_WINDOW, LIGHT_STREAM_BYTES)
                })
        });
        let (rtt, shrink_to) = if contended {
            (
                self.min_rtt,
                Some(self.cfg.initial_window / CONTENDED_WINDOW_DIVISOR),
            )
        } else {
            (self.srtt, None)
        };
        let Some(st) = self.streams.get_mut(&sid) else {
            return;
        };
        let g = st
            .recv
            .grant(now, rtt, self.cfg.max_window, &mut self.budget, shrink_to);
        if g.shrunk > 0 {
            self.stats.window_shrinks += 1;
        }
        if g.grown > 0 {
            self.stats.window_grows += 1;
        }
        emit_wu(
            &mut self.out,
            (self.out_gen, self.out_base),
            &mut self.stats,
            st,
            Flags::NONE,
            g.credit,
        );
    }

    /// Send credit arrived (`before` = sendable amount before it): requeue; WRITABLE when
    /// the blocked part of the backlog (beyond the window) is down to low water.
    fn on_credit(&mut self, sid: u32, before: usize) {
        let Some(st) = self.streams.get_mut(&sid) else {
            return;
        };
        let after = sendable(st);
        let blocked = st.backlog.len() - after;
        let writable = st.over_high_water && blocked <= self.cfg.pending_low_water;
        if writable {
            st.over_high_water = false;
        }
        note_stall(&mut self.stats, st);
        self.requeue(sid, before, after);
        if writable {
            self.push_event(EVENT_WRITABLE, sid, 0, 0);
        }
    }

    /// Queue the FIN of a stream whose every data byte is framed (an empty WindowUpdate, as
    /// hashicorp's sendClose; never on a data frame: see the module doc). CLOSED when both
    /// FINs are done.
    fn send_fin(&mut self, sid: u32) {
        self.emit(Header::new(FrameType::WindowUpdate, Flags::FIN, sid, 0));
        self.stats.window_updates_out += 1;
        let st = self.streams.get_mut(&sid).expect("live stream");
        if st.on_fin_sent() {
            self.forget(sid);
            self.push_event(EVENT_CLOSED, sid, 0, 0);
        }
    }

    /// A fatal error: queue GoAway, mark the session dead.
    fn fail(&mut self, e: Error) -> Error {
        if e.is_fatal() && !self.dead {
            if e.is_protocol() {
                self.stats.protocol_errors += 1;
            }
            let code = if e.is_protocol() {
                GOAWAY_PROTOCOL
            } else {
                GOAWAY_INTERNAL
            };
            self.emit(Header::new(FrameType::GoAway, Flags::NONE, 0, code));
            self.stats.goaways_out += 1;
            self.local_goaway = true;
            self.dead = true;
            self.payload = None;
            self.hdr_len = 0;
        }
        e
    }
}

fn push_event(events: &mut Vec<u8>, kind: u32, sid: u32, a: u32, b: u32) {
    let mut e = [0u8; EVENT_LEN];
    e[0..4].copy_from_slice(&kind.to_ne_bytes());
    e[4..8].copy_from_slice(&sid.to_ne_bytes());
    e[8..12].copy_from_slice(&a.to_ne_bytes());
    e[12..16].copy_from_slice(&b.to_ne_bytes());
    events.extend_from_slice(&e);
}

/// Queue a window update for `st`, merged into its pending one if still in the buffer.
fn emit_wu(
    out: &mut Vec<u8>,
    (gen, base): (u64, usize),
    stats: &mut Stats,
    st: &mut Stream,
    flags: Flags,
    credit: u32,
) {
    if st.wu_gen == gen && st.wu_at >= base {
        let at = st.wu_at - base;
        let old_flags = u16::from_be_bytes([out[at + 2], out[at + 3]]);
        let old = u32::from_be_bytes([out[at + 8], out[at + 9], out[at + 10], out[at + 11]]);
        if let Some(sum) = old.checked_add(credit) {
            out[at + 2..at + 4].copy_from_slice(&(old_flags | flags.bits()).to_be_bytes());
            out[at + 8..at + 12].copy_from_slice(&sum.to_be_bytes());
            return;
        }
    }
    st.wu_at = base + out.len();
    st.wu_gen = gen;
    Header::new(FrameType::WindowUpdate, flags, st.id, credit).encode_into(out);
    stats.frames_out += 1;
    stats.window_updates_out += 1;
}

/// Payload of a stream that could be framed now.
fn sendable(st: &Stream) -> usize {
    st.backlog.len().min(st.send.get() as usize)
}

/// A stall: bytes beyond the send window (counted once per stall).
fn note_stall(stats: &mut Stats, st: &mut Stream) {
    if st.backlog.len() > st.send.get() as usize {
        if !st.stalled {
            st.stalled = true;
            stats.window_stalls += 1;
        }
    } else {
        st.stalled = false;
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
