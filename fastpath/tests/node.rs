//! Node plumbing: bridge, TAP, gateway, sysctls, reset, capabilities. Needs root; each test
//! runs as "host" inside a namespace of its own.

mod common;

use common::{require_root, TestNs};
use weft_fastpath::{
    detect_capabilities, reset, set_gateway, setup_node, Error, GatewayChange, Ipv4Net, NodeConfig,
};

fn cfg() -> NodeConfig {
    NodeConfig {
        bridge: "wtest-br".into(),
        tap: "wtest-tap".into(),
        mtu: 1400,
        bridge_mac: None,
    }
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn setup_node_is_idempotent_and_tap_is_on_the_bridge() {
    require_root!();
    let host = TestNs::new("host");
    assert_eq!(host.sysctl("net/ipv4/ip_forward"), "0");

    let c = cfg();
    let first = host
        .open()
        .run(move |_| async move { setup_node(&c).await })
        .await
        .unwrap();
    assert!(first.created_bridge && first.created_tap && first.enabled_ip_forward);

    let c = cfg();
    let second = host
        .open()
        .run(move |_| async move { setup_node(&c).await })
        .await
        .unwrap();
    assert!(!second.created_bridge && !second.created_tap && !second.enabled_ip_forward);
    assert_eq!(first.bridge_index, second.bridge_index);
    assert_eq!(first.tap_index, second.tap_index);
    assert_eq!(
        first.bridge_mac, second.bridge_mac,
        "bridge MAC must be stable"
    );

    let br = host.ip(&["-d", "link", "show", "wtest-br"]);
    assert!(
        br.contains("mtu 1400") && br.contains("bridge") && br.contains("UP"),
        "{br}"
    );
    let tap = host.ip(&["-d", "link", "show", "wtest-tap"]);
    assert!(
        tap.contains("master wtest-br"),
        "TAP not on the bridge: {tap}"
    );
    assert!(tap.contains("mtu 1400"), "{tap}");
    assert!(
        tap.contains("type tap") && tap.contains("persist on"),
        "{tap}"
    );
    assert!(tap.contains("multi_queue"), "{tap}");
    assert_eq!(host.sysctl("net/ipv4/ip_forward"), "1");
    // proxy_arp deliberately left off (see node.rs).
    assert_eq!(host.sysctl("net/ipv4/conf/wtest-br/proxy_arp"), "0");
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn setup_node_refuses_a_wrong_type_link_and_sets_a_given_mac() {
    require_root!();
    let host = TestNs::new("host");
    host.ip(&[
        "link", "add", "wtest-br", "type", "veth", "peer", "name", "wtest-x",
    ]);
    let c = cfg();
    let err = host
        .open()
        .run(move |_| async move { setup_node(&c).await })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WrongLinkType { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("wtest-br") && msg.contains("veth") && msg.contains("bridge"),
        "{msg}"
    );

    let mac = [0x02, 0x77, 0x65, 0x66, 0x74, 0x01];
    let c = NodeConfig {
        bridge: "wtest-br2".into(),
        bridge_mac: Some(mac),
        ..cfg()
    };
    let st = host
        .open()
        .run(move |_| async move { setup_node(&c).await })
        .await
        .unwrap();
    assert_eq!(st.bridge_mac, mac);
    assert_eq!(common::mac_of(&host, "wtest-br2"), mac);
    // An existing TAP of the wrong kind (layer-3 tun) is refused, not silently reused.
    host.ip(&["tuntap", "add", "dev", "wtest-tun", "mode", "tun"]);
    let c = NodeConfig {
        bridge: "wtest-br2".into(),
        tap: "wtest-tun".into(),
        ..cfg()
    };
    let err = host
        .open()
        .run(move |_| async move { setup_node(&c).await })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TapMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("wtest-tun") && msg.contains(&host.name),
        "{msg}"
    );
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn gateway_is_set_kept_and_replaced() {
    require_root!();
    let host = TestNs::new("host");
    let c = cfg();
    host.open()
        .run(move |_| async move { setup_node(&c).await })
        .await
        .unwrap();
    // An operator's own address outside the range must survive.
    host.ip(&["addr", "add", "192.168.77.1/24", "dev", "wtest-br"]);

    let gw = |s: &str| s.parse::<Ipv4Net>().unwrap();
    let set = |addr: Ipv4Net| {
        host.open()
            .run(move |_| async move { set_gateway("wtest-br", addr).await })
    };
    let ch = set(gw("10.32.0.1/12")).await.unwrap();
    assert_eq!(
        ch,
        GatewayChange {
            added: true,
            removed: vec![]
        }
    );
    let ch = set(gw("10.32.0.1/12")).await.unwrap();
    assert_eq!(
        ch,
        GatewayChange::default(),
        "second call must change nothing"
    );

    let ch = set(gw("10.40.0.1/12")).await.unwrap();
    assert_eq!(
        ch,
        GatewayChange {
            added: true,
            removed: vec![gw("10.32.0.1/12")]
        }
    );
    let addrs = host.ip(&["-4", "-o", "addr", "show", "dev", "wtest-br"]);
    assert!(addrs.contains("10.40.0.1/12"), "{addrs}");
    assert!(!addrs.contains("10.32.0.1/12"), "{addrs}");
    assert!(addrs.contains("192.168.77.1/24"), "{addrs}");

    // Same IP, other prefix (the range was resized): replaced too.
    let ch = set(gw("10.40.0.1/16")).await.unwrap();
    assert_eq!(ch.removed, vec![gw("10.40.0.1/12")]);

    let err = host
        .open()
        .run(move |_| async move { set_gateway("nosuch-br", gw("10.32.0.1/12")).await })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nosuch-br"), "{err}");
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn reset_removes_everything_and_is_idempotent() {
    require_root!();
    let host = TestNs::new("host");
    let c = cfg();
    host.open()
        .run(move |_| async move { setup_node(&c).await })
        .await
        .unwrap();
    // Host-side veths as pods would leave them, plus one that is not ours.
    host.ip(&[
        "link",
        "add",
        "vethwe00000001",
        "type",
        "veth",
        "peer",
        "name",
        "p1",
    ]);
    host.ip(&[
        "link",
        "add",
        "vethwe00000002",
        "type",
        "veth",
        "peer",
        "name",
        "p2",
    ]);
    host.ip(&[
        "link", "add", "other0", "type", "veth", "peer", "name", "other1",
    ]);

    let c = cfg();
    let mut removed = host
        .open()
        .run(move |_| async move { reset(&c).await })
        .await
        .unwrap();
    removed.sort();
    assert_eq!(
        removed,
        ["vethwe00000001", "vethwe00000002", "wtest-br", "wtest-tap"]
    );
    let mut left = host.link_names();
    left.sort();
    assert_eq!(left, ["lo", "other0", "other1"]);

    let c = cfg();
    let again = host
        .open()
        .run(move |_| async move { reset(&c).await })
        .await
        .unwrap();
    assert!(again.is_empty());
}

#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn capabilities_of_this_kernel() {
    require_root!();
    let caps = detect_capabilities();
    eprintln!("{caps:#?}");
    // The machines weft is developed and tested on have these.
    assert!(caps.bridge.is_available(), "{:?}", caps.bridge);
    assert!(caps.veth.is_available(), "{:?}", caps.veth);
    assert!(caps.vxlan.is_available(), "{:?}", caps.vxlan);
    assert!(caps.tuntap.is_available(), "{:?}", caps.tuntap);
    // The probes left nothing behind where we can see.
    let links = common::run("ip", &["-o", "link", "show"]);
    assert!(!links.contains("wprobe"), "{links}");
}
