//! Authentication on the first bidirectional stream: a plaintext preamble, then Noise XX
//! (with `psk3` when the network has a password), bound to the QUIC session by its TLS
//! exporter used as the Noise prologue.
//!
//! Wire exchange (dialer = Noise initiator, `->` is dialer to acceptor):
//! ```text
//! -> preamble   "weft" | version u8 | flags u8 (bit 0: has password)
//! <- preamble
//! -> noise 1    e
//! <- noise 2    e, ee, s, es               (empty payload)
//! -> noise 3    s, se, [psk]              payload: dialer Identity (postcard)
//! <- noise 4    transport message          payload: acceptor Identity (postcard)
//! ```
//! Noise messages are prefixed by their length (u16 big-endian). With `psk3` the PSK enters
//! in message 3, so the acceptor detects a wrong password when it decrypts message 3 and
//! closes with [`super::CloseCode::AUTH_FAILED`]; message 4, encrypted with the final keys, proves
//! to the dialer that the acceptor knows the password. The acceptor's Identity travels in
//! message 4 rather than message 2 because message 2 is not yet covered by the PSK: that
//! way no Identity is revealed to, or accepted from, anyone who does not know the password.

use super::error::{
    ConnectError, NOT_BOUND, PEER_HAS_NO_PASSWORD, PEER_HAS_PASSWORD, WRONG_PASSWORD,
};
use std::fmt;
use weft_gossip::Identity;
use zeroize::{Zeroize, Zeroizing};

pub use weft_gossip::handshake::{
    decode_identity, encode_identity, parse_preamble, IdentityError, Preamble, PreambleError,
    HANDSHAKE_VERSION, MAGIC, MAX_IDENTITY_BYTES, PREAMBLE_LEN,
};

/// Noise protocol with a network password.
pub const NOISE_PSK: &str = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s";
/// Noise protocol without a network password.
pub const NOISE_PLAIN: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// TLS exporter label of the Noise prologue (empty context, 32 bytes).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-weft-noise-prologue";
const MAX_NOISE_MSG: usize = 65535;

/// Key material of one authenticated session, for deriving data-plane keys.
///
/// Identical on both sides. The split keys come from snow's `dangerously_get_raw_split`
/// (feature `risky-raw-split`): the Noise `Split()` outputs, `initiator_key` protecting
/// dialer-to-acceptor traffic and `responder_key` the other direction. Use them only as
/// input to a KDF. Wiped on drop; `Debug` does not print them.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionSecrets {
    /// The Noise handshake hash (channel binding).
    pub handshake_hash: [u8; 32],
    pub initiator_key: [u8; 32],
    pub responder_key: [u8; 32],
    /// Whether the network password (PSK) took part.
    pub psk: bool,
}

impl SessionSecrets {
    /// `(send, receive)` keys for the side that dialled (`outbound`) or accepted.
    pub fn directional(&self, outbound: bool) -> (&[u8; 32], &[u8; 32]) {
        if outbound {
            (&self.initiator_key, &self.responder_key)
        } else {
            (&self.responder_key, &self.initiator_key)
        }
    }
}

impl fmt::Debug for SessionSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionSecrets")
            .field("psk", &self.psk)
            .finish_non_exhaustive()
    }
}

impl Drop for SessionSecrets {
    fn drop(&mut self) {
        self.handshake_hash.zeroize();
        self.initiator_key.zeroize();
        self.responder_key.zeroize();
    }
}

/// Why a Noise step failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoiseError {
    /// Authentication failed: wrong PSK, different prologue, or tampering.
    #[error("decryption failed")]
    Decrypt,
    #[error("malformed handshake message")]
    Malformed,
    #[error("handshake state error: {0}")]
    State(String),
}

impl From<snow::Error> for NoiseError {
    fn from(e: snow::Error) -> Self {
        match e {
            snow::Error::Decrypt | snow::Error::Dh => NoiseError::Decrypt,
            snow::Error::Input => NoiseError::Malformed,
            e => NoiseError::State(e.to_string()),
        }
    }
}

enum Phase {
    Handshake(Box<snow::HandshakeState>),
    Transport(Box<snow::TransportState>),
    Done,
}

/// The Noise layer without I/O: four messages, alternating, starting with the initiator.
/// Messages 1–3 are the XX(psk3) handshake, message 4 a transport message from the
/// responder. After message 4, [`NoiseHandshake::finish`] yields the [`SessionSecrets`].
pub struct NoiseHandshake {
    phase: Phase,
    secrets: Option<SessionSecrets>,
}

impl NoiseHandshake {
    /// A fresh X25519 private key (one per process: identity is not by key, the PSK is the
    /// credential).
    pub fn generate_static_key() -> Result<Zeroizing<Vec<u8>>, NoiseError> {
        Ok(Self::generate_static_keypair()?.0)
    }

