//! Control connections: QUIC (quinn) on UDP 6783, authenticated by Noise, carrying gossip.
//!
//! Design note. One [`Transport`] owns one QUIC endpoint bound to the listen address and
//! uses it both to accept and to dial, so the source address of an inbound connection is
//! the address its owner listens on. TLS runs with a self-signed per-process certificate and
//! the dialer accepts any certificate: TLS gives confidentiality against passive observers
//! and the TLS exporter, nothing more. Authentication is a Noise handshake on the first
//! bidirectional stream ([`handshake`]): `Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s` with the
//! PSK derived from the network password ([`derive_psk`]), or plain `Noise_XX_…` without a
//! password. Its prologue is the QUIC TLS exporter, so a man in the middle who terminates
//! QUIC towards both sides cannot relay the Noise messages. A plaintext preamble before
//! Noise lets a password present on one side only, or a version mismatch, fail with a clear
//! reason. Failures close the connection with an application code ([`CloseCode`]) so that
//! both sides report the same reason.
//!
//! After authentication each side sends gossip on one unidirectional stream per channel
//! ([`conn`] describes the framing).
//!
//! Usage (inside a tokio runtime):
//! ```no_run
//! # async fn demo(identity: weft_gossip::Identity, peer: std::net::SocketAddr) -> anyhow::Result<()> {
//! use weft::transport::{derive_psk, Transport, TransportConfig, DEFAULT_LISTEN, DEFAULT_CLUSTER};
//! let psk = derive_psk(b"password", DEFAULT_CLUSTER);
//! let t = Transport::bind(TransportConfig::new(DEFAULT_LISTEN, identity, Some(psk)))?;
//! let t2 = t.clone();
//! tokio::spawn(async move {
//!     while let Some(incoming) = t2.accept().await {
//!         tokio::spawn(async move {
//!             match incoming.complete().await {
//!                 Ok(mut conn) => while let Ok(msg) = conn.recv().await { /* feed the mesh */ },
//!                 Err(e) => eprintln!("inbound failed: {e}"),
//!             }
//!         });
//!     }
//! });
//! let conn = t.dial(peer).await?;               // Err(ConnectError) says why, clearly
//! let tx = conn.sender();                       // clone freely; one stream per channel
//! let end = conn.closed().await;                // why it ended; end.to_failure() for status
//! # Ok(()) }
//! ```
//!
//! Limits: keep-alive 1 s, idle timeout 5 s (a dead peer is noticed within 5 s), one
//! bidirectional and [`tls::MAX_UNI_STREAMS`] unidirectional streams per connection, bounded
//! flow-control windows, QUIC datagrams disabled, the whole handshake (QUIC + Noise) bounded
//! by [`TransportConfig::handshake_timeout`]. Stray or forged UDP datagrams are dropped by
//! quinn without affecting established connections.

pub mod admission;
pub mod conn;
pub mod error;
pub mod handshake;
pub mod link;
pub mod psk;
pub mod tls;

pub use conn::{dropped_records, ConnSender, PeerConn, SendError};
pub use error::{CloseCode, ConnectError, ConnectionEnd};
pub use handshake::{
    decode_identity, encode_identity, parse_preamble, IdentityError, NoiseError, NoiseHandshake,
    Preamble, PreambleError, SessionSecrets,
};
pub use link::LinkMessage;
pub use psk::{derive_psk, read_password, PasswordError, DEFAULT_CLUSTER, PASSWORD_ENV};
pub use tls::ALPN;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{timeout_at, Instant};
use weft_gossip::Identity;
use zeroize::Zeroizing;

/// Default control port.
pub const DEFAULT_PORT: u16 = 6783;
/// Default listen address: all IPv4 addresses, port 6783.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, DEFAULT_PORT));
/// Default bound on a whole connection setup (QUIC handshake + authentication).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a [`Transport`] needs.
#[derive(Clone)]
pub struct TransportConfig {
    pub listen: SocketAddr,
    /// What this router tells its peers in the handshake.
    pub identity: Identity,
    /// The Noise PSK ([`derive_psk`]); `None` runs without a network password.
    pub psk: Option<[u8; 32]>,
    /// Bound on a whole connection setup, either direction: a peer that stays silent
    /// cannot hold a slot longer than this.
    pub handshake_timeout: Duration,
}

