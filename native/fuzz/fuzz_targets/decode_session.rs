//! Arbitrary bytes into a server (or client) Session, split at arbitrary points, interleaved
//! with random API calls and clock jumps. Nothing may panic; memory must stay bounded.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use relay_native::{Config, Session};

fn byte(rest: &mut &[u8]) -> u8 {
    match rest.split_first() {
        Some((&b, r)) => {
            *rest = r;
            b
        }
        None => 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let cfgb = byte(&mut rest);
    let mut c = Config::new(cfgb & 1 == 1);
    c.keepalive_interval_ms = if cfgb & 2 != 0 { 100 } else { 0 };
    c.keepalive_timeout_ms = 50;
    if cfgb & 4 != 0 {
        c.initial_window = 512 * 1024;
        c.max_window = 2 * 1024 * 1024;
        c.session_budget = 3 * 1024 * 1024;
    }
    c.max_frame_payload = 1 + ((cfgb as u32 >> 3) << 11);
    c.accept_backlog = 1 + (cfgb as u32 >> 6);
    c.max_streams = 3;
    c.max_resets_per_second = 8;
    c.pending_high_water = 4096;
    c.pending_low_water = 1024;
    let t0 = Instant::now();
    let mut now = t0;
    let mut s = Session::new_at(c, t0).expect("valid config");
    let payload = [0x5au8; 70_000];
    while !rest.is_empty() {
        let op = byte(&mut rest);
        if op < 128 {
            // Feed a chunk of the input (split at an arbitrary point).
            let n = (op as usize * 3 + 1).min(rest.len());
            let (chunk, r) = rest.split_at(n);
            rest = r;
            let _ = s.receive_at(chunk, now);
            continue;
        }
        let id = byte(&mut rest) as u32;
        match op % 12 {
            0 => {
                let _ = s.open_stream_at(now);
            }
            1 => {
                let _ = s.accept_stream(id);
            }
            2 => {
                let n = (byte(&mut rest) as usize) << 8;
                let _ = s.send(id, &payload[..n.min(payload.len())]);
            }
            3 => {
                let _ = s.close_stream(id);
            }
            4 => {
                let _ = s.reset_stream(id);
            }
            5 => {
                let _ = s.set_read_paused_at(id, op & 16 != 0, now);
            }
            6 => {
                let _ = s.ping_at(now);
            }
            7 => {
                now += Duration::from_millis(id as u64 * 4);
                let _ = s.tick_at(now);
            }
            8 => s.go_away(id % 3),
            9 => {
                // Random budgets: None, tiny (below one frame), or up to ~64 KiB.
                let budget = match id % 4 {
                    0 => None,
                    1 => Some(id as usize % 16),
                    _ => Some((id as usize) << 8),
                };
                let had = s.outgoing_len() > 0 || s.has_sendable();
                let out = s.take_outgoing_limited(budget);
                if let Some(m) = budget {
                    assert!(out.len() <= m.max(13));
                }
                assert_eq!(out.is_empty(), !had);
            }
            10 => {
                let _ = s.take_events();
            }
            _ => {
                let _ = s.stream_window(id);
                let _ = (s.stats(), s.rtt_us(), s.is_closed(), s.stream_count());
                let _ = (s.pending_data(), s.has_sendable(), s.stream_backlog(id));
            }
        }
    }
    // Bounded: nothing here can queue more than a few MiB.
    assert!(s.outgoing_len() < 64 << 20);
    assert!(s.pending_data() < 64 << 20);
});
