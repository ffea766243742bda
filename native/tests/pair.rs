//! A connected pair of sessions (client + server) pumped through each other: deterministic
//! scenarios and a proptest of random operation sequences with random read-pausing, split
//! points and frame sizes.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use relay_native::*;

/// One side of the pair plus what it observed.
struct Peer {
    s: Session,
    /// Streams this side knows (opened, or saw OPENED).
    known: Vec<u32>,
    /// Bytes received per stream.
    got: HashMap<u32, Vec<u8>>,
    fin: HashSet<u32>,
    reset: HashSet<u32>,
    closed: HashSet<u32>,
    acked: HashSet<u32>,
    pongs: usize,
    writable: usize,
}

impl Peer {
    fn new(c: Config) -> Peer {
        Peer {
            s: Session::new(c).unwrap(),
            known: Vec::new(),
            got: HashMap::new(),
            fin: HashSet::new(),
            reset: HashSet::new(),
            closed: HashSet::new(),
            acked: HashSet::new(),
            pongs: 0,
            writable: 0,
        }
    }

    /// Feed `bytes` in chunks whose sizes cycle through `splits`.
    fn feed(&mut self, bytes: &[u8], splits: &[usize], si: &mut usize) {
        let mut p = 0;
        while p < bytes.len() {
            let n = if splits.is_empty() {
                bytes.len()
            } else {
                splits[*si % splits.len()].max(1)
            };
            *si += 1;
            let chunk = &bytes[p..(p + n).min(bytes.len())];
            p += chunk.len();
            let events: Vec<Event> =
                unpack_events(self.s.receive(chunk).expect("no protocol error")).collect();
            self.handle(&events, chunk);
        }
        let events: Vec<Event> = unpack_events(self.s.take_events()).collect();
        self.handle(&events, &[]);
    }

    fn handle(&mut self, events: &[Event], input: &[u8]) {
        for e in events {
            match e.kind {
                EVENT_OPENED => {
                    self.known.push(e.stream_id);
                    self.s.accept_stream(e.stream_id).unwrap();
                }
                EVENT_DATA => {
                    let (a, b) = (e.a as usize, e.b as usize);
                    self.got
                        .entry(e.stream_id)
                        .or_default()
                        .extend_from_slice(&input[a..a + b]);
                }
                EVENT_FIN => assert!(self.fin.insert(e.stream_id), "FIN once"),
                EVENT_RESET => assert!(self.reset.insert(e.stream_id), "RESET once"),
                EVENT_CLOSED => assert!(self.closed.insert(e.stream_id), "CLOSED once"),
                EVENT_ACKED => assert!(self.acked.insert(e.stream_id), "ACKED once"),
                EVENT_PONG => self.pongs += 1,
                EVENT_WRITABLE => self.writable += 1,
                EVENT_GOAWAY => {}
                k => panic!("unknown event {k}"),
            }
        }
    }
}

/// Move bytes both ways until neither side has anything to send.
fn pump(a: &mut Peer, b: &mut Peer, splits: &[usize]) {
    pump_budgeted(a, b, splits, &[None]);
}

/// `pump` taking at most `budgets[i % len]` bytes per side at step `i`.
fn pump_budgeted(a: &mut Peer, b: &mut Peer, splits: &[usize], budgets: &[Option<usize>]) {
    let mut si = 0;
    for step in 0..1_000_000 {
        let budget = budgets[step % budgets.len()];
        let oa = a.s.take_outgoing_limited(budget);
        let ob = b.s.take_outgoing_limited(budget);
        for (o, s) in [(&oa, &a.s), (&ob, &b.s)] {
            if let Some(m) = budget {
                assert!(o.len() <= m.max(HEADER_LEN + 1), "{} > {m}", o.len());
            }
            assert!(!o.is_empty() || (s.outgoing_len() == 0 && !s.has_sendable()));
        }
        if oa.is_empty() && ob.is_empty() {
            return;
        }
        b.feed(&oa, splits, &mut si);
        a.feed(&ob, splits, &mut si);
    }
    panic!("pump did not settle");
}

fn cfg(client: bool) -> Config {
    let mut c = Config::new(client);
    c.keepalive_interval_ms = 0;
    c
}

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn both_directions_write_more_than_a_window_at_once() {
    let mut c = Peer::new(cfg(true));
    let mut s = Peer::new(cfg(false));
    let id = c.s.open_stream().unwrap();
    let up = pattern(1, 3 * DEFAULT_WINDOW as usize + 123);
    let down = pattern(2, 2 * DEFAULT_WINDOW as usize + 7);
    c.s.send(id, &up).unwrap();
    pump(&mut c, &mut s, &[1000, 7, 65536]);
    s.s.send(id, &down).unwrap();
    c.s.close_stream(id).unwrap();
    s.s.close_stream(id).unwrap();
    pump(&mut c, &mut s, &[3000]);
    assert_eq!(s.got[&id], up);
    assert_eq!(c.got[&id], down);
    assert!(c.closed.contains(&id) && s.closed.contains(&id));
    assert_eq!((c.s.stream_count(), s.s.stream_count()), (0, 0));
}

