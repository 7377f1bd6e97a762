//! The control handshake's plaintext parsers (`weft_gossip::handshake`) on arbitrary bytes: the preamble and the
//! Identity payload never panic; whatever they accept survives re-encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_gossip::handshake::{decode_identity, encode_identity, parse_preamble};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = parse_preamble(data) {
        // Unknown flag bits are ignored, so compare the meaningful bytes only.
        let enc = p.encode();
        assert_eq!(enc[..5], data[..5]);
        assert_eq!(enc[5], data[5] & 1);
    }
    if let Ok(id) = decode_identity(data) {
        let again = decode_identity(&encode_identity(&id));
        assert_eq!(again, Ok(id), "an accepted identity survives re-encoding");
    }
});
