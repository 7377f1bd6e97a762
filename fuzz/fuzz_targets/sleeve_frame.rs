//! The sleeve's frame parsers on arbitrary bytes: `Header::parse`, the records of a Data
//! payload, and reassembly of what they yield never panic; every header and record that
//! parses re-encodes to exactly the bytes it came from.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use weft_sleeve::reasm::Reassembler;
use weft_sleeve::records::{write_record, Records};
use weft_sleeve::wire::{peek_receiver, Header, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::parse(data) {
        assert_eq!(h.encode()[..], data[..HEADER_LEN]);
        assert_eq!(peek_receiver(data), Some(h.receiver));
    }
    let t0 = Instant::now();
    let mut reasm = Reassembler::new(4, Duration::from_secs(1));
    let mut at = 0;
    let mut out = vec![0u8; data.len()];
    for rec in Records::new(data) {
        let Ok((h, piece)) = rec else { break };
        let n = write_record(&mut out, &h, piece).expect("a parsed record re-encodes");
        assert_eq!(out[..n], data[at..at + n]);
        at += n;
        // Spread pieces over virtual time so expiry is exercised too.
        let now = t0 + Duration::from_millis(u64::from(h.id % 3000));
        if let Some(frame) = reasm.push(&h, piece, now) {
            assert_eq!(frame.frame.len() as u64, u64::from(h.total));
            reasm.recycle(frame.frame);
        }
        reasm.expire(now);
    }
});