#[test]
fn read_paused_receiver_stops_the_sender_after_one_window_then_resumes() {
    let mut c = Peer::new(cfg(true));
    let mut s = Peer::new(cfg(false));
    let id = c.s.open_stream().unwrap();
    pump(&mut c, &mut s, &[]);
    s.s.set_read_paused(id, true).unwrap();
    let data = pattern(3, 6 * DEFAULT_WINDOW as usize);
    let backlog = c.s.send(id, &data).unwrap();
    assert_eq!(
        backlog,
        5 * DEFAULT_WINDOW as usize,
        "over pending_high_water"
    );
    pump(&mut c, &mut s, &[]);
    assert_eq!(
        s.got[&id].len(),
        DEFAULT_WINDOW as usize,
        "exactly one window while paused"
    );
    assert_eq!(c.s.stream_backlog(id).unwrap(), 5 * DEFAULT_WINDOW as usize);
    assert_eq!(c.s.stats().window_stalls, 1);
    s.s.set_read_paused(id, false).unwrap();
    pump(&mut c, &mut s, &[]);
    assert_eq!(s.got[&id], data);
    assert_eq!(c.writable, 1, "WRITABLE after the backlog drained");
}

#[test]
fn many_streams_interleave_and_auto_tuning_grows_windows_on_a_fast_link() {
    let mut c = Peer::new(cfg(true));
    let mut s = Peer::new(cfg(false));
    // Measure an RTT first (instant here).
    c.s.ping().unwrap();
    pump(&mut c, &mut s, &[]);
    assert_eq!(c.pongs, 1);
    let ids: Vec<u32> = (0..20).map(|_| c.s.open_stream().unwrap()).collect();
    let mut expect = HashMap::new();
    for (i, &id) in ids.iter().enumerate() {
        let d = pattern(10 + i as u32, 50_000 + i * 40_000);
        c.s.send(id, &d).unwrap();
        c.s.close_stream(id).unwrap();
        expect.insert(id, d);
    }
    pump(&mut c, &mut s, &[8192]);
    for &id in &ids {
        assert_eq!(s.got[&id], expect[&id]);
        assert!(s.fin.contains(&id));
    }
    let big = c.s.open_stream().unwrap();
    let d = pattern(99, 8 << 20);
    for chunk in d.chunks(64 * 1024) {
        c.s.send(big, chunk).unwrap();
        pump(&mut c, &mut s, &[65536]);
    }
    assert_eq!(s.got[&big], d);
    assert!(s.s.stats().window_grows > 0, "{:?}", s.s.stats());
    assert!(s.s.stream_window(big).unwrap().0 > DEFAULT_WINDOW);
}

#[test]
fn rst_from_either_side_is_seen_by_the_other() {
    let mut c = Peer::new(cfg(true));
    let mut s = Peer::new(cfg(false));
    let a = c.s.open_stream().unwrap();
    let b = c.s.open_stream().unwrap();
    c.s.send(a, b"hello").unwrap();
    pump(&mut c, &mut s, &[]);
    c.s.reset_stream(a).unwrap();
    s.s.reset_stream(b).unwrap();
    pump(&mut c, &mut s, &[]);
    assert!(s.reset.contains(&a));
    assert!(c.reset.contains(&b));
    assert_eq!((c.s.stream_count(), s.s.stream_count()), (0, 0));
}

// ------------------------------------------------------------------ proptest

