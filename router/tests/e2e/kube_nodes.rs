//! The Node source against the fake API server: the peer set follows Nodes as they come,
//! change and go; the watch resumes after dropped connections (no relist), moves on with
//! bookmarks, and lists again after `410 Gone`; an outage keeps the last known peers.

use crate::kube_support;

use std::net::IpAddr;
use std::time::Duration;

use kube_support::{obj, options, wait_view, FakeApi, Kind};
use weft::kube::{Kube, Origin, PeerSet};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addr_of(set: &PeerSet, node: &str) -> Option<IpAddr> {
    set.peers.get(node).map(|p| p.address)
}

#[tokio::test]
async fn peer_set_follows_nodes() {
    let api = FakeApi::start().await;
    api.apply(
        Kind::Nodes,
        obj::node("me", &[("InternalIP", "10.0.0.1")], Some("10.32.1.0/24")),
    );
    api.apply(Kind::Nodes, obj::internal("n2", "10.0.0.2"));
    api.apply(Kind::Nodes, obj::node("bare", &[], None));
    let kube = Kube::start(api.client(), options("me"));
    let rx = kube.peers();
    let v = wait_view(&rx, "first sync", |v| v.origin == Origin::Api).await;
    let me = v.set.this_node.as_ref().expect("this node found");
    assert_eq!(me.pod_cidr_v4().unwrap().to_string(), "10.32.1.0/24");
    assert_eq!(me.address, Some(ip("10.0.0.1")));
    assert_eq!(addr_of(&v.set, "n2"), Some(ip("10.0.0.2")));
    assert!(
        !v.set.peers.contains_key("me"),
        "this node is not its own peer"
    );
    assert!(
        v.set.skipped["bare"].contains("no addresses"),
        "{:?}",
        v.set.skipped
    );
    assert_eq!(v.set.targets(6783), vec!["10.0.0.2:6783".parse().unwrap()]);

    // a Node joins, with only an ExternalIP
    api.apply(
        Kind::Nodes,
        obj::node("n3", &[("ExternalIP", "203.0.113.3")], None),
    );
    let v2 = wait_view(&rx, "n3 added", |v| v.set.peers.contains_key("n3")).await;
    assert_eq!(addr_of(&v2.set, "n3"), Some(ip("203.0.113.3")));
    let d = v2.set.diff(&v.set);
    assert_eq!(d.added.len(), 1);
    assert!(d.removed.is_empty());

    // its address changes; the Node without addresses gets one
    api.apply(
        Kind::Nodes,
        obj::node(
            "n3",
            &[("InternalIP", "10.0.0.3"), ("ExternalIP", "203.0.113.3")],
            None,
        ),
    );
    api.apply(Kind::Nodes, obj::internal("bare", "10.0.0.9"));
    let v3 = wait_view(&rx, "n3 changed, bare addressed", |v| {
        addr_of(&v.set, "n3") == Some(ip("10.0.0.3")) && v.set.peers.contains_key("bare")
    })
    .await;
    assert!(v3.set.skipped.is_empty());

    // a Node is deleted: reported as removed, so its IP space can be reclaimed
    api.delete(Kind::Nodes, "n2");
    let v4 = wait_view(&rx, "n2 removed", |v| !v.set.peers.contains_key("n2")).await;
    let d = v4.set.diff(&v3.set);
    assert_eq!(d.removed, vec!["n2".to_string()]);
    assert!(!v4
        .set
        .peer_names()
        .contains(&weft::kube::peer_name_for_node("n2")));

    let st = kube.status();
    assert!(st.connected && st.synced, "{st:?}");
    assert_eq!(st.peers, 2);
    assert_eq!(st.pod_cidrs, vec!["10.32.1.0/24".to_string()]);
    assert_eq!(st.resources.len(), 1, "no policy watches asked for");
    assert_eq!(st.resources[0].objects, 3);
    assert_eq!(api.lists(Kind::Nodes), 1);
    assert_eq!(api.lists(Kind::Pods), 0);
    // paged lists
    let list = api
        .requests()
        .into_iter()
        .find(|r| r.path == Kind::Nodes.path() && !r.is_watch())
        .unwrap();
    assert_eq!(list.query.get("limit").map(String::as_str), Some("500"));
}

