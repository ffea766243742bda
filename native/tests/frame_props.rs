//! Property tests: header round-trip; arbitrary bytes never panic a session.

use proptest::prelude::*;
use relay_native::*;

fn frame_type() -> impl Strategy<Value = FrameType> {
    prop_oneof![
        Just(FrameType::Data),
        Just(FrameType::WindowUpdate),
        Just(FrameType::Ping),
        Just(FrameType::GoAway)
    ]
}

proptest! {
    #[test]
    fn header_encode_decode_round_trips(t in frame_type(), flags in any::<u16>(), sid in any::<u32>(), len in any::<u32>()) {
        let h = Header::new(t, Flags::from_bits(flags), sid, len);
        let b = h.encode();
        prop_assert_eq!(b.len(), HEADER_LEN);
        prop_assert_eq!(Header::decode(&b), Ok(h));
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(b in any::<[u8; 12]>()) {
        match Header::decode(&b) {
            Ok(h) => prop_assert_eq!(h.encode(), b),
            Err(e) => prop_assert!(e.is_protocol()),
        }
    }

    #[test]
    fn arbitrary_input_split_anywhere_never_panics(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..32),
        client in any::<bool>(),
    ) {
        let mut c = Config::new(client);
        c.keepalive_interval_ms = 0;
        let mut s = Session::new(c).unwrap();
        for ch in &chunks {
            if s.receive(ch).is_err() {
                break;
            }
        }
        prop_assert!(s.outgoing_len() < 1 << 20);
    }

    /// Structured garbage (valid headers with random fields) reaches deeper states.
    #[test]
    fn arbitrary_frames_never_panic(
        frames in prop::collection::vec((0u8..5, 0u16..16, 0u32..8, prop_oneof![0u32..64, any::<u32>()]), 0..40),
        split in 1usize..40,
    ) {
        let mut c = Config::new(false);
        c.keepalive_interval_ms = 0;
        let mut s = Session::new(c).unwrap();
        let mut bytes = Vec::new();
        for (t, f, sid, len) in frames {
            bytes.extend_from_slice(&[0, t]);
            bytes.extend_from_slice(&f.to_be_bytes());
            bytes.extend_from_slice(&sid.to_be_bytes());
            bytes.extend_from_slice(&len.to_be_bytes());
            if t == 0 && len < 64 {
                bytes.extend(std::iter::repeat_n(0xab, len as usize));
            }
        }
        for ch in bytes.chunks(split) {
            if s.receive(ch).is_err() {
                break;
            }
            let _ = s.send(1, b"x");
            let _ = s.accept_stream(1);
        }
    }
}