#[derive(Debug, Clone)]
enum Op {
    Open(bool),
    Send(bool, usize, usize, u32),
    Close(bool, usize),
    Reset(bool, usize),
    Pause(bool, usize, bool),
    Ping(bool),
    Pump,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => any::<bool>().prop_map(Op::Open),
        6 => (any::<bool>(), 0..8usize, prop_oneof![0..2000usize, 0..300_000usize], any::<u32>())
            .prop_map(|(s, i, n, seed)| Op::Send(s, i, n, seed)),
        2 => (any::<bool>(), 0..8usize).prop_map(|(s, i)| Op::Close(s, i)),
        1 => (any::<bool>(), 0..8usize).prop_map(|(s, i)| Op::Reset(s, i)),
        2 => (any::<bool>(), 0..8usize, any::<bool>()).prop_map(|(s, i, p)| Op::Pause(s, i, p)),
        1 => any::<bool>().prop_map(Op::Ping),
        3 => Just(Op::Pump),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_on_a_connected_pair_deliver_every_byte_in_order(
        ops in prop::collection::vec(op(), 1..40),
        splits in prop::collection::vec(1..70_000usize, 1..6),
        frame in prop_oneof![Just(16 * 1024u32), 1..70_000u32],
        extra_window in prop_oneof![Just(0u32), 0..(1u32 << 20)],
        budgets in prop::collection::vec(
            prop_oneof![
                1 => Just(None),
                1 => (0..64usize).prop_map(Some),
                4 => (64..300_000usize).prop_map(Some),
            ],
            1..6,
        ),
    ) {
        // Tiny budgets alone would make 300 KB sends take ages: keep one real budget.
        let mut budgets = budgets;
        if budgets.iter().all(|b| b.is_some_and(|m| m < 4096)) {
            budgets.push(Some(64 * 1024));
        }
        let mk = |client: bool| {
            let mut c = cfg(client);
            c.max_frame_payload = frame;
            c.initial_window = DEFAULT_WINDOW + extra_window;
            c.pending_high_water = 200_000;
            c.pending_low_water = 50_000;
            Peer::new(c)
        };
        let mut peers = [mk(true), mk(false)];
        // (sender side index, stream id) → bytes accepted by send().
        let mut sent: HashMap<(usize, u32), Vec<u8>> = HashMap::new();
        let mut closed: HashSet<(usize, u32)> = HashSet::new();
        let mut reset: HashSet<u32> = HashSet::new();
        let mut all: Vec<u32> = Vec::new();
        for op in ops {
            match op {
                Op::Open(side) => {
                    let p = &mut peers[side as usize];
                    let id = p.s.open_stream().unwrap();
                    p.known.push(id);
                    all.push(id);
                }
                Op::Send(side, i, n, seed) => {
                    let p = &mut peers[side as usize];
                    if let Some(&id) = p.known.get(i % p.known.len().max(1)) {
                        let d = pattern(seed, n);
                        match p.s.send(id, &d) {
                            Ok(_) => sent.entry((side as usize, id)).or_default().extend_from_slice(&d),
                            Err(Error::UnknownStream(_)) | Err(Error::StreamClosed(_)) => {}
                            Err(e) => panic!("send: {e}"),
                        }
                    }
                }
                Op::Close(side, i) => {
                    let p = &mut peers[side as usize];
                    if let Some(&id) = p.known.get(i % p.known.len().max(1)) {
                        if p.s.stream_window(id).is_ok() {
                            closed.insert((side as usize, id));
                        }
                        p.s.close_stream(id).unwrap();
                    }
                }
                Op::Reset(side, i) => {
                    let p = &mut peers[side as usize];
                    if let Some(&id) = p.known.get(i % p.known.len().max(1)) {
                        if p.s.stream_window(id).is_ok() {
                            reset.insert(id);
                        }
                        p.s.reset_stream(id).unwrap();
                    }
                }
                Op::Pause(side, i, paused) => {
                    let p = &mut peers[side as usize];
                    if let Some(&id) = p.known.get(i % p.known.len().max(1)) {
                        p.s.set_read_paused(id, paused).unwrap();
                    }
                }
                Op::Ping(side) => {
                    peers[side as usize].s.ping().unwrap();
                }
                Op::Pump => {
                    let [a, b] = &mut peers;
                    pump_budgeted(a, b, &splits, &budgets);
                }
            }
        }
        // Settle: unpause everything and pump until quiet.
        for p in peers.iter_mut() {
            for &id in &all {
                p.s.set_read_paused(id, false).unwrap();
            }
        }
        let [a, b] = &mut peers;
        pump_budgeted(a, b, &splits, &budgets);
        for side in 0..2usize {
            let other = 1 - side;
            for &id in &all {
                let want = sent.get(&(side, id)).cloned().unwrap_or_default();
                let got = peers[other].got.get(&id).cloned().unwrap_or_default();
                if reset.contains(&id) {
                    prop_assert!(want.starts_with(&got), "stream {} from {}: not a prefix", id, side);
                } else {
                    prop_assert_eq!(got.len(), want.len(), "stream {} from side {}", id, side);
                    prop_assert!(got == want, "stream {} from {}: bytes differ", id, side);
                    if closed.contains(&(side, id)) {
                        prop_assert!(peers[other].fin.contains(&id), "FIN of {} from {}", id, side);
                    }
                }
            }
        }
        for &id in &all {
            if reset.contains(&id) {
                // The side that did not reset saw RESET unless it had already forgotten it.
                let seen = peers.iter().any(|p| p.reset.contains(&id) || p.closed.contains(&id));
                let both_reset = peers.iter().all(|p| p.s.stream_window(id).is_err());
                prop_assert!(seen || both_reset);
            } else if closed.contains(&(0, id)) && closed.contains(&(1, id)) {
                prop_assert!(peers[0].closed.contains(&id) && peers[1].closed.contains(&id));
            }
        }
        prop_assert!(!peers[0].s.is_dead() && !peers[1].s.is_dead());
    }
}
