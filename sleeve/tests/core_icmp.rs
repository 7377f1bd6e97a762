//! ICMP "fragmentation needed": a valid answer (checked by recomputing checksums) for
//! oversize DF IPv4 frames, nothing for anything else; IPv4/GSO inspection helpers.

use proptest::prelude::*;
use weft_sleeve::icmp::{
    checksum, frag_needed, gso_segment_ip_len, inner_mtu, ipv4_df_len, ETH_HLEN,
};
use weft_sleeve::records::Offload;
use weft_sleeve::session::Mode;

const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const SRC_IP: [u8; 4] = [10, 32, 0, 5];
const DST_IP: [u8; 4] = [10, 40, 0, 9];

/// An Ethernet + IPv4 frame: `ihl_words` header words, `proto`, DF per `flags_frag`, and
/// `payload_len` bytes of payload (starting with `first` bytes).
fn ipv4_frame(total: u16, flags_frag: u16, proto: u8, ihl_words: u8, first: &[u8]) -> Vec<u8> {
    let ihl = usize::from(ihl_words) * 4;
    let mut f = Vec::new();
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&POD_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0u8; usize::from(total)];
    ip[0] = 0x40 | ihl_words;
    ip[1] = 0x10;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    ip[6..8].copy_from_slice(&flags_frag.to_be_bytes());
    ip[8] = 63;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&SRC_IP);
    ip[16..20].copy_from_slice(&DST_IP);
    for (i, b) in ip.iter_mut().enumerate().take(ihl).skip(20) {
        *b = i as u8; // options
    }
    let sum = checksum(&ip[..ihl]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    for (i, b) in ip[ihl..].iter_mut().enumerate() {
        *b = first.get(i).copied().unwrap_or(i as u8);
    }
    f.extend_from_slice(&ip);
    f
}

/// Checks `out` is a well-formed frag-needed answer to `orig` and returns the MTU it carries.
fn verify(orig: &[u8], out: &[u8]) -> u16 {
    let oip = &orig[ETH_HLEN..];
    let ihl = usize::from(oip[0] & 0xf) * 4;
    let quote = ihl + (usize::from(u16::from_be_bytes([oip[2], oip[3]])) - ihl).min(8);
    assert_eq!(&out[..6], &orig[6..12], "to the sender's MAC");
    assert_eq!(&out[6..12], &orig[..6], "from the MAC it addressed");
    assert_eq!(&out[12..14], &[0x08, 0x00]);
    let ip = &out[ETH_HLEN..];
    assert_eq!(ip[0], 0x45);
    assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len());
    assert_eq!(ip.len(), 20 + 8 + quote);
    assert_eq!(
        u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff,
        0,
        "not a fragment"
    );
    assert!(ip[8] > 0, "TTL");
    assert_eq!(ip[9], 1, "ICMP");
    assert_eq!(checksum(&ip[..20]), 0, "IP header checksum verifies");
    assert_eq!(&ip[12..16], &oip[16..20], "from the original destination");
    assert_eq!(&ip[16..20], &oip[12..16], "to the original source");
    let icmp = &ip[20..];
    assert_eq!((icmp[0], icmp[1]), (3, 4));
    assert_eq!(checksum(icmp), 0, "ICMP checksum verifies");
    assert_eq!(&icmp[4..6], &[0, 0]);
    assert_eq!(&icmp[8..], &oip[..quote], "quotes header and 8 bytes");
    u16::from_be_bytes([icmp[6], icmp[7]])
}

#[test]
fn answers_oversize_df_packets() {
    let f = ipv4_frame(1500, 0x4000, 6, 5, &[]);
    assert_eq!(ipv4_df_len(&f), Some((true, 1500)));
    let mut out = Vec::new();
    assert!(frag_needed(&f, 1389, &mut out));
    assert_eq!(verify(&f, &out), 1389);
    assert_eq!(out.len(), ETH_HLEN + 20 + 8 + 28);
    // With IP options the whole header is quoted.
    let f = ipv4_frame(1500, 0x4000, 17, 15, &[]);
    assert!(frag_needed(&f, 1000, &mut out));
    assert_eq!(verify(&f, &out), 1000);
    assert_eq!(out.len(), ETH_HLEN + 20 + 8 + 60 + 8);
    // Ethernet padding after the IP packet is fine; a short payload quotes what there is.
    let mut f = ipv4_frame(25, 0x4000, 6, 5, &[]);
    f.extend_from_slice(&[0; 20]);
    assert!(frag_needed(&f, 24, &mut out));
    verify(&f, &out);
    // ICMP echo requests are not errors: answered.
    let f = ipv4_frame(1400, 0x4000, 1, 5, &[8, 0]);
    assert!(frag_needed(&f, 1300, &mut out));
    verify(&f, &out);
}