    /// A fresh X25519 key pair: (private, public).
    pub fn generate_static_keypair() -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), NoiseError> {
        let params = NOISE_PLAIN.parse().expect("valid Noise protocol name");
        let kp = snow::Builder::new(params).generate_keypair()?;
        Ok((Zeroizing::new(kp.private), kp.public))
    }

    /// The peer's static public key, once a handshake message has carried it (and the
    /// message authenticated it: whoever sent it holds the private key).
    pub fn remote_static(&self) -> Option<&[u8]> {
        match &self.phase {
            Phase::Handshake(hs) => hs.get_remote_static(),
            Phase::Transport(t) => t.get_remote_static(),
            Phase::Done => None,
        }
    }

    pub fn new(
        initiator: bool,
        static_key: &[u8],
        prologue: &[u8],
        psk: Option<&[u8; 32]>,
    ) -> Result<Self, NoiseError> {
        let name = if psk.is_some() {
            NOISE_PSK
        } else {
            NOISE_PLAIN
        };
        let mut b = snow::Builder::new(name.parse().expect("valid Noise protocol name"))
            .local_private_key(static_key)?
            .prologue(prologue)?;
        if let Some(psk) = psk {
            b = b.psk(3, psk)?;
        }
        let hs = if initiator {
            b.build_initiator()?
        } else {
            b.build_responder()?
        };
        Ok(NoiseHandshake {
            phase: Phase::Handshake(Box::new(hs)),
            secrets: None,
        })
    }

    /// Produces the next message carrying `payload`.
    pub fn write(&mut self, payload: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let mut out = vec![0u8; MAX_NOISE_MSG];
        let n = match &mut self.phase {
            Phase::Handshake(hs) => hs.write_message(payload, &mut out)?,
            Phase::Transport(t) => {
                let n = t.write_message(payload, &mut out)?;
                self.phase = Phase::Done;
                n
            }
            Phase::Done => return Err(NoiseError::State("handshake already complete".into())),
        };
        out.truncate(n);
        self.advance()?;
        Ok(out)
    }

    /// Consumes the peer's next message and returns its payload.
    pub fn read(&mut self, msg: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let mut out = vec![0u8; MAX_NOISE_MSG];
        let n = match &mut self.phase {
            Phase::Handshake(hs) => hs.read_message(msg, &mut out)?,
            Phase::Transport(t) => {
                let n = t.read_message(msg, &mut out)?;
                self.phase = Phase::Done;
                n
            }
            Phase::Done => return Err(NoiseError::State("handshake already complete".into())),
        };
        out.truncate(n);
        self.advance()?;
        Ok(out)
    }

    /// After message 3: keep the secrets, switch to transport mode for message 4.
    fn advance(&mut self) -> Result<(), NoiseError> {
        let finished = matches!(&self.phase, Phase::Handshake(hs) if hs.is_handshake_finished());
        if !finished {
            return Ok(());
        }
        let Phase::Handshake(mut hs) = std::mem::replace(&mut self.phase, Phase::Done) else {
            unreachable!("checked above")
        };
        let mut handshake_hash = [0u8; 32];
        handshake_hash.copy_from_slice(&hs.get_handshake_hash()[..32]);
        let (initiator_key, responder_key) = hs.dangerously_get_raw_split();
        self.secrets = Some(SessionSecrets {
            handshake_hash,
            initiator_key,
            responder_key,
            psk: false,
        });
        self.phase = Phase::Transport(Box::new(hs.into_transport_mode()?));
        Ok(())
    }

    /// The session secrets once all four messages are through.
    pub fn finish(mut self, psk: bool) -> Option<SessionSecrets> {
        if !matches!(self.phase, Phase::Done) {
            return None;
        }
        self.secrets.take().map(|mut s| {
            s.psk = psk;
            s
        })
    }
}

/// What this side brings to a handshake.
pub(crate) struct LocalAuth<'a> {
    pub identity: &'a [u8],
    pub static_key: &'a [u8],
    /// The public half of `static_key`: a responder presenting it is this router itself.
    pub static_public: &'a [u8],
    pub psk: Option<&'a [u8; 32]>,
}

