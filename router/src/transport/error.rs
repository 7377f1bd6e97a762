//! Close codes and the two error types users see: why a connection could not be set up
//! ([`ConnectError`]) and why an established one ended ([`ConnectionEnd`]).

use std::fmt;
use weft_gossip::{FailKind, Failure};

/// QUIC application close code of a weft control connection.
///
/// Known codes have names; any other value a peer sends is kept as is.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u64);

impl CloseCode {
    /// Orderly close (shutdown, duplicate connection): not a failure.
    pub const NORMAL: CloseCode = CloseCode(0x0);
    /// The Noise handshake failed: wrong network password (or tampering).
    pub const AUTH_FAILED: CloseCode = CloseCode(0x10);
    /// One side has a network password and the other has none.
    pub const PASSWORD_MISMATCH: CloseCode = CloseCode(0x11);
    /// Unsupported weft handshake version.
    pub const VERSION: CloseCode = CloseCode(0x12);
    /// The peer does not want this connection (connection limit, ...).
    pub const REFUSED: CloseCode = CloseCode(0x13);
    /// The peer broke the protocol (malformed preamble, frame or message).
    pub const PROTOCOL: CloseCode = CloseCode(0x14);
    /// Another router with the dialer's peer name is connected here (`weft_gossip::names`).
    pub const DUPLICATE_NAME: CloseCode = CloseCode(0x15);

    pub fn name(self) -> &'static str {
        match self {
            CloseCode::NORMAL => "normal",
            CloseCode::AUTH_FAILED => "auth-failed",
            CloseCode::PASSWORD_MISMATCH => "password-mismatch",
            CloseCode::VERSION => "version",
            CloseCode::REFUSED => "refused",
            CloseCode::PROTOCOL => "protocol",
            CloseCode::DUPLICATE_NAME => "duplicate-name",
            _ => "unknown",
        }
    }

    /// The failure class a close with this code stands for.
    pub fn fail_kind(self) -> FailKind {
        match self {
            CloseCode::AUTH_FAILED | CloseCode::PASSWORD_MISMATCH => FailKind::Auth,
            CloseCode::VERSION | CloseCode::REFUSED => FailKind::Refused,
            CloseCode::DUPLICATE_NAME => FailKind::DuplicateName,
            _ => FailKind::Protocol,
        }
    }

    pub(crate) fn varint(self) -> quinn::VarInt {
        quinn::VarInt::from_u64(self.0).unwrap_or(quinn::VarInt::MAX)
    }
}

impl From<quinn::VarInt> for CloseCode {
    fn from(v: quinn::VarInt) -> Self {
        CloseCode(v.into_inner())
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:x})", self.name(), self.0)
    }
}

impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Reason shown when the Noise handshake fails on the PSK.
pub const WRONG_PASSWORD: &str = "authentication failed: wrong network password";
/// Reason shown when the Noise handshake does not match this QUIC session: the messages
/// were relayed between two QUIC sessions, as a man in the middle would.
pub const NOT_BOUND: &str =
    "authentication failed: handshake not bound to this QUIC session (man in the middle?)";
/// Reason shown when the peer has a password and we have none.
pub const PEER_HAS_PASSWORD: &str =
    "password mismatch: the peer has a network password and this router has none";
/// Reason shown when we have a password and the peer has none.
pub const PEER_HAS_NO_PASSWORD: &str =
    "password mismatch: this router has a network password and the peer has none";

/// Why a connection could not be established (either direction). `Display` is the reason
/// shown to operators; it never contains secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("timed out: no complete handshake within the time limit")]
    Timeout,
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    PasswordMismatch(String),
    #[error("protocol version mismatch: {0}")]
    Version(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("refused: {0}")]
    DuplicateName(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The dial reached this router itself (its own static key answered): not a failure,
    /// the address is not dialled again.
    #[error("the address is this router's own")]
    SelfConnection,
}

