//! The NFLOG parsers of the policy enforcer (`weft_policy::nflog`) on arbitrary bytes: the
//! netlink datagram parser and the IP header parser never panic; what they report is
//! consistent with the bytes they were given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use weft_policy::nflog::{parse_ip, parse_message, parse_prefix};

fuzz_target!(|data: &[u8]| {
    // A datagram holds at most one record per 16-byte netlink header plus 4-byte nfgenmsg.
    let blocked = parse_message(data);
    assert!(blocked.len() <= data.len() / 20);

    if let Some((src, dst, proto, port)) = parse_ip(data) {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                assert!(data.len() >= 20 && data[0] >> 4 == 4);
                assert_eq!(s.octets(), data[12..16]);
                assert_eq!(d.octets(), data[16..20]);
                assert_eq!(proto, data[9]);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                assert!(data.len() >= 40 && data[0] >> 4 == 6);
                assert_eq!(s.octets(), data[8..24]);
                assert_eq!(d.octets(), data[24..40]);
                assert_eq!(proto, data[6]);
            }
            _ => panic!("source and destination of different families"),
        }
        if port.is_some() {
            assert!(matches!(proto, 6 | 17 | 132));
        }
    }

    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_prefix(text);
    }
});