/// Runs the authentication exchange on a fresh QUIC connection. On a failure detected here,
/// the connection is closed with the matching [`super::CloseCode`]; a close by the peer is turned
/// into the same [`ConnectError`] the peer saw. No timeout here: the caller bounds it.
pub(crate) async fn authenticate(
    conn: &quinn::Connection,
    initiator: bool,
    local: &LocalAuth<'_>,
) -> Result<(Identity, SessionSecrets), ConnectError> {
    let io = Io {
        conn,
        have_psk: local.psk.is_some(),
    };
    let mut prologue = Zeroizing::new([0u8; 32]);
    conn.export_keying_material(&mut prologue[..], EXPORTER_LABEL, b"")
        .map_err(|_| io.fail(ConnectError::Protocol("TLS exporter unavailable".into())))?;

    let (mut send, mut recv) = if initiator {
        conn.open_bi().await
    } else {
        conn.accept_bi().await
    }
    .map_err(|e| io.lost(e))?;

    let ours = Preamble {
        version: HANDSHAKE_VERSION,
        has_password: io.have_psk,
    };
    if initiator {
        io.write(&mut send, &ours.encode()).await?;
    }
    let mut buf = [0u8; PREAMBLE_LEN];
    io.read_exact(&mut recv, &mut buf).await?;
    let theirs =
        parse_preamble(&buf).map_err(|e| io.fail(ConnectError::Protocol(e.to_string())))?;
    check_preamble(theirs, io.have_psk).map_err(|e| io.fail(e))?;
    if !initiator {
        io.write(&mut send, &ours.encode()).await?;
    }

    let mut noise = NoiseHandshake::new(initiator, local.static_key, &prologue[..], local.psk)
        .map_err(|e| io.fail(ConnectError::Protocol(e.to_string())))?;
    let internal = |e: NoiseError| ConnectError::Protocol(e.to_string());
    let peer = if initiator {
        let m1 = noise.write(&[]).map_err(|e| io.fail(internal(e)))?;
        io.send_msg(&mut send, &m1).await?;
        let m2 = io.recv_msg(&mut recv).await?;
        noise.read(&m2).map_err(|e| {
            io.fail(match e {
                NoiseError::Decrypt => ConnectError::Auth(NOT_BOUND.into()),
                e => internal(e),
            })
        })?;
        // Message 2 proved the responder holds its static key: ours means we dialled
        // ourselves. The handshake still runs to the end, so that the responder half
        // completes and the mesh closes both halves as a self-connection; but that close
        // may overtake message 4, and then this half reports the self-dial, not a failure.
        let to_self = noise.remote_static() == Some(local.static_public);
        let rest = async {
            let m3 = noise
                .write(local.identity)
                .map_err(|e| io.fail(internal(e)))?;
            io.send_msg(&mut send, &m3).await?;
            let _ = send.finish();
            let m4 = io.recv_msg(&mut recv).await?;
            let payload = noise.read(&m4).map_err(|e| {
                io.fail(match e {
                    NoiseError::Decrypt => ConnectError::Auth(
                        "authentication failed: the peer did not prove it knows the network \
                         password"
                            .into(),
                    ),
                    e => internal(e),
                })
            })?;
            decode_identity(&payload)
                .map_err(|e| io.fail(ConnectError::Protocol(format!("peer identity: {e}"))))
        };
        match rest.await {
            Ok(peer) => peer,
            Err(_) if to_self => return Err(ConnectError::SelfConnection),
            Err(e) => return Err(e),
        }
    } else {
        let m1 = io.recv_msg(&mut recv).await?;
        noise.read(&m1).map_err(|e| {
            io.fail(match e {
                NoiseError::Decrypt => ConnectError::Auth(NOT_BOUND.into()),
                e => internal(e),
            })
        })?;
        let m2 = noise.write(&[]).map_err(|e| io.fail(internal(e)))?;
        io.send_msg(&mut send, &m2).await?;
        let m3 = io.recv_msg(&mut recv).await?;
        let payload = noise.read(&m3).map_err(|e| {
            io.fail(match e {
                NoiseError::Decrypt if io.have_psk => ConnectError::Auth(WRONG_PASSWORD.into()),
                NoiseError::Decrypt => ConnectError::Auth(NOT_BOUND.into()),
                e => internal(e),
            })
        })?;
        let peer = decode_identity(&payload)
            .map_err(|e| io.fail(ConnectError::Protocol(format!("peer identity: {e}"))))?;
        let m4 = noise
            .write(local.identity)
            .map_err(|e| io.fail(internal(e)))?;
        io.send_msg(&mut send, &m4).await?;
        let _ = send.finish();
        peer
    };
    let secrets = noise
        .finish(io.have_psk)
        .ok_or_else(|| io.fail(ConnectError::Protocol("handshake incomplete".into())))?;
    Ok((peer, secrets))
}

fn check_preamble(theirs: Preamble, have_psk: bool) -> Result<(), ConnectError> {
    if theirs.version != HANDSHAKE_VERSION {
        return Err(ConnectError::Version(format!(
            "weft handshake version {} is not supported by a router speaking version \
             {HANDSHAKE_VERSION}",
            theirs.version
        )));
    }
    match (theirs.has_password, have_psk) {
        (true, false) => Err(ConnectError::PasswordMismatch(PEER_HAS_PASSWORD.into())),
        (false, true) => Err(ConnectError::PasswordMismatch(PEER_HAS_NO_PASSWORD.into())),
        _ => Ok(()),
    }
}

