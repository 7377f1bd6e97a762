//! Gossip wire messages: typed in memory, postcard on the wire behind a version byte.
//!
//! Records travel as `Arc`s so that a simulator (or a router fanning out one update to many
//! neighbours) shares them instead of copying; [`Message::encode`] / [`Message::decode`] are
//! the only places bytes appear. Every decoded message is validated ([`Message::decode`]
//! rejects anything out of bounds), so the state machine never sees malformed input.

use crate::ipam::IpamSpace;
use crate::peer::{PeerName, PeerUid, MAX_NICKNAME};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// Version of the gossip protocol; the first byte of every encoded message.
pub const PROTOCOL_VERSION: u8 = 1;

/// Upper bounds enforced on decode (a hostile peer cannot make us allocate without bound).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
pub const MAX_ENTRIES: usize = 100_000;
pub const MAX_CONNECTIONS_PER_RECORD: usize = 10_000;
pub const MAX_ENDPOINTS_PER_RECORD: usize = 10_000;
pub const MAX_IPS_PER_ENDPOINT: usize = 16;
pub const MAX_POD_NAME: usize = 512;
/// Blocks (settled plus pending) in one IPAM record: every block of the largest space.
pub const MAX_IPAM_BLOCKS: usize = 1 << crate::ipam::MAX_BLOCK_BITS;
pub const MAX_IPAM_LOST: usize = 1 << 16;
pub const MAX_IPAM_REMOVALS: usize = 10_000;

/// A gossip channel: each is an independent replicated store of per-peer records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Channel {
    /// Who is connected to whom ([`PeerRecord`]).
    Topology,
    /// Which MACs/IPs live behind which peer ([`EndpointRecord`]).
    Endpoints,
    /// Which address blocks each peer claims ([`IpamRecord`]).
    Ipam,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Topology, Channel::Endpoints, Channel::Ipam];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Topology => "topology",
            Channel::Endpoints => "endpoints",
            Channel::Ipam => "ipam",
        }
    }
}

/// The version stamp of one peer's record: records of the same origin are ordered by
/// `(version, uid)`, the larger wins. That order is total, so merge is a join.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Summary {
    pub origin: PeerName,
    pub uid: PeerUid,
    pub version: u64,
}

impl Summary {
    /// The merge order key.
    pub fn key(&self) -> (u64, PeerUid) {
        (self.version, self.uid)
    }
}

/// One established control connection as its owner reports it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConnRecord {
    pub peer: PeerName,
    /// The remote address of the connection (for an outbound one, an address the peer listens on).
    pub addr: SocketAddr,
    /// Whether the owner of the record dialled this connection.
    pub outbound: bool,
}

/// A peer's topology record: its identity and its established connections.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerRecord {
    pub summary: Summary,
    pub nickname: String,
    /// Sorted by peer name, at most one entry per peer.
    pub connections: Vec<ConnRecord>,
}

/// One local endpoint (a pod interface) a peer owns.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    pub mac: [u8; 6],
    pub ips: Vec<IpAddr>,
    /// `namespace/name` of the pod, when known.
    pub pod: Option<String>,
}

/// A peer's endpoint record: all endpoints it owns.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub summary: Summary,
    /// Sorted by MAC, unique MACs.
    pub endpoints: Vec<Endpoint>,
}

/// A removal of a peer from IPAM (`weft rmpeer`): every record of `peer` up to the stamp
/// `(version, uid)` is void, everywhere; the remover took over its blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Removal {
    pub peer: PeerName,
    pub uid: PeerUid,
    pub version: u64,
}

impl Removal {
    /// The removed record's merge key: records of `peer` with a key up to this are void.
    pub fn key(&self) -> (u64, PeerUid) {
        (self.version, self.uid)
    }
}

/// A peer's IPAM record: its address space and the blocks it claims (docs: "IPAM" in
/// `docs/control-protocol.md`). Addresses themselves are allocated locally, not gossiped.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IpamRecord {
    pub summary: Summary,
    /// Range and block size; blocks are numbered in it.
    pub space: IpamSpace,
    /// Settled blocks: owned, allocated from. Sorted, unique.
    pub blocks: Vec<u32>,
    /// Claimed blocks still settling (not allocated from yet). Sorted, unique, disjoint
    /// from `blocks`.
    pub pending: Vec<u32>,
    /// Addresses still allocated in blocks this peer lost in a conflict (nobody else may
    /// hand them out until released). Sorted, unique.
    pub lost: Vec<Ipv4Addr>,
    /// Peers this peer removed. Sorted by peer, unique, never the origin.
    pub removed: Vec<Removal>,
}

