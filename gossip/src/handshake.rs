//! Plaintext wire types of the control handshake: the preamble each side sends before Noise,
//! and the Identity payload carried inside Noise messages 3 and 4 (postcard). They live in
//! the pure core so they can be parsed, tested and fuzzed without the router's transport.
//! The handshake itself (QUIC, Noise) is the router's: see `docs/control-protocol.md`.

use crate::peer::MAX_NICKNAME;
use crate::{Identity, PeerName};

/// First bytes of the preamble.
pub const MAGIC: &[u8; 4] = b"weft";
/// Version of this handshake.
pub const HANDSHAKE_VERSION: u8 = 1;
/// Length of the preamble.
pub const PREAMBLE_LEN: usize = 6;
/// An encoded Identity is never longer than this.
pub const MAX_IDENTITY_BYTES: usize = 256;

/// The plaintext preamble each side sends before Noise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preamble {
    pub version: u8,
    pub has_password: bool,
}

impl Preamble {
    pub fn encode(&self) -> [u8; PREAMBLE_LEN] {
        let mut b = [0u8; PREAMBLE_LEN];
        b[..4].copy_from_slice(MAGIC);
        b[4] = self.version;
        b[5] = u8::from(self.has_password);
        b
    }
}

/// A preamble that is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PreambleError {
    #[error("handshake preamble of {0} bytes (expected {PREAMBLE_LEN})")]
    Length(usize),
    #[error("not a weft peer (bad handshake magic)")]
    Magic,
}

/// Parses a preamble. Unknown flag bits are ignored (room for later extensions); the version
/// is returned, not judged. Never panics.
pub fn parse_preamble(b: &[u8]) -> Result<Preamble, PreambleError> {
    if b.len() != PREAMBLE_LEN {
        return Err(PreambleError::Length(b.len()));
    }
    if &b[..4] != MAGIC {
        return Err(PreambleError::Magic);
    }
    Ok(Preamble {
        version: b[4],
        has_password: b[5] & 1 == 1,
    })
}

/// An Identity payload that is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("identity of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("malformed identity: {0}")]
    Malformed(String),
    #[error("trailing bytes after identity")]
    Trailing,
    #[error("peer name out of the 48-bit range")]
    Name,
    #[error("nickname of {0} bytes exceeds {MAX_NICKNAME}")]
    NicknameTooLong(usize),
    #[error("nickname contains control characters")]
    NicknameControl,
}

/// Encodes an Identity for the handshake.
pub fn encode_identity(id: &Identity) -> Vec<u8> {
    // Serialising plain data into a Vec cannot fail.
    postcard::to_allocvec(id).expect("postcard encoding of plain data")
}

/// Decodes and validates an Identity from the handshake. Never panics.
pub fn decode_identity(b: &[u8]) -> Result<Identity, IdentityError> {
    if b.len() > MAX_IDENTITY_BYTES {
        return Err(IdentityError::TooLarge(b.len()));
    }
    let (id, rest): (Identity, &[u8]) =
        postcard::take_from_bytes(b).map_err(|e| IdentityError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(IdentityError::Trailing);
    }
    if PeerName::new(id.name.as_u64()).is_none() {
        return Err(IdentityError::Name);
    }
    if id.nickname.len() > MAX_NICKNAME {
        return Err(IdentityError::NicknameTooLong(id.nickname.len()));
    }
    if id.nickname.chars().any(char::is_control) {
        return Err(IdentityError::NicknameControl);
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_and_identity_roundtrip() {
        let p = Preamble {
            version: 1,
            has_password: true,
        };
        assert_eq!(parse_preamble(&p.encode()), Ok(p));
        assert_eq!(parse_preamble(b"wefx\x01\x00"), Err(PreambleError::Magic));
        assert_eq!(parse_preamble(b"weft"), Err(PreambleError::Length(4)));
        let id = Identity {
            name: PeerName::derive("x"),
            nickname: "node-1".into(),
            uid: crate::PeerUid(42),
        };
        assert_eq!(decode_identity(&encode_identity(&id)), Ok(id.clone()));
        let mut long = id.clone();
        long.nickname = "n".repeat(MAX_NICKNAME + 1);
        assert!(decode_identity(&encode_identity(&long)).is_err());
        let mut ctl = id;
        ctl.nickname = "a\x1b[2J".into();
        assert_eq!(
            decode_identity(&encode_identity(&ctl)),
            Err(IdentityError::NicknameControl)
        );
    }
}
