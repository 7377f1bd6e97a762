//! QUIC and TLS configuration: a self-signed per-process certificate, a client that accepts
//! any server certificate (authentication is the Noise layer's job), and the transport limits.

use super::TransportError;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
use std::time::Duration;

/// ALPN protocol id of the weft control protocol.
pub const ALPN: &[u8] = b"weft/1";
/// Server name the dialer puts in the TLS ClientHello (not checked by anyone).
pub(crate) const SERVER_NAME: &str = "weft";
/// QUIC keep-alive interval.
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// QUIC idle timeout: a silent peer is declared dead after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Unidirectional streams a peer may have open at once (one per gossip channel, plus room
/// for reserved channels and for streams replaced after a cancelled send).
pub const MAX_UNI_STREAMS: u8 = 8;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Transport parameters shared by both directions.
fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT).expect("5 s fits a QUIC varint"),
    ));
    // One bidirectional stream: the authentication exchange (closed to 0 once done).
    t.max_concurrent_bidi_streams(1u8.into());
    t.max_concurrent_uni_streams(MAX_UNI_STREAMS.into());
    // Bounded buffering per stream and per connection; gossip is small and bursty.
    t.stream_receive_window(quinn::VarInt::from_u32(1 << 20));
    t.receive_window(quinn::VarInt::from_u32(4 << 20));
    t.send_window(4 << 20);
    // No QUIC datagrams on the control connection.
    t.datagram_receive_buffer_size(None);
    t.datagram_send_buffer_size(0);
    t
}

/// Builds the server and client configurations with a fresh self-signed certificate
/// (what [`super::Transport::bind`] uses; public for probes and tests).
pub fn configs() -> Result<(quinn::ServerConfig, quinn::ClientConfig), TransportError> {
    let tls = |e: String| TransportError::Tls(e);
    let ck = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
        .map_err(|e| tls(e.to_string()))?;
    let cert: CertificateDer<'static> = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let transport = Arc::new(transport_config());

    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| tls(e.to_string()))?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let server = QuicServerConfig::try_from(server).map_err(|e| tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
    server.transport_config(transport.clone());
    // Bound what unauthenticated traffic can make us hold.
    server.max_incoming(1024);
    server.incoming_buffer_size(64 << 10);
    server.incoming_buffer_size_total(8 << 20);

    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider())))
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN.to_vec()];
    let client = QuicClientConfig::try_from(client).map_err(|e| tls(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client));
    client.transport_config(transport);
    Ok((server, client))
}

/// Accepts any server certificate but checks that the server holds the certificate's key
/// (the handshake signature is verified with the ring provider). Who the peer is, and whether
/// it knows the network password, is established by the Noise handshake that follows.
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
