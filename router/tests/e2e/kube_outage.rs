//! The API server unreachable: at start (nothing listens yet), and across a router restart
//! (the peer cache in the state directory carries the last known peers).

use crate::kube_support;

use std::time::Duration;

use kube_support::{obj, options, wait_view, FakeApi, Kind};
use weft::kube::{Kube, Origin};

/// A port nothing listens on (bound once to pick it, then released).
fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

struct TempDir(std::path::PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("weft-kube-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn unreachable_at_start_then_up() {
    let addr = free_addr();
    let kube = Kube::start(
        kube_support::client_for(&format!("http://{addr}")),
        options("me"),
    );
    kube_support::eventually(5, "a connection error in status", || {
        kube.status().last_error.is_some()
    })
    .await;
    let st = kube.status();
    assert!(!st.connected && !st.synced, "{st:?}");
    let err = st.last_error.unwrap();
    assert!(
        err.starts_with("nodes: list failed") && err.contains("Connection refused"),
        "{err}"
    );
    assert_eq!(kube.peers().borrow().origin, Origin::Nothing);
    // it keeps trying (backoff, no panic, no exit)
    tokio::time::sleep(Duration::from_millis(600)).await;
    let errors = kube.status().resources[0].errors;
    assert!(errors >= 2, "retried {errors} times");

    let api = FakeApi::start_on(addr).await;
    api.apply(Kind::Nodes, obj::internal("me", "10.0.0.1"));
    api.apply(Kind::Nodes, obj::internal("n2", "10.0.0.2"));
    let v = wait_view(&kube.peers(), "synced once the API is up", |v| {
        v.origin == Origin::Api
    })
    .await;
    assert!(v.set.peers.contains_key("n2"));
    let st = kube.status();
    assert!(st.connected && st.synced, "{st:?}");
}

#[tokio::test]
async fn cached_peers_carry_a_restart_during_an_outage() {
    let dir = TempDir::new("cache");
    let api = FakeApi::start().await;
    api.apply(
        Kind::Nodes,
        obj::node("me", &[("InternalIP", "10.0.0.1")], Some("10.32.1.0/24")),
    );
    api.apply(Kind::Nodes, obj::internal("n2", "10.0.0.2"));
    let mut opts = options("me");
    opts.state_dir = Some(dir.0.clone());
    let kube = Kube::start(api.client(), opts.clone());
    let seen = wait_view(&kube.peers(), "first sync", |v| v.origin == Origin::Api).await;
    let cache = dir.0.join(weft::kube::nodes::CACHE_FILE);
    kube_support::eventually(5, "cache written", || cache.exists()).await;
    drop(kube);

    // the API server is down when the router restarts: the cache gives it its peers
    api.stop();
    let kube = Kube::start(api.client(), opts.clone());
    let v = kube.peers().borrow().clone();
    assert_eq!(v.origin, Origin::Cache);
    assert_eq!(v.set, seen.set);
    assert!(kube.status().peers_from_cache);
    kube_support::eventually(5, "outage noticed", || kube.status().last_error.is_some()).await;

    // the API returns with a changed cluster: the view switches to it, the cache follows
    api.apply(Kind::Nodes, obj::internal("n3", "10.0.0.3"));
    api.restart().await;
    let v = wait_view(&kube.peers(), "API view", |v| v.origin == Origin::Api).await;
    assert!(v.set.peers.contains_key("n3"));
    assert!(!kube.status().peers_from_cache);
    kube_support::eventually(5, "cache updated", || {
        weft::kube::nodes::load_cache(&dir.0, "me").is_some_and(|s| s.peers.contains_key("n3"))
    })
    .await;
    // a cache written for another node name is not used
    assert!(weft::kube::nodes::load_cache(&dir.0, "other").is_none());
    std::fs::write(&cache, b"{not json").unwrap();
    assert!(weft::kube::nodes::load_cache(&dir.0, "me").is_none());
}