impl ConnectError {
    /// The failure as the mesh records it (status shows `detail`).
    pub fn to_failure(&self) -> Failure {
        let kind = match self {
            ConnectError::Unreachable(_) | ConnectError::Timeout => FailKind::Unreachable,
            ConnectError::Auth(_) | ConnectError::PasswordMismatch(_) => FailKind::Auth,
            ConnectError::Version(_) | ConnectError::Refused(_) | ConnectError::SelfConnection => {
                FailKind::Refused
            }
            ConnectError::DuplicateName(_) => FailKind::DuplicateName,
            ConnectError::Protocol(_) => FailKind::Protocol,
        };
        Failure {
            kind,
            detail: self.to_string(),
        }
    }

    /// Classifies a QUIC connection error seen before the handshake completed.
    /// `have_psk` lets a password mismatch be explained from this side's point of view.
    pub(crate) fn from_quic(e: quinn::ConnectionError, have_psk: bool) -> ConnectError {
        use quinn::ConnectionError as E;
        match e {
            E::ApplicationClosed(ac) => {
                let code = CloseCode::from(ac.error_code);
                let reason = sanitize(&ac.reason);
                let or = |default: &str| {
                    if reason.is_empty() {
                        default.to_string()
                    } else {
                        reason.clone()
                    }
                };
                match code {
                    CloseCode::AUTH_FAILED => ConnectError::Auth(or(WRONG_PASSWORD)),
                    CloseCode::PASSWORD_MISMATCH => ConnectError::PasswordMismatch(
                        if have_psk {
                            PEER_HAS_NO_PASSWORD
                        } else {
                            PEER_HAS_PASSWORD
                        }
                        .to_string(),
                    ),
                    CloseCode::VERSION => ConnectError::Version(format!(
                        "the peer reports: {}",
                        or("our version is not supported")
                    )),
                    CloseCode::REFUSED => ConnectError::Refused(or("by the peer")),
                    CloseCode::DUPLICATE_NAME => ConnectError::DuplicateName(or(
                        "another router with our name is connected there",
                    )),
                    CloseCode::PROTOCOL => {
                        ConnectError::Protocol(format!("the peer reports: {}", or("error")))
                    }
                    CloseCode::NORMAL => ConnectError::Refused(format!(
                        "the peer closed the connection during the handshake: {}",
                        or("no reason given")
                    )),
                    other => ConnectError::Protocol(format!(
                        "the peer closed with unknown code {other}: {reason}"
                    )),
                }
            }
            E::ConnectionClosed(cc)
                if cc.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                ConnectError::Refused("the peer refused the connection (connection limit?)".into())
            }
            E::ConnectionClosed(cc) => ConnectError::Protocol(format!("QUIC: {cc}")),
            E::TimedOut => ConnectError::Timeout,
            E::Reset => ConnectError::Unreachable("connection reset by the peer".into()),
            E::LocallyClosed => {
                ConnectError::Unreachable("closed locally (endpoint shutting down)".into())
            }
            E::VersionMismatch => ConnectError::Version("the peer does not speak QUIC v1".into()),
            e @ (E::TransportError(_) | E::CidsExhausted) => {
                ConnectError::Protocol(format!("QUIC: {e}"))
            }
        }
    }

    /// The reason without the category prefix of `Display` (the close code carries that).
    pub(crate) fn reason(&self) -> String {
        match self {
            ConnectError::Unreachable(d)
            | ConnectError::Auth(d)
            | ConnectError::PasswordMismatch(d)
            | ConnectError::Version(d)
            | ConnectError::Refused(d)
            | ConnectError::DuplicateName(d)
            | ConnectError::Protocol(d) => d.clone(),
            ConnectError::Timeout => "handshake timed out".into(),
            ConnectError::SelfConnection => "connection to self".into(),
        }
    }

    /// The close code to send when this side detects this error during the handshake.
    pub(crate) fn close_code(&self) -> CloseCode {
        match self {
            ConnectError::Auth(_) => CloseCode::AUTH_FAILED,
            ConnectError::PasswordMismatch(_) => CloseCode::PASSWORD_MISMATCH,
            ConnectError::Version(_) => CloseCode::VERSION,
            ConnectError::Refused(_) => CloseCode::REFUSED,
            ConnectError::DuplicateName(_) => CloseCode::DUPLICATE_NAME,
            ConnectError::SelfConnection => CloseCode::NORMAL,
            ConnectError::Protocol(_) | ConnectError::Timeout | ConnectError::Unreachable(_) => {
                CloseCode::PROTOCOL
            }
        }
    }
}