/// Stream I/O of the handshake with error classification.
struct Io<'a> {
    conn: &'a quinn::Connection,
    have_psk: bool,
}

impl Io<'_> {
    /// Closes the connection with the code matching `e` and returns `e`.
    fn fail(&self, e: ConnectError) -> ConnectError {
        let code = e.close_code();
        let reason = e.reason();
        tracing::debug!(remote = %self.conn.remote_address(), %reason, "handshake failed");
        self.conn
            .close(code.varint(), super::error::truncate_reason(&reason));
        e
    }

    fn lost(&self, e: quinn::ConnectionError) -> ConnectError {
        ConnectError::from_quic(e, self.have_psk)
    }

    async fn write(&self, s: &mut quinn::SendStream, b: &[u8]) -> Result<(), ConnectError> {
        s.write_all(b).await.map_err(|e| match e {
            quinn::WriteError::ConnectionLost(e) => self.lost(e),
            e => self.fail(ConnectError::Protocol(format!("handshake stream: {e}"))),
        })
    }

    async fn read_exact(
        &self,
        s: &mut quinn::RecvStream,
        b: &mut [u8],
    ) -> Result<(), ConnectError> {
        s.read_exact(b).await.map_err(|e| match e {
            quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(e)) => self.lost(e),
            quinn::ReadExactError::FinishedEarly(_) => self.fail(ConnectError::Protocol(
                "the peer ended the handshake early".into(),
            )),
            quinn::ReadExactError::ReadError(e) => {
                self.fail(ConnectError::Protocol(format!("handshake stream: {e}")))
            }
        })
    }

    async fn send_msg(&self, s: &mut quinn::SendStream, msg: &[u8]) -> Result<(), ConnectError> {
        let len = u16::try_from(msg.len())
            .map_err(|_| self.fail(ConnectError::Protocol("oversized Noise message".into())))?;
        let mut buf = Vec::with_capacity(2 + msg.len());
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(msg);
        self.write(s, &buf).await
    }

    async fn recv_msg(&self, s: &mut quinn::RecvStream) -> Result<Vec<u8>, ConnectError> {
        let mut len = [0u8; 2];
        self.read_exact(s, &mut len).await?;
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        self.read_exact(s, &mut msg).await?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        pi: &[u8],
        pr: &[u8],
        ki: Option<&[u8; 32]>,
        kr: Option<&[u8; 32]>,
    ) -> Result<(SessionSecrets, SessionSecrets), (usize, NoiseError)> {
        let si = NoiseHandshake::generate_static_key().unwrap();
        let sr = NoiseHandshake::generate_static_key().unwrap();
        let mut i = NoiseHandshake::new(true, &si, pi, ki).unwrap();
        let mut r = NoiseHandshake::new(false, &sr, pr, kr).unwrap();
        let m1 = i.write(&[]).map_err(|e| (1, e))?;
        r.read(&m1).map_err(|e| (1, e))?;
        let m2 = r.write(&[]).map_err(|e| (2, e))?;
        i.read(&m2).map_err(|e| (2, e))?;
        let m3 = i.write(b"initiator").map_err(|e| (3, e))?;
        assert_eq!(r.read(&m3).map_err(|e| (3, e))?, b"initiator");
        let m4 = r.write(b"responder").map_err(|e| (4, e))?;
        assert_eq!(i.read(&m4).map_err(|e| (4, e))?, b"responder");
        Ok((
            i.finish(ki.is_some()).unwrap(),
            r.finish(kr.is_some()).unwrap(),
        ))
    }

    #[test]
    fn same_prologue_and_psk_agree() {
        let (a, b) = run(b"p", b"p", Some(&[7; 32]), Some(&[7; 32])).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.initiator_key, a.responder_key);
        let (a, b) = run(b"p", b"p", None, None).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn wrong_psk_fails_at_message_3() {
        let e = run(b"p", b"p", Some(&[1; 32]), Some(&[2; 32])).unwrap_err();
        assert_eq!(e, (3, NoiseError::Decrypt));
    }

    #[test]
    fn different_prologue_fails() {
        // With a PSK, message 1 already carries a tag over the prologue.
        let e = run(b"session-a", b"session-b", Some(&[1; 32]), Some(&[1; 32])).unwrap_err();
        assert_eq!(e, (1, NoiseError::Decrypt));
        let e = run(b"session-a", b"session-b", None, None).unwrap_err();
        assert_eq!(e, (2, NoiseError::Decrypt));
    }
}