/// A gossip message on one control connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// "I have these (newer) records": sent to a few neighbours after a change.
    Announce {
        channel: Channel,
        entries: Vec<Summary>,
    },
    /// "This is everything I have": periodic anti-entropy, and on a new connection.
    Digest {
        channel: Channel,
        entries: Vec<Summary>,
    },
    /// "Send me your records of these origins."
    Request {
        channel: Channel,
        origins: Vec<PeerName>,
    },
    /// Topology records.
    Topology(Vec<Arc<PeerRecord>>),
    /// Endpoint records.
    Endpoints(Vec<Arc<EndpointRecord>>),
    /// IPAM records.
    Ipam(Vec<Arc<IpamRecord>>),
}

/// Why a message was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("message of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("unsupported protocol version {0} (this router speaks {PROTOCOL_VERSION})")]
    Version(u8),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("trailing bytes after message")]
    Trailing,
    #[error("invalid message: {0}")]
    Invalid(&'static str),
}

impl Message {
    pub fn channel(&self) -> Channel {
        match self {
            Message::Announce { channel, .. }
            | Message::Digest { channel, .. }
            | Message::Request { channel, .. } => *channel,
            Message::Topology(_) => Channel::Topology,
            Message::Endpoints(_) => Channel::Endpoints,
            Message::Ipam(_) => Channel::Ipam,
        }
    }

    /// Version byte followed by the postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![PROTOCOL_VERSION];
        // Serialising plain data into a Vec cannot fail.
        out.extend(postcard::to_allocvec(self).expect("postcard encoding of plain data"));
        out
    }

    /// Size of [`Message::encode`]'s output (used for accounting without allocating twice).
    pub fn encoded_len(&self) -> usize {
        1 + postcard::experimental::serialized_size(self).unwrap_or(0)
    }

    /// Parses and validates one message. Never panics on any input. Records that break the
    /// bounds are dropped from it ([`Message::decode_counted`] says how many).
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        Self::decode_counted(bytes).map(|(m, _)| m)
    }

    /// [`Message::decode`], and how much of it was dropped. A message that does not parse,
    /// or breaks a bound of the message itself (its size, its number of records), is an
    /// error: the peer is broken. One bad record is not: one pod with an absurd name, or one
    /// peer's malformed record relayed by an honest neighbour, must not cost the connection.
    /// So a record that fails [`PeerRecord::validate`] or [`IpamRecord::validate`] is
    /// dropped whole, and from an endpoint record only the endpoints that break the bounds
    /// ([`Endpoint::is_valid`]); every router drops the same, so all views stay equal.
    pub fn decode_counted(bytes: &[u8]) -> Result<(Message, Dropped), DecodeError> {
        let (&v, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        if v != PROTOCOL_VERSION {
            return Err(DecodeError::Version(v));
        }
        let (msg, tail): (Message, &[u8]) =
            postcard::take_from_bytes(rest).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if !tail.is_empty() {
            return Err(DecodeError::Trailing);
        }
        let mut msg: Message = msg;
        let dropped = msg.sanitize();
        msg.validate()?;
        Ok((msg, dropped))
    }

    /// Drops what [`Message::decode_counted`] drops (message-level bounds are left to
    /// [`Message::validate`]).
    fn sanitize(&mut self) -> Dropped {
        let mut d = Dropped::default();
        fn keep_valid<R>(
            recs: &mut Vec<Arc<R>>,
            d: &mut Dropped,
            valid: impl Fn(&R) -> Result<(), DecodeError>,
        ) {
            if recs.len() > MAX_ENTRIES {
                return;
            }
            recs.retain(|r| match valid(r) {
                Ok(()) => true,
                Err(DecodeError::Invalid(why)) => {
                    d.records += 1;
                    d.reason.get_or_insert(why);
                    false
                }
                Err(_) => {
                    d.records += 1;
                    false
                }
            });
        }
        match self {
            Message::Topology(recs) => keep_valid(recs, &mut d, PeerRecord::validate),
            Message::Endpoints(recs) => {
                if recs.len() <= MAX_ENTRIES {
                    for r in recs.iter_mut() {
                        if r.endpoints.iter().any(|e| !e.is_valid()) {
                            let r = Arc::make_mut(r);
                            let before = r.endpoints.len();
                            r.endpoints.retain(Endpoint::is_valid);
                            d.endpoints += before - r.endpoints.len();
                            d.reason.get_or_insert("an endpoint out of bounds");
                        }
                    }
                }
                keep_valid(recs, &mut d, EndpointRecord::validate)
            }
            Message::Ipam(recs) => keep_valid(recs, &mut d, IpamRecord::validate),
            Message::Announce { .. } | Message::Digest { .. } | Message::Request { .. } => {}
        }
        d
    }

    /// Bounds and invariants a well-behaved peer always keeps.
    pub fn validate(&self) -> Result<(), DecodeError> {
        use DecodeError::Invalid;
        match self {
            Message::Announce { entries, .. } | Message::Digest { entries, .. } => {
                if entries.len() > MAX_ENTRIES {
                    return Err(Invalid("too many entries"));
                }
            }
            Message::Request { origins, .. } => {
                if origins.len() > MAX_ENTRIES {
                    return Err(Invalid("too many origins"));
                }
            }
            Message::Topology(recs) => {
                if recs.len() > MAX_ENTRIES {
                    return Err(Invalid("too many records"));
                }
                for r in recs {
                    r.validate()?;
                }
            }
            Message::Endpoints(recs) => {
                if recs.len() > MAX_ENTRIES {
                    return Err(Invalid("too many records"));
                }
                for r in recs {
                    r.validate()?;
                }
            }
            Message::Ipam(recs) => {
                if recs.len() > MAX_ENTRIES {
                    return Err(Invalid("too many records"));
                }
                for r in recs {
                    r.validate()?;
                }
            }
        }
        Ok(())
    }
}