/// Why an established connection ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionEnd {
    /// This side closed it ([`super::PeerConn::close`], or the endpoint shut down).
    #[error("closed here: {reason} [{code}]")]
    Local { code: CloseCode, reason: String },
    /// The peer closed it with an application code.
    #[error("closed by the peer: {reason} [{code}]")]
    Peer { code: CloseCode, reason: String },
    /// Nothing heard from the peer for the idle timeout (it died or the path broke).
    #[error("timed out: nothing heard from the peer for {}s", super::tls::IDLE_TIMEOUT.as_secs())]
    TimedOut,
    /// The peer's endpoint no longer knows the connection (it restarted).
    #[error("reset by the peer (it restarted?)")]
    Reset,
    /// The peer sent something invalid; this side closed with [`CloseCode::PROTOCOL`].
    #[error("protocol error from the peer: {0}")]
    Protocol(String),
    /// A QUIC-level error.
    #[error("QUIC error: {0}")]
    Transport(String),
}

impl ConnectionEnd {
    /// The failure to record for status; `None` for an orderly close.
    pub fn to_failure(&self) -> Option<Failure> {
        let kind = match self {
            ConnectionEnd::Local { code, .. } | ConnectionEnd::Peer { code, .. } => {
                if *code == CloseCode::NORMAL {
                    return None;
                }
                code.fail_kind()
            }
            ConnectionEnd::TimedOut | ConnectionEnd::Reset => FailKind::Unreachable,
            ConnectionEnd::Protocol(_) | ConnectionEnd::Transport(_) => FailKind::Protocol,
        };
        // We refused a duplicate ourselves: not a refusal of us.
        let kind = match (self, kind) {
            (ConnectionEnd::Local { .. }, FailKind::DuplicateName) => FailKind::Refused,
            (_, k) => k,
        };
        Some(Failure {
            kind,
            detail: self.to_string(),
        })
    }

    /// Classifies quinn's close reason; `local` is what this side recorded when it closed.
    pub(crate) fn from_quic(e: quinn::ConnectionError, local: Option<ConnectionEnd>) -> Self {
        use quinn::ConnectionError as E;
        match e {
            E::LocallyClosed => local.unwrap_or(ConnectionEnd::Local {
                code: CloseCode::NORMAL,
                reason: "endpoint closed".into(),
            }),
            E::ApplicationClosed(ac) => ConnectionEnd::Peer {
                code: ac.error_code.into(),
                reason: sanitize(&ac.reason),
            },
            E::TimedOut => ConnectionEnd::TimedOut,
            E::Reset => ConnectionEnd::Reset,
            e => ConnectionEnd::Transport(e.to_string()),
        }
    }
}

/// Maximum length of a close reason we send or show.
pub(crate) const MAX_REASON: usize = 200;

/// Makes a peer-supplied reason safe to show: UTF-8, no control characters, bounded.
pub(crate) fn sanitize(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(MAX_REASON)
        .collect()
}

/// Truncates a reason we send to [`MAX_REASON`] bytes on a character boundary.
pub(crate) fn truncate_reason(s: &str) -> &[u8] {
    let mut end = s.len().min(MAX_REASON);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}
