//! `Message::decode` never panics: random bytes, and random mutations of valid encodings.
//! Whatever it accepts is valid and survives a re-encode.

use proptest::prelude::*;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use weft_gossip::{
    Channel, ConnRecord, Endpoint, EndpointRecord, IpamRecord, IpamSpace, Message, PeerName,
    PeerRecord, PeerUid, Removal, Summary,
};

fn name() -> impl Strategy<Value = PeerName> {
    (0..=PeerName::MAX).prop_map(|v| PeerName::new(v).unwrap())
}

fn summary() -> impl Strategy<Value = Summary> {
    (name(), any::<u64>(), any::<u64>()).prop_map(|(origin, uid, version)| Summary {
        origin,
        uid: PeerUid(uid),
        version,
    })
}

fn channel() -> impl Strategy<Value = Channel> {
    prop_oneof![
        Just(Channel::Topology),
        Just(Channel::Endpoints),
        Just(Channel::Ipam)
    ]
}

fn sock() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
    ]
}

fn peer_record() -> impl Strategy<Value = Arc<PeerRecord>> {
    (
        summary(),
        "[a-z0-9-]{0,20}",
        prop::collection::vec((name(), sock(), any::<bool>()), 0..6),
    )
        .prop_map(|(summary, nickname, conns)| {
            let mut connections: Vec<ConnRecord> = conns
                .into_iter()
                .filter(|(p, _, _)| *p != summary.origin)
                .map(|(peer, addr, outbound)| ConnRecord {
                    peer,
                    addr,
                    outbound,
                })
                .collect();
            connections.sort_by_key(|c| c.peer);
            connections.dedup_by_key(|c| c.peer);
            Arc::new(PeerRecord {
                summary,
                nickname,
                connections,
            })
        })
}

fn endpoint_record() -> impl Strategy<Value = Arc<EndpointRecord>> {
    let ep = (
        any::<[u8; 6]>(),
        prop::collection::vec(any::<[u8; 4]>().prop_map(IpAddr::from), 0..3),
        prop::option::of("[a-z]{1,8}/[a-z0-9]{1,12}"),
    )
        .prop_map(|(mac, ips, pod)| Endpoint { mac, ips, pod });
    (summary(), prop::collection::vec(ep, 0..5)).prop_map(|(summary, mut endpoints)| {
        endpoints.sort_by_key(|e| e.mac);
        endpoints.dedup_by_key(|e| e.mac);
        Arc::new(EndpointRecord { summary, endpoints })
    })
}

fn ipam_record() -> impl Strategy<Value = Arc<IpamRecord>> {
    let space = (any::<u32>(), 0u8..=30, 0u8..=20).prop_map(|(net, p, bits)| {
        let net = if p == 0 {
            0
        } else {
            net & (u32::MAX << (32 - p))
        };
        IpamSpace {
            network: net.into(),
            prefix_len: p,
            block_prefix_len: (p + bits).clamp(8, 30),
        }
    });
    (
        summary(),
        space,
        prop::collection::vec((any::<u32>(), any::<bool>()), 0..12),
        prop::collection::vec(any::<u32>(), 0..4),
        prop::collection::vec((name(), any::<u64>(), any::<u64>()), 0..4),
    )
        .prop_map(|(summary, space, blocks, lost, removed)| {
            let n = 1u32 << (space.block_prefix_len - space.prefix_len);
            let mut settled: Vec<u32> = Vec::new();
            let mut pending: Vec<u32> = Vec::new();
            let mut all: Vec<(u32, bool)> = blocks.into_iter().map(|(b, s)| (b % n, s)).collect();
            all.sort();
            all.dedup_by_key(|x| x.0);
            for (b, s) in all {
                if s {
                    settled.push(b)
                } else {
                    pending.push(b)
                }
            }
            let base = u32::from(space.network);
            let size = 1u64 << (32 - space.prefix_len);
            let mut lost: Vec<std::net::Ipv4Addr> = lost
                .into_iter()
                .map(|x| (base + (u64::from(x) % size) as u32).into())
                .collect();
            lost.sort();
            lost.dedup();
            let mut removed: Vec<Removal> = removed
                .into_iter()
                .filter(|(p, _, _)| *p != summary.origin)
                .map(|(peer, uid, version)| Removal {
                    peer,
                    uid: PeerUid(uid),
                    version,
                })
                .collect();
            removed.sort_by_key(|r| r.peer);
            removed.dedup_by_key(|r| r.peer);
            Arc::new(IpamRecord {
                summary,
                space,
                blocks: settled,
                pending,
                lost,
                removed,
            })
        })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (channel(), prop::collection::vec(summary(), 0..8))
            .prop_map(|(channel, entries)| Message::Announce { channel, entries }),
        (channel(), prop::collection::vec(summary(), 0..8))
            .prop_map(|(channel, entries)| Message::Digest { channel, entries }),
        (channel(), prop::collection::vec(name(), 0..8))
            .prop_map(|(channel, origins)| Message::Request { channel, origins }),
        prop::collection::vec(peer_record(), 0..4).prop_map(Message::Topology),
        prop::collection::vec(endpoint_record(), 0..4).prop_map(Message::Endpoints),
        prop::collection::vec(ipam_record(), 0..4).prop_map(Message::Ipam),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    Remove(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
    ]
}