impl TransportConfig {
    pub fn new(listen: SocketAddr, identity: Identity, psk: Option<[u8; 32]>) -> Self {
        TransportConfig {
            listen,
            identity,
            psk,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportConfig")
            .field("listen", &self.listen)
            .field("identity", &self.identity)
            .field("psk", &self.psk.map(|_| "<set>"))
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

/// Why a transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("Noise setup: {0}")]
    Noise(#[from] NoiseError),
    #[error("invalid local identity: {0}")]
    Identity(#[from] IdentityError),
}

struct Inner {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    identity: Vec<u8>,
    psk: Option<Zeroizing<[u8; 32]>>,
    static_key: Zeroizing<Vec<u8>>,
    static_public: Vec<u8>,
    handshake_timeout: Duration,
}

impl Inner {
    /// Authenticates a fresh QUIC connection before `deadline`.
    async fn authenticate(
        &self,
        conn: quinn::Connection,
        outbound: bool,
        remote: SocketAddr,
        deadline: Instant,
    ) -> Result<PeerConn, ConnectError> {
        let local = handshake::LocalAuth {
            identity: &self.identity,
            static_key: &self.static_key,
            static_public: &self.static_public,
            psk: self.psk.as_deref(),
        };
        match timeout_at(deadline, handshake::authenticate(&conn, outbound, &local)).await {
            Ok(Ok((peer, secrets))) => {
                tracing::debug!(%remote, outbound, peer = %peer.name, "control connection established");
                Ok(PeerConn::start(conn, peer, remote, outbound, secrets))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                conn.close(CloseCode::PROTOCOL.varint(), b"handshake timed out");
                Err(ConnectError::Timeout)
            }
        }
    }
}

/// The control-plane endpoint of one router. Cheap to clone (shared).
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl Transport {
    /// Binds the UDP socket and prepares TLS and Noise. Must be called inside a tokio runtime.
    pub fn bind(cfg: TransportConfig) -> Result<Transport, TransportError> {
        let identity = encode_identity(&cfg.identity);
        // Refuse to start with an identity peers would reject.
        decode_identity(&identity)?;
        let (static_key, static_public) = NoiseHandshake::generate_static_keypair()?;
        let (server, client) = tls::configs()?;
        let mut endpoint =
            quinn::Endpoint::server(server, cfg.listen).map_err(|source| TransportError::Bind {
                addr: cfg.listen,
                source,
            })?;
        endpoint.set_default_client_config(client);
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| TransportError::Bind {
                addr: cfg.listen,
                source,
            })?;
        Ok(Transport {
            inner: Arc::new(Inner {
                endpoint,
                local_addr,
                identity,
                psk: cfg.psk.map(Zeroizing::new),
                static_key,
                static_public,
                handshake_timeout: cfg.handshake_timeout,
            }),
        })
    }

    /// The bound address (with the actual port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Whether connections are authenticated with a network password.
    pub fn has_password(&self) -> bool {
        self.inner.psk.is_some()
    }

    /// Connects to `addr` and authenticates, within the handshake timeout.
    pub async fn dial(&self, addr: SocketAddr) -> Result<PeerConn, ConnectError> {
        let deadline = Instant::now() + self.inner.handshake_timeout;
        let connecting = self
            .inner
            .endpoint
            .connect(addr, tls::SERVER_NAME)
            .map_err(|e| ConnectError::Unreachable(format!("cannot dial {addr}: {e}")))?;
        let conn = match timeout_at(deadline, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(ConnectError::from_quic(e, self.has_password())),
            Err(_) => return Err(ConnectError::Timeout),
        };
        self.inner.authenticate(conn, true, addr, deadline).await
    }

    /// The next inbound connection attempt; `None` once the endpoint is closed. Call
    /// [`Incoming::complete`] (in its own task) or [`Incoming::refuse`] on it.
    pub async fn accept(&self) -> Option<Incoming> {
        let inner = self.inner.endpoint.accept().await?;
        Some(Incoming {
            inner,
            transport: self.inner.clone(),
        })
    }

    /// Closes every connection ([`CloseCode::NORMAL`], "shutting down") and stops accepting.
    pub fn close(&self) {
        self.inner
            .endpoint
            .close(CloseCode::NORMAL.varint(), b"shutting down");
    }

    /// [`Transport::close`], then waits (at most 1 s) until the peers have been told.
    pub async fn shutdown(&self) {
        self.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }
}

/// An inbound connection attempt, before the QUIC handshake.
pub struct Incoming {
    inner: quinn::Incoming,
    transport: Arc<Inner>,
}

impl Incoming {
    /// Where the attempt comes from.
    pub fn remote(&self) -> SocketAddr {
        self.inner.remote_address()
    }

    /// Whether the dialer has proven it receives at its address (it echoed a Retry token).
    pub fn validated(&self) -> bool {
        self.inner.remote_address_validated()
    }

    /// Answers with a stateless QUIC Retry (nothing is kept; a real dialer comes back with
    /// the token and is then [`Incoming::validated`]). An attempt that already carries a
    /// token cannot be retried again: it is dropped.
    pub fn retry(self) {
        if self.inner.may_retry() {
            let _ = self.inner.retry();
        } else {
            self.inner.ignore();
        }
    }

    /// Turns the attempt away (QUIC `CONNECTION_REFUSED`); the dialer reports
    /// [`ConnectError::Refused`]. Cheap: nothing is allocated for the connection.
    pub fn refuse(self) {
        self.inner.refuse();
    }

    /// Completes the QUIC handshake and authenticates, within the handshake timeout.
    pub async fn complete(self) -> Result<PeerConn, ConnectError> {
        let t = self.transport;
        let deadline = Instant::now() + t.handshake_timeout;
        let remote = self.inner.remote_address();
        let connecting = self
            .inner
            .accept()
            .map_err(|e| ConnectError::from_quic(e, t.psk.is_some()))?;
        let conn = match timeout_at(deadline, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(ConnectError::from_quic(e, t.psk.is_some())),
            Err(_) => return Err(ConnectError::Timeout),
        };
        t.authenticate(conn, false, remote, deadline).await
    }
}
