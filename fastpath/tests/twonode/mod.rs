//! Two "nodes" for fastpath tests: each a namespace with the bridge `weft`, the TAP, the VXLAN
//! device and one pod, joined by a veth "underlay" (198.18.0.1/24 ↔ 198.18.0.2/24).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::common::{mac_of, TestNs};
pub use weft_fastpath::fdb::Mac;
use weft_fastpath::fdb::{plan, reconcile, FdbPorts, PeerInput, PlanInput};
use weft_fastpath::{
    add_pod_interface, host_ifname_for, set_gateway, setup_node, setup_vxlan, NodeConfig,
    PodIfaceRequest, ReconcileReport, VxlanConfig, VxlanState,
};

pub const PORT: u16 = 6785;

pub struct Node {
    pub ns: TestNs,
    pub pod: TestNs,
    pub name: u64,
    pub bridge_mac: Mac,
    pub underlay: Ipv4Addr,
    pub pod_ip: Ipv4Addr,
    pub pod_mac: Mac,
    pub vxlan: VxlanState,
    pub mtu: u32,
}

/// The MAC a peer name is written as (as the router does).
pub fn name_mac(name: u64) -> Mac {
    let v = name.to_be_bytes();
    [v[2], v[3], v[4], v[5], v[6], v[7]]
}

async fn node(idx: u8, ns: TestNs, pod: TestNs, mtu: u32, sleeve_port: Option<&str>) -> Node {
    let name = 0x0000_0200_0000_0000 | u64::from(idx);
    let bridge_mac = name_mac(name);
    let underlay = Ipv4Addr::new(198, 18, 0, idx);
    let gw: weft_fastpath::Ipv4Net = format!("10.32.{idx}.1/12").parse().unwrap();
    let pod_ip = Ipv4Addr::new(10, 32, idx, 2);
    let cfg = NodeConfig {
        bridge: "weft".into(),
        tap: "weft-tap".into(),
        mtu,
        bridge_mac: Some(bridge_mac),
    };
    let vx = VxlanConfig {
        local: Some(underlay),
        mtu,
        ..VxlanConfig::default()
    };
    let vxlan = ns
        .open()
        .run(move |_| async move {
            setup_node(&cfg).await?;
            set_gateway("weft", gw).await?;
            setup_vxlan(&vx).await
        })
        .await
        .expect("node setup");
    if let Some(p) = sleeve_port {
        ns.ip(&[
            "link",
            "set",
            p,
            "master",
            "weft",
            "mtu",
            &mtu.to_string(),
            "up",
        ]);
    }
    let req = PodIfaceRequest {
        netns: pod.path(),
        ifname: "eth0".into(),
        host_ifname: host_ifname_for(&format!("pod{idx}"), "eth0"),
        bridge: "weft".into(),
        addr: format!("{pod_ip}/12").parse().unwrap(),
        gateway: gw.addr(),
        mtu,
    };
    let iface = ns
        .open()
        .run(move |_| async move { add_pod_interface(&req).await })
        .await
        .expect("pod interface");
    Node {
        ns,
        pod,
        name,
        bridge_mac,
        underlay,
        pod_ip,
        pod_mac: iface.mac,
        vxlan,
        mtu,
    }
}

/// Two nodes with pods. `sleeve_veth`: also join the two bridges with a veth pair `wsl0`
/// (a stand-in for the sleeve's path, used as the "TAP" port in [`Node::ports_with_sleeve`]).
pub async fn two_nodes(mtu: u32, sleeve_veth: bool) -> (Node, Node) {
    let (a, b) = (TestNs::new("nodea"), TestNs::new("nodeb"));
    let (pa, pb) = (TestNs::new("poda"), TestNs::new("podb"));
    a.ip(&[
        "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", &b.name,
    ]);
    a.ip(&["addr", "add", "198.18.0.1/24", "dev", "ul0"]);
    b.ip(&["addr", "add", "198.18.0.2/24", "dev", "ul0"]);
    a.ip(&["link", "set", "ul0", "up"]);
    b.ip(&["link", "set", "ul0", "up"]);
    if sleeve_veth {
        a.ip(&[
            "link", "add", "wsl0", "type", "veth", "peer", "name", "wsl0", "netns", &b.name,
        ]);
    }
    let sl = sleeve_veth.then_some("wsl0");
    let na = node(1, a, pa, mtu, sl).await;
    let nb = node(2, b, pb, mtu, sl).await;
    // ARP does not cross a fastpath-only overlay (the sleeve carries broadcasts): pin it.
    for (from, to) in [(&na, &nb), (&nb, &na)] {
        from.pod.ip(&[
            "neigh",
            "replace",
            &to.pod_ip.to_string(),
            "lladdr",
            &fmt_mac(&to.pod_mac),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
    }
    (na, nb)
}

pub fn fmt_mac(m: &Mac) -> String {
    weft_types::Mac(*m).to_string()
}

impl Node {
    /// Desired FDB of this node for `peer`, healthy or not, and reconcile it. `sleeve`: the
    /// port used as the sleeve ("weft-tap" or "wsl0").
    pub async fn program(&self, peer: &Node, healthy: bool, sleeve: &str) -> ReconcileReport {
        let mut peers = BTreeMap::new();
        peers.insert(
            peer.name,
            PeerInput {
                bridge_mac: peer.bridge_mac,
                vxlan_addr: Some(peer.underlay),
                healthy,
            },
        );
        let claims = [
            (peer.pod_mac, peer.name),
            (peer.bridge_mac, peer.name),
            (self.pod_mac, self.name),
            (self.bridge_mac, self.name),
        ];
        let p = plan(&PlanInput {
            me: self.name,
            local_addrs: &[self.underlay],
            peers: &peers,
            claims: &claims,
        });
        assert!(p.findings.is_empty(), "{:?}", p.findings);
        let desired = p.desired;
        let sleeve = sleeve.to_string();
        self.ns
            .open()
            .run(move |nl| async move {
                let ports = FdbPorts::lookup(&nl, "weft", "weft-vxlan", &sleeve).await?;
                reconcile(&nl, &ports, &desired).await
            })
            .await
            .expect("reconcile")
    }

    /// `ip -s link show DEV` TX bytes.
    pub fn tx_bytes(&self, dev: &str) -> u64 {
        let out = self.ns.ip(&["-s", "-o", "link", "show", dev]);
        // "... TX: bytes packets errors ... \    <bytes> <packets> ..."
        let after = out.split("TX:").nth(1).expect("TX stats");
        let nums: Vec<u64> = after
            .split(|c: char| c.is_whitespace() || c == '\\')
            .filter_map(|w| w.parse().ok())
            .collect();
        nums[0]
    }
}

pub fn mac_of_dev(ns: &TestNs, dev: &str) -> Mac {
    mac_of(ns, dev)
}