#[test]
fn refuses_everything_else() {
    let mut out = vec![1, 2, 3];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("fits", ipv4_frame(1389, 0x4000, 6, 5, &[])),
        ("no DF", ipv4_frame(1500, 0, 6, 5, &[])),
        ("first fragment", ipv4_frame(1500, 0x6000, 6, 5, &[])),
        ("later fragment", ipv4_frame(1500, 0x4000 | 100, 6, 5, &[])),
        ("ICMP unreachable", ipv4_frame(1500, 0x4000, 1, 5, &[3, 4])),
        (
            "ICMP time exceeded",
            ipv4_frame(1500, 0x4000, 1, 5, &[11, 0]),
        ),
        (
            "ICMP unknown type",
            ipv4_frame(1500, 0x4000, 1, 5, &[200, 0]),
        ),
    ];
    for (what, f) in &cases {
        assert!(!frag_needed(f, 1389, &mut out), "{what}");
        assert!(out.is_empty(), "{what}: out cleared");
    }
    let headless = ipv4_frame(20, 0x4000, 1, 5, &[]);
    assert!(
        !frag_needed(&headless, 10, &mut out),
        "ICMP without its header is not answered"
    );

    let base = ipv4_frame(1500, 0x4000, 6, 5, &[]);
    let mutate = |at: usize, val: &[u8]| {
        let mut f = base.clone();
        f[at..at + val.len()].copy_from_slice(val);
        f
    };
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("IPv6 ethertype", mutate(12, &[0x86, 0xdd])),
        ("VLAN tag", mutate(12, &[0x81, 0x00])),
        ("version 6", mutate(14, &[0x65])),
        ("IHL < 5", mutate(14, &[0x44])),
        ("total < IHL", mutate(16, &[0, 10])),
        ("total beyond frame", mutate(16, &[0x05, 0xdd])),
        ("broadcast source", mutate(26, &[255, 255, 255, 255])),
        ("zero source", mutate(26, &[0, 0, 0, 0])),
        ("multicast destination", mutate(30, &[224, 0, 0, 1])),
        ("multicast source MAC", mutate(6, &[0x01])),
    ];
    for (what, f) in &bad {
        assert!(!frag_needed(f, 1389, &mut out), "{what}");
        assert!(out.is_empty());
    }
    // Every truncation of a valid frame is refused without panicking.
    for cut in 0..base.len() {
        assert!(!frag_needed(&base[..cut], 1389, &mut out), "cut at {cut}");
    }
    assert_eq!(ipv4_df_len(&base[..ETH_HLEN + 19]), None);
    assert_eq!(ipv4_df_len(&cases[1].1), Some((false, 1500)));
}

#[test]
fn gso_segment_sizes() {
    let tso = Offload {
        flags: 1,
        gso_type: 1,
        hdr_len: 66,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
    };
    // TCP with a 32-byte header (timestamps): 20 + 32 + 1448 = 1500.
    let mut tcp = [0u8; 20];
    tcp[12] = 8 << 4;
    let f = ipv4_frame(20_000, 0x4000, 6, 5, &tcp);
    assert_eq!(gso_segment_ip_len(&f, &tso), Some(1500));
    // UDP L4 segmentation: 20 + 8 + gso_size.
    let uso = Offload {
        gso_type: 5,
        gso_size: 1000,
        ..tso
    };
    let f = ipv4_frame(9000, 0x4000, 17, 5, &[]);
    assert_eq!(gso_segment_ip_len(&f, &uso), Some(1028));
    // IPv6 TCP: 40 + 20 + gso_size.
    let mut f6 = vec![0u8; ETH_HLEN + 40 + 20];
    f6[12..14].copy_from_slice(&[0x86, 0xdd]);
    f6[ETH_HLEN] = 0x60;
    f6[ETH_HLEN + 6] = 6;
    f6[ETH_HLEN + 40 + 12] = 5 << 4;
    let t6 = Offload {
        gso_type: 4,
        gso_size: 1420,
        ..tso
    };
    assert_eq!(gso_segment_ip_len(&f6, &t6), Some(1480));
    // Not segmentation, or not TCP/UDP, or truncated: None.
    assert_eq!(
        gso_segment_ip_len(&f, &Offload { gso_type: 0, ..uso }),
        None
    );
    assert_eq!(
        gso_segment_ip_len(&ipv4_frame(100, 0, 47, 5, &[]), &tso),
        None
    );
    assert_eq!(gso_segment_ip_len(&f6[..ETH_HLEN + 50], &t6), None);
    let mut bad_doff = [0u8; 20];
    bad_doff[12] = 4 << 4;
    assert_eq!(
        gso_segment_ip_len(&ipv4_frame(100, 0, 6, 5, &bad_doff), &tso),
        None
    );
}

#[test]
fn inner_mtu_is_what_fits_one_datagram() {
    // 1500-byte path: 28 (IPv4 + UDP) + 16 header + 16 tag + 27 record + 10 offload + 14 Ethernet.
    assert_eq!(inner_mtu(1500, Mode::Encrypted), 1500 - 28 - 32 - 37 - 14);
    assert_eq!(inner_mtu(1500, Mode::Plain), 1500 - 28 - 16 - 37 - 14);
    assert_eq!(inner_mtu(0, Mode::Plain), 0);
}

proptest! {
    #[test]
    fn random_frames_never_panic_and_answers_are_valid(
        mut bytes in proptest::collection::vec(any::<u8>(), 0..200),
        ipv4 in any::<bool>(),
        mtu in 0u16..300,
    ) {
        if ipv4 && bytes.len() > 34 {
            bytes[12] = 0x08;
            bytes[13] = 0x00;
            bytes[14] = 0x45;
            bytes[20] |= 0x40;
        }
        let mut out = Vec::new();
        if frag_needed(&bytes, mtu, &mut out) {
            prop_assert_eq!(verify(&bytes, &out), mtu);
        } else {
            prop_assert!(out.is_empty());
        }
        let _ = ipv4_df_len(&bytes);
        let _ = gso_segment_ip_len(&bytes, &Offload { gso_type: 1, gso_size: 100, ..Offload::default() });
    }
}
