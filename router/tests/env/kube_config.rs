//! Client construction the way the router does it (`weft::kube::client`, from
//! `kube::Config::infer`): no configuration at all is a clear error; a kubeconfig pointing at
//! an HTTPS API server with its own CA and a bearer token works (TLS through rustls/ring, as
//! in a cluster). One test: it changes the process environment.

use crate::kube_support;

use std::net::SocketAddr;
use std::sync::Arc;

use kube_support::{obj, options, wait_view, FakeApi, Kind};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use weft::kube::{Kube, KubeError, Origin};

struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((s, a)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(t) = self.acceptor.accept(s).await {
                return (t, a);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

#[tokio::test]
async fn client_from_kubeconfig_over_tls_and_clear_error_without_config() {
    let dir = std::env::temp_dir().join(format!("weft-kube-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::env::remove_var("KUBERNETES_SERVICE_HOST");
    std::env::remove_var("KUBERNETES_SERVICE_PORT");
    std::env::set_var("KUBECONFIG", dir.join("does-not-exist"));
    let Err(err) = weft::kube::client().await else {
        panic!("a client without any configuration")
    };
    assert!(matches!(err, KubeError::NoConfig(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("no Kubernetes API configuration") && msg.contains("KUBECONFIG"),
        "{msg}"
    );

    // an HTTPS fake API server with a self-signed certificate for 127.0.0.1
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, cert.cert.pem()).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
    )
    .unwrap();
    let api = FakeApi::start().await; // its plain-HTTP port is not used here
    api.apply(Kind::Nodes, obj::internal("me", "10.0.0.1"));
    api.apply(Kind::Nodes, obj::internal("n2", "10.0.0.2"));
    let listener = TlsListener {
        tcp: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        acceptor: TlsAcceptor::from(Arc::new(tls)),
    };
    let addr = listener.tcp.local_addr().unwrap();
    let app = api.router();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: https://{addr}\n    certificate-authority: {}\nusers:\n- name: weft\n  user:\n    token: s3cret-token\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: weft\ncurrent-context: fake\n",
        ca_path.display()
    );
    let kc_path = dir.join("kubeconfig");
    std::fs::write(&kc_path, kubeconfig).unwrap();
    std::env::set_var("KUBECONFIG", &kc_path);
    let client = weft::kube::client().await.expect("client from kubeconfig");
    let kube = Kube::start(client, options("me"));
    let v = wait_view(&kube.peers(), "synced over TLS", |v| {
        v.origin == Origin::Api
    })
    .await;
    assert!(v.set.peers.contains_key("n2"));
    let reqs = api.requests();
    assert!(!reqs.is_empty());
    for r in &reqs {
        assert_eq!(r.authorization.as_deref(), Some("Bearer s3cret-token"));
    }
    std::env::remove_var("KUBECONFIG");
    let _ = std::fs::remove_dir_all(&dir);
}