#[tokio::test]
async fn watch_resumes_after_dropped_connections_without_relisting() {
    let api = FakeApi::start().await;
    api.apply(Kind::Nodes, obj::internal("me", "10.0.0.1"));
    let kube = Kube::start(api.client(), options("me"));
    let rx = kube.peers();
    wait_view(&rx, "first sync", |v| v.origin == Origin::Api).await;
    kube_support::eventually(5, "watch open", || api.open_watches(Kind::Nodes) == 1).await;
    let rv_before = api.resource_version();

    // broken mid-stream; a Node is added before the client is back
    api.break_watches();
    api.apply(Kind::Nodes, obj::internal("n2", "10.0.0.2"));
    wait_view(&rx, "n2 after a broken watch", |v| {
        v.set.peers.contains_key("n2")
    })
    .await;
    // ended cleanly (the server's timeout); another change
    kube_support::eventually(5, "watch reopened", || api.open_watches(Kind::Nodes) == 1).await;
    api.end_watches();
    api.apply(Kind::Nodes, obj::internal("n3", "10.0.0.3"));
    wait_view(&rx, "n3 after an ended watch", |v| {
        v.set.peers.contains_key("n3")
    })
    .await;

    assert_eq!(api.lists(Kind::Nodes), 1, "resumed, not listed again");
    let watches = api.watches(Kind::Nodes);
    assert!(watches.len() >= 3, "{watches:?}");
    // the first resume continues from where the first watch was, not from scratch
    let resumed: u64 = watches[1].query["resourceVersion"].parse().unwrap();
    assert_eq!(resumed, rv_before);
    for w in &watches {
        assert_eq!(
            w.query.get("allowWatchBookmarks").map(String::as_str),
            Some("true")
        );
    }
}

#[tokio::test]
async fn bookmarks_move_the_resume_point_past_compaction() {
    let api = FakeApi::start().await;
    api.apply(Kind::Nodes, obj::internal("me", "10.0.0.1"));
    api.apply(Kind::Nodes, obj::internal("n2", "10.0.0.2"));
    let kube = Kube::start(api.client(), options("me"));
    let rx = kube.peers();
    wait_view(&rx, "first sync", |v| v.origin == Origin::Api).await;
    kube_support::eventually(5, "watch open", || api.open_watches(Kind::Nodes) == 1).await;
    let listed_at = api.resource_version();

    // the rest of the cluster moves on (objects of another kind), then history is compacted:
    // a watch resuming from the list's resourceVersion would now get 410 Gone
    for i in 0..5 {
        api.apply(
            Kind::Namespaces,
            serde_json::json!({"metadata": {"name": format!("ns{i}")}}),
        );
    }
    assert_eq!(api.bookmark(Kind::Nodes), 1);
    let bookmark_rv = api.resource_version();
    assert!(bookmark_rv > listed_at);
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.compact();
    api.break_watches();
    kube_support::eventually(5, "watch reopened", || api.open_watches(Kind::Nodes) == 1).await;

    let watches = api.watches(Kind::Nodes);
    assert_eq!(
        watches.last().unwrap().query["resourceVersion"],
        bookmark_rv.to_string(),
        "resumed from the bookmark"
    );
    assert_eq!(api.lists(Kind::Nodes), 1, "no 410, no relist");
    // and the resumed watch works
    api.apply(Kind::Nodes, obj::internal("n3", "10.0.0.3"));
    wait_view(&rx, "n3", |v| v.set.peers.contains_key("n3")).await;
}

#[tokio::test]
async fn gone_relists_and_an_outage_keeps_the_last_known_peers() {
    let api = FakeApi::start().await;
    api.apply(Kind::Nodes, obj::internal("me", "10.0.0.1"));
    api.apply(Kind::Nodes, obj::internal("n2", "10.0.0.2"));
    api.apply(Kind::Nodes, obj::internal("n3", "10.0.0.3"));
    let kube = Kube::start(api.client(), options("me"));
    let rx = kube.peers();
    let before = wait_view(&rx, "first sync", |v| v.origin == Origin::Api).await;
    assert_eq!(before.set.peers.len(), 2);

    // the API server goes away (503s); meanwhile n2 is deleted and n3 moves, and the
    // history that would tell the watch about it is compacted away
    api.set_down(true);
    api.delete(Kind::Nodes, "n2");
    api.apply(Kind::Nodes, obj::internal("n3", "10.0.0.33"));
    api.compact();
    kube_support::eventually(5, "outage visible in status", || !kube.status().connected).await;
    let st = kube.status();
    assert!(
        st.last_error.as_deref().unwrap_or("").contains("503"),
        "{st:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        *rx.borrow(),
        before,
        "the last known peers stay in use during an outage"
    );
    assert!(kube.status().synced, "still synced: the cache is whole");

    // back: the resumed watch gets 410 Gone, the client lists again and catches up
    api.set_down(false);
    let after = wait_view(&rx, "caught up after 410", |v| {
        !v.set.peers.contains_key("n2") && addr_of(&v.set, "n3") == Some(ip("10.0.0.33"))
    })
    .await;
    let d = after.set.diff(&before.set);
    assert_eq!(d.removed, vec!["n2".to_string()]);
    assert_eq!(d.changed.len(), 1);
    assert_eq!(api.lists(Kind::Nodes), 2, "one relist after 410");
    kube_support::eventually(5, "connected again", || kube.status().connected).await;
    let st = kube.status();
    assert_eq!(st.resources[0].lists, 2);
    assert!(st.resources[0].errors >= 2, "{st:?}");
}
