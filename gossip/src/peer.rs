//! Peer identity: a stable 48-bit name, a nickname for humans, and a per-start UID.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A peer's stable name: 48 bits, shown like a MAC address (`a2:5c:01:9e:33:07`).
///
/// Derived from the machine id unless given with `--name`; it survives restarts.
/// Decoding rejects values that do not fit in 48 bits (two such names would look alike).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64")]
pub struct PeerName(u64);

impl TryFrom<u64> for PeerName {
    type Error = String;
    fn try_from(v: u64) -> Result<Self, String> {
        PeerName::new(v).ok_or_else(|| format!("peer name {v:#x} exceeds 48 bits"))
    }
}

impl PeerName {
    pub const MAX: u64 = (1 << 48) - 1;

    /// A name from its 48-bit value; `None` if it does not fit in 48 bits.
    pub fn new(v: u64) -> Option<Self> {
        (v <= Self::MAX).then_some(PeerName(v))
    }

    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// Derives a stable name from a machine id (the contents of `/etc/machine-id`) or any
    /// other stable string: the first 48 bits of a keyed hash, with the "locally
    /// administered" bit set and the multicast bit clear, like a made-up MAC address.
    pub fn derive(seed: &str) -> Self {
        // FNV-1a 64 over a domain-separated seed, then a splitmix64 finaliser: stable
        // across platforms and releases (this value is persisted implicitly as identity).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in b"weft-peer-name:".iter().chain(seed.trim().as_bytes()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        let mut v = h & Self::MAX;
        // first octet: set locally-administered (0x02), clear multicast (0x01)
        v = (v | (0x02 << 40)) & !(0x01 << 40);
        PeerName(v)
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0.to_be_bytes();
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[2], b[3], b[4], b[5], b[6], b[7]
        )
    }
}

impl fmt::Debug for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Error parsing a [`PeerName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid peer name {0:?}: expected six hex octets like 02:00:00:00:00:01")]
pub struct ParseNameError(pub String);

impl FromStr for PeerName {
    type Err = ParseNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(ParseNameError(s.to_string()));
        }
        let mut v: u64 = 0;
        for p in parts {
            if p.is_empty() || p.len() > 2 {
                return Err(ParseNameError(s.to_string()));
            }
            let o = u8::from_str_radix(p, 16).map_err(|_| ParseNameError(s.to_string()))?;
            v = (v << 8) | u64::from(o);
        }
        Ok(PeerName(v))
    }
}

/// Random per-start identifier: tells a restarted peer (same name) from its earlier run.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PeerUid(pub u64);

impl fmt::Debug for PeerUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Display for PeerUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Maximum nickname length in bytes accepted from the wire or the command line.
pub const MAX_NICKNAME: usize = 64;

/// Who a peer is: what it tells others in the authenticated handshake.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub name: PeerName,
    pub nickname: String,
    pub uid: PeerUid,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_roundtrip_and_derive() {
        let n = PeerName::derive("0123456789abcdef0123456789abcdef\n");
        assert_eq!(n, PeerName::derive("0123456789abcdef0123456789abcdef"));
        let s = n.to_string();
        assert_eq!(s.parse::<PeerName>().unwrap(), n);
        let first = (n.as_u64() >> 40) as u8;
        assert_eq!(first & 0x03, 0x02, "locally administered, unicast");
        assert_ne!(PeerName::derive("a"), PeerName::derive("b"));
        assert!("02:00:00:00:00".parse::<PeerName>().is_err());
        assert!("02:00:00:00:00:0g".parse::<PeerName>().is_err());
        assert!("02:00:00:00:00:100".parse::<PeerName>().is_err());
        assert!(PeerName::new(1 << 48).is_none());
        // the wire form is the plain integer; out-of-range values do not decode
        let bytes = postcard::to_allocvec(&n).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&n.as_u64()).unwrap());
        assert_eq!(postcard::from_bytes::<PeerName>(&bytes).unwrap(), n);
        let big = postcard::to_allocvec(&(1u64 << 48)).unwrap();
        assert!(postcard::from_bytes::<PeerName>(&big).is_err());
    }
}