impl PeerRecord {
    pub fn validate(&self) -> Result<(), DecodeError> {
        use DecodeError::Invalid;
        if self.nickname.len() > MAX_NICKNAME {
            return Err(Invalid("nickname too long"));
        }
        if self.connections.len() > MAX_CONNECTIONS_PER_RECORD {
            return Err(Invalid("too many connections"));
        }
        if !self.connections.windows(2).all(|w| w[0].peer < w[1].peer) {
            return Err(Invalid("connections not sorted and unique"));
        }
        if self
            .connections
            .iter()
            .any(|c| c.peer == self.summary.origin)
        {
            return Err(Invalid("connection to itself"));
        }
        Ok(())
    }
}

impl EndpointRecord {
    pub fn validate(&self) -> Result<(), DecodeError> {
        use DecodeError::Invalid;
        if self.endpoints.len() > MAX_ENDPOINTS_PER_RECORD {
            return Err(Invalid("too many endpoints"));
        }
        if !self.endpoints.windows(2).all(|w| w[0].mac < w[1].mac) {
            return Err(Invalid("endpoints not sorted by unique MAC"));
        }
        if !self.endpoints.iter().all(Endpoint::is_valid) {
            return Err(Invalid("an endpoint out of bounds"));
        }
        Ok(())
    }
}

impl Endpoint {
    /// At most [`MAX_IPS_PER_ENDPOINT`] addresses, and a pod name of at most
    /// [`MAX_POD_NAME`] bytes without control characters (it ends up in logs and status).
    pub fn is_valid(&self) -> bool {
        self.ips.len() <= MAX_IPS_PER_ENDPOINT
            && self
                .pod
                .as_ref()
                .is_none_or(|p| p.len() <= MAX_POD_NAME && !p.chars().any(char::is_control))
    }
}

/// What [`Message::decode_counted`] dropped from one message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Whole records.
    pub records: usize,
    /// Endpoints removed from endpoint records that were kept.
    pub endpoints: usize,
    /// The first reason.
    pub reason: Option<&'static str>,
}

impl Dropped {
    pub fn is_empty(&self) -> bool {
        self.records == 0 && self.endpoints == 0
    }
}

impl IpamRecord {
    pub fn validate(&self) -> Result<(), DecodeError> {
        use DecodeError::Invalid;
        if self.space.check().is_err() {
            return Err(Invalid("invalid IPAM space"));
        }
        if self.blocks.len() + self.pending.len() > MAX_IPAM_BLOCKS {
            return Err(Invalid("too many IPAM blocks"));
        }
        let n = self.space.block_count();
        for list in [&self.blocks, &self.pending] {
            if !list.windows(2).all(|w| w[0] < w[1]) {
                return Err(Invalid("IPAM blocks not sorted and unique"));
            }
            if list.last().is_some_and(|&b| b >= n) {
                return Err(Invalid("IPAM block outside the range"));
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < self.blocks.len() && j < self.pending.len() {
            match self.blocks[i].cmp(&self.pending[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    return Err(Invalid("IPAM block both settled and pending"))
                }
            }
        }
        if self.lost.len() > MAX_IPAM_LOST {
            return Err(Invalid("too many lost IPAM addresses"));
        }
        if !self.lost.windows(2).all(|w| w[0] < w[1]) {
            return Err(Invalid("lost IPAM addresses not sorted and unique"));
        }
        if self
            .lost
            .iter()
            .any(|a| self.space.block_of(u32::from(*a)).is_none())
        {
            return Err(Invalid("lost IPAM address outside the range"));
        }
        if self.removed.len() > MAX_IPAM_REMOVALS {
            return Err(Invalid("too many IPAM removals"));
        }
        if !self.removed.windows(2).all(|w| w[0].peer < w[1].peer) {
            return Err(Invalid("IPAM removals not sorted and unique"));
        }
        if self.removed.iter().any(|r| r.peer == self.summary.origin) {
            return Err(Invalid("IPAM record removes its own origin"));
        }
        Ok(())
    }
}