fn check(bytes: &[u8]) {
    if let Ok(msg) = Message::decode(bytes) {
        msg.validate().expect("decode only returns valid messages");
        let again = Message::decode(&msg.encode()).expect("re-encoded message decodes");
        assert_eq!(again, msg);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn valid_messages_roundtrip(msg in message()) {
        let bytes = msg.encode();
        prop_assert_eq!(bytes.len(), msg.encoded_len());
        prop_assert_eq!(Message::decode(&bytes).unwrap(), msg);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check(&bytes);
        let mut versioned = vec![weft_gossip::PROTOCOL_VERSION];
        versioned.extend(&bytes);
        check(&versioned);
    }

    #[test]
    fn mutated_encodings_never_panic(msg in message(), muts in prop::collection::vec(mutation(), 1..6)) {
        let mut bytes = msg.encode();
        for m in muts {
            let n = bytes.len().max(1);
            match m {
                Mutation::Flip(i, x) => { if !bytes.is_empty() { bytes[i % n] ^= x; } }
                Mutation::Truncate(i) => bytes.truncate(i % n),
                Mutation::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
                Mutation::Remove(i) => { if !bytes.is_empty() { bytes.remove(i % n); } }
            }
        }
        check(&bytes);
    }
}

/// `msg` decodes, with its one record dropped (one bad record never costs the connection,
/// and never reaches the state machine).
fn dropped(msg: &Message) -> bool {
    match Message::decode_counted(&msg.encode()) {
        Ok((m, d)) => {
            let empty = match &m {
                Message::Topology(r) => r.is_empty(),
                Message::Endpoints(r) => r.is_empty(),
                Message::Ipam(r) => r.is_empty(),
                _ => false,
            };
            empty && d.records == 1
        }
        Err(_) => false,
    }
}

#[test]
fn bounds_are_enforced() {
    assert!(Message::decode(&[]).is_err());
    assert!(Message::decode(&[weft_gossip::PROTOCOL_VERSION + 1, 0, 0, 0]).is_err());
    // a huge length prefix must not allocate or panic
    let mut b = vec![weft_gossip::PROTOCOL_VERSION, 3];
    b.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(Message::decode(&b).is_err());
    // invalid records are dropped: a record listing a connection to itself
    let origin = PeerName::new(5).unwrap();
    let bad = Message::Topology(vec![Arc::new(PeerRecord {
        summary: Summary {
            origin,
            uid: PeerUid(1),
            version: 1,
        },
        nickname: String::new(),
        connections: vec![ConnRecord {
            peer: origin,
            addr: ([1, 2, 3, 4], 5).into(),
            outbound: true,
        }],
    })]);
    assert!(dropped(&bad));
    // IPAM records: blocks in range, sorted, settled and pending disjoint, no self-removal
    let space = IpamSpace {
        network: [10, 0, 0, 0].into(),
        prefix_len: 24,
        block_prefix_len: 28,
    };
    let ipam = |blocks: Vec<u32>, pending: Vec<u32>, removed: Vec<Removal>| {
        Message::Ipam(vec![Arc::new(IpamRecord {
            summary: Summary {
                origin,
                uid: PeerUid(1),
                version: 1,
            },
            space,
            blocks,
            pending,
            lost: vec![],
            removed,
        })])
    };
    assert!(Message::decode(&ipam(vec![0, 15], vec![3], vec![]).encode()).is_ok());
    assert!(dropped(&ipam(vec![16], vec![], vec![])));
    assert!(dropped(&ipam(vec![2, 1], vec![], vec![])));
    assert!(dropped(&ipam(vec![1], vec![1], vec![])));
    let me = Removal {
        peer: origin,
        uid: PeerUid(1),
        version: 1,
    };
    assert!(dropped(&ipam(vec![], vec![], vec![me])));
    let mut bad_space = ipam(vec![], vec![], vec![]);
    if let Message::Ipam(r) = &mut bad_space {
        Arc::make_mut(&mut r[0]).space.block_prefix_len = 31;
    }
    assert!(dropped(&bad_space));
}

#[test]
fn an_endpoint_out_of_bounds_is_dropped_alone() {
    // One pod with an absurd name (or a name with a newline in it, which would forge log
    // lines elsewhere) must not take the node's other endpoints, nor the connection, with it.
    let origin = PeerName::new(7).unwrap();
    let ep = |last: u8, pod: &str| weft_gossip::Endpoint {
        mac: [2, 0, 0, 0, 0, last],
        ips: vec![IpAddr::from([10, 32, 0, last])],
        pod: Some(pod.to_string()),
    };
    let msg = Message::Endpoints(vec![Arc::new(weft_gossip::EndpointRecord {
        summary: Summary {
            origin,
            uid: PeerUid(1),
            version: 3,
        },
        endpoints: vec![
            ep(1, "default/web-0"),
            ep(2, &"x".repeat(weft_gossip::message::MAX_POD_NAME + 1)),
            ep(3, "default/evil\nINFO forged line"),
            ep(4, "default/web-1"),
        ],
    })]);
    let (m, d) = Message::decode_counted(&msg.encode()).expect("decodes");
    assert_eq!((d.records, d.endpoints), (0, 2), "{d:?}");
    let Message::Endpoints(recs) = m else {
        panic!("not endpoints")
    };
    let pods: Vec<_> = recs[0]
        .endpoints
        .iter()
        .map(|e| e.pod.clone().unwrap())
        .collect();
    assert_eq!(pods, ["default/web-0", "default/web-1"]);
    assert_eq!(recs[0].summary.version, 3, "the record itself is kept");
}
