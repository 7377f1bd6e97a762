//! The fastpath heartbeat parser (`weft_fastpath::heartbeat`) on arbitrary bytes: never
//! panics; whatever parses is at least as long as it claims and re-encodes to exactly the
//! header bytes it came from (padding aside); the checked view and `parse` agree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_fastpath::heartbeat::{parse, HeartbeatView, ETH_HLEN, PAYLOAD_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let view = HeartbeatView::new(data);
    let parsed = parse(data);
    assert_eq!(view.is_ok(), parsed.is_ok());
    if let Ok(hb) = parsed {
        assert!(data.len() >= hb.frame_len());
        assert_eq!(view.unwrap().to_heartbeat(), hb);
        let again = hb.to_vec().expect("a parsed heartbeat re-encodes");
        assert_eq!(again.len(), hb.frame_len());
        // Byte 19 (flags) is ignored on receipt and always sent as 0.
        let hdr = ETH_HLEN + PAYLOAD_HEADER_LEN;
        assert_eq!(again[..19], data[..19]);
        assert_eq!(again[20..hdr], data[20..hdr]);
        assert_eq!(parse(&again), Ok(hb));
    }
});
