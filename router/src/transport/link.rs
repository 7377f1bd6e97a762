//! The link stream: messages about the data path between the two ends of one control
//! connection (today: fastpath heartbeat acks). Unlike gossip they are never stored or
//! forwarded. They travel on their own unidirectional stream ([`LINK_STREAM`]) so that an
//! ack never waits behind a large gossip transfer.
//!
//! Encoding: a version byte, then postcard. A message this side cannot decode (a newer
//! peer's variant, another version) is dropped and counted by the caller, never fatal: the
//! link carries hints whose loss the data path tolerates (a lost ack is a lost heartbeat).

use serde::{Deserialize, Serialize};

/// The stream id of the link stream (gossip channels use 0..=2).
pub const LINK_STREAM: u8 = 0x40;
/// Version byte of every link message.
pub const LINK_VERSION: u8 = 1;
/// Largest link message accepted.
pub const MAX_LINK_BYTES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkMessage {
    /// "Your fastpath heartbeat `seq` reached me through the kernel VXLAN path."
    FastpathAck { seq: u64, token: u64 },
}

/// Why a link message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkDecodeError {
    #[error("empty link message")]
    Empty,
    #[error("link message version {0} (this router speaks {LINK_VERSION})")]
    Version(u8),
    #[error("link message of {0} bytes exceeds {MAX_LINK_BYTES}")]
    TooLarge(usize),
    #[error("undecodable link message: {0}")]
    Body(String),
}

impl LinkMessage {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![LINK_VERSION];
        out.extend(postcard::to_allocvec(self).expect("link messages always serialize"));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<LinkMessage, LinkDecodeError> {
        let (&v, body) = bytes.split_first().ok_or(LinkDecodeError::Empty)?;
        if bytes.len() > MAX_LINK_BYTES {
            return Err(LinkDecodeError::TooLarge(bytes.len()));
        }
        if v != LINK_VERSION {
            return Err(LinkDecodeError::Version(v));
        }
        let (msg, rest) = postcard::take_from_bytes::<LinkMessage>(body)
            .map_err(|e| LinkDecodeError::Body(e.to_string()))?;
        if !rest.is_empty() {
            return Err(LinkDecodeError::Body(format!(
                "{} trailing bytes",
                rest.len()
            )));
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let m = LinkMessage::FastpathAck {
            seq: 7,
            token: u64::MAX,
        };
        let b = m.encode();
        assert_eq!(b[0], LINK_VERSION);
        assert_eq!(LinkMessage::decode(&b), Ok(m));
        assert_eq!(LinkMessage::decode(&[]), Err(LinkDecodeError::Empty));
        let mut other = b.clone();
        other[0] = 9;
        assert_eq!(
            LinkMessage::decode(&other),
            Err(LinkDecodeError::Version(9))
        );
        let mut trailing = b.clone();
        trailing.push(0);
        assert!(matches!(
            LinkMessage::decode(&trailing),
            Err(LinkDecodeError::Body(_))
        ));
        // An unknown variant (a newer peer) is an error, not a panic.
        assert!(matches!(
            LinkMessage::decode(&[LINK_VERSION, 42, 1, 1]),
            Err(LinkDecodeError::Body(_))
        ));
        assert!(matches!(
            LinkMessage::decode(&vec![LINK_VERSION; MAX_LINK_BYTES + 1]),
            Err(LinkDecodeError::TooLarge(_))
        ));
    }
}
