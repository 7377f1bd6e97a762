//! The pod guard: what a pod may send from its bridge port, whatever NetworkPolicy says (the
//! policy table trusts source addresses, so this is what makes them trustworthy).
//!
//! Two nftables tables, written here as nft text and replaced whole in one transaction:
//!
//! - `bridge weft-pods`, hook `prerouting` (before the bridge learns, forwards or hands a
//!   frame to the node): a verdict map from the pod's host-side port (`vethwe…`) to that pod's
//!   chain; a frame from a `vethwe…` port that has no entry is dropped. A pod's chain admits
//!   only its own MAC as the Ethernet source; only IPv4, ARP and IPv6; IPv4 only from its own
//!   addresses; ARP only with its own MAC and address as sender (or 0.0.0.0, an address probe);
//!   IPv6 only from its own addresses (its EUI-64 link-local address included, and `::` for
//!   duplicate address detection); neighbour solicitations and advertisements only about its
//!   own addresses and with its own MAC in their link-layer option; never router
//!   advertisements, redirects or router renumbering, nor IPv6 fragments other than TCP and
//!   UDP (a fragmented ICMPv6 header hides its type).
//! - `inet weft-node`, hook `input`: nothing that arrives through the node bridge (pods, local
//!   or remote) reaches the router's own ports (control, sleeve, VXLAN, status, metrics), and
//!   the node takes no router advertisement or redirect from the bridge.
//!
//! Per frame the cost is one map lookup and a handful of comparisons in the pod's own chain,
//! whatever the number of pods. Drops are counted in named counters ([`COUNTERS`]).
//!
//! Interface names go into the nft text quoted; [`Guard::validate`] admits only the names the
//! CNI plugin makes (`vethwe` and a few letters or digits), so no input can break out of the
//! quotes.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The bridge-family table (pod ports).
pub const BRIDGE_TABLE: &str = "weft-pods";
/// The inet-family table (the node's own ports).
pub const NODE_TABLE: &str = "weft-node";
/// Host-side pod ports all start with this (`weft_fastpath::node::HOST_VETH_PREFIX`).
pub const POD_PORT_PREFIX: &str = "vethwe";

/// The named counters of [`BRIDGE_TABLE`] and [`NODE_TABLE`]: (table, counter, what it counts).
pub const COUNTERS: &[(&str, &str, &str)] = &[
    (
        BRIDGE_TABLE,
        "spoofed-mac",
        "a source MAC that is not the pod's",
    ),
    (
        BRIDGE_TABLE,
        "spoofed-ip",
        "an IPv4 or IPv6 source address that is not the pod's",
    ),
    (
        BRIDGE_TABLE,
        "spoofed-arp",
        "ARP that is malformed or not about the pod's own MAC and address",
    ),
    (
        BRIDGE_TABLE,
        "spoofed-nd",
        "IPv6 neighbour discovery not about the pod's own addresses and MAC",
    ),
    (
        BRIDGE_TABLE,
        "router-messages",
        "router advertisements, redirects, router renumbering",
    ),
    (
        BRIDGE_TABLE,
        "ethertype",
        "frames neither IPv4, ARP nor IPv6 (VLAN tags included), and hidden ICMPv6 fragments",
    ),
    (
        BRIDGE_TABLE,
        "unknown-port",
        "frames from a pod port the router has not attached (yet)",
    ),
    (
        NODE_TABLE,
        "node-ports",
        "packets from the bridge to the router's own ports",
    ),
    (
        NODE_TABLE,
        "node-router-messages",
        "router advertisements and redirects to the node from the bridge",
    ),
];

/// One pod port: the host end of a pod's veth and what the pod owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPort {
    /// `vethweXXXXXXXX`.
    pub host_ifname: String,
    /// The pod interface's MAC.
    pub mac: [u8; 6],
    pub ipv4: Vec<Ipv4Addr>,
    /// Global (or unique local) IPv6 addresses; the EUI-64 link-local address of `mac` is
    /// always admitted too.
    pub ipv6: Vec<Ipv6Addr>,
}

/// The node side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePorts {
    /// The node bridge (`weft`).
    pub bridge: String,
    /// UDP ports of the router (control, sleeve, VXLAN).
    pub udp: Vec<u16>,
    /// TCP ports of the router (status, metrics).
    pub tcp: Vec<u16>,
}

/// Everything the two tables are made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guard {
    pub node: NodePorts,
    pub ports: Vec<PodPort>,
}

/// A name that cannot be written into the tables.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("interface name {name:?} cannot be guarded: {why}")]
pub struct BadName {
    pub name: String,
    pub why: &'static str,
}

fn check_ifname(name: &str, pod_port: bool) -> Result<(), BadName> {
    let bad = |why| {
        Err(BadName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() || name.len() > 15 {
        return bad("not 1 to 15 bytes long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return bad("only letters, digits, '-', '_' and '.' are allowed");
    }
    if pod_port && (!name.starts_with(POD_PORT_PREFIX) || name.len() == POD_PORT_PREFIX.len()) {
        return bad("pod ports are named vethwe…");
    }
    if !pod_port && name.starts_with(POD_PORT_PREFIX) {
        return bad("the bridge cannot carry the pod port prefix");
    }
    Ok(())
}

/// The EUI-64 link-local address the kernel gives an interface with `mac` (the default
/// `addr_gen_mode`).
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([mac[0] ^ 0x02, mac[1]]),
        u16::from_be_bytes([mac[2], 0xff]),
        u16::from_be_bytes([0xfe, mac[3]]),
        u16::from_be_bytes([mac[4], mac[5]]),
    )
}

fn mac_text(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// A MAC as the 48-bit integer a raw payload match compares with.
fn mac_int(m: [u8; 6]) -> String {
    let v = m.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    format!("0x{v:012x}")
}

fn v6_int(a: Ipv6Addr) -> String {
    format!("0x{:032x}", u128::from(a))
}

/// `{ a, b }` of the items, written by `f`.
fn set<T>(items: impl IntoIterator<Item = T>, f: impl Fn(T) -> String) -> String {
    let v: Vec<String> = items.into_iter().map(f).collect();
    format!("{{ {} }}", v.join(", "))
}

impl PodPort {
    /// Every IPv6 source the pod may use, link-local first.
    fn ipv6_owned(&self) -> Vec<Ipv6Addr> {
        let ll = link_local(self.mac);
        std::iter::once(ll)
            .chain(self.ipv6.iter().copied().filter(|a| *a != ll))
            .collect()
    }

    fn write_chains(&self, s: &mut String) {
        let n = &self.host_ifname;
        let mac = mac_text(self.mac);
        let _ = writeln!(s, "  chain port-{n} {{");
        let _ = writeln!(
            s,
            "    ether saddr != {mac} counter name \"spoofed-mac\" drop"
        );
        let _ = writeln!(
            s,
            "    ether type vmap {{ ip : goto ip4-{n}, arp : goto arp-{n}, ip6 : goto ip6-{n} }}"
        );
        let _ = writeln!(s, "    counter name \"ethertype\" drop");
        let _ = writeln!(s, "  }}");

        let _ = writeln!(s, "  chain ip4-{n} {{");
        if self.ipv4.is_empty() {
            let _ = writeln!(s, "    counter name \"spoofed-ip\" drop");
        } else {
            let _ = writeln!(
                s,
                "    ip saddr != {} counter name \"spoofed-ip\" drop",
                set(self.ipv4.iter(), |a| a.to_string())
            );
            let _ = writeln!(
                s,
                "    icmp type {{ redirect, router-advertisement }} counter name \"router-messages\" drop"
            );
        }
        let _ = writeln!(s, "  }}");

        let _ = writeln!(s, "  chain arp-{n} {{");
        let _ = writeln!(
            s,
            "    arp htype . arp ptype . arp hlen . arp plen != {{ 1 . ip . 6 . 4 }} counter name \"spoofed-arp\" drop"
        );
        let _ = writeln!(
            s,
            "    arp saddr ether != {mac} counter name \"spoofed-arp\" drop"
        );
        let senders = std::iter::once(Ipv4Addr::UNSPECIFIED).chain(self.ipv4.iter().copied());
        let _ = writeln!(
            s,
            "    arp saddr ip != {} counter name \"spoofed-arp\" drop",
            set(senders, |a| a.to_string())
        );
        let _ = writeln!(s, "  }}");

        let owned = self.ipv6_owned();
        let _ = writeln!(s, "  chain ip6-{n} {{");
        let sources = std::iter::once(Ipv6Addr::UNSPECIFIED).chain(owned.iter().copied());
        let _ = writeln!(
            s,
            "    ip6 saddr != {} counter name \"spoofed-ip\" drop",
            set(sources, |a| a.to_string())
        );
        let _ = writeln!(
            s,
            "    icmpv6 type {{ nd-router-advert, nd-redirect, router-renumbering }} counter name \"router-messages\" drop"
        );
        let _ = writeln!(
            s,
            "    exthdr frag exists meta l4proto != {{ tcp, udp }} counter name \"ethertype\" drop"
        );
        let _ = writeln!(
            s,
            "    icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} goto nd-{n}"
        );
        let _ = writeln!(s, "  }}");

        // Neighbour solicitation and advertisement: 24 bytes, plus at most one 8-byte option.
        // Duplicate address detection (source ::) asks only about our own addresses (its
        // option is a nonce, RFC 7527); anything else carries our MAC in its link-layer
        // address option (type 1 source / 2 target, length 1), and an advertisement's target
        // (bytes 8..24) is one of our addresses.
        let targets = set(owned.iter().copied(), v6_int);
        let _ = writeln!(s, "  chain nd-{n} {{");
        let _ = writeln!(
            s,
            "    ip6 length != {{ 24, 32 }} counter name \"spoofed-nd\" drop"
        );
        let _ = writeln!(
            s,
            "    ip6 saddr :: @th,64,128 != {targets} counter name \"spoofed-nd\" drop"
        );
        let _ = writeln!(s, "    ip6 saddr :: icmpv6 type nd-neighbor-solicit accept");
        let _ = writeln!(s, "    ip6 saddr :: counter name \"spoofed-nd\" drop");
        let _ = writeln!(
            s,
            "    ip6 length 32 @th,192,16 != {{ 0x0101, 0x0201 }} counter name \"spoofed-nd\" drop"
        );
        let _ = writeln!(
            s,
            "    ip6 length 32 @th,208,48 != {} counter name \"spoofed-nd\" drop",
            mac_int(self.mac)
        );
        let _ = writeln!(
            s,
            "    icmpv6 type nd-neighbor-advert @th,64,128 != {targets} counter name \"spoofed-nd\" drop"
        );
        let _ = writeln!(s, "  }}");
    }
}

impl Guard {
    /// Refuses names that are not safe to write into the tables, and a port listed twice.
    pub fn validate(&self) -> Result<(), BadName> {
        check_ifname(&self.node.bridge, false)?;
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.ports {
            check_ifname(&p.host_ifname, true)?;
            if !seen.insert(p.host_ifname.as_str()) {
                return Err(BadName {
                    name: p.host_ifname.clone(),
                    why: "listed twice",
                });
            }
        }
        Ok(())
    }

    /// Both tables as one nft script: each table created if missing, deleted and written
    /// again, all in one transaction.
    pub fn to_nft(&self) -> Result<String, BadName> {
        self.validate()?;
        let mut s = String::new();
        for (family, table) in [("bridge", BRIDGE_TABLE), ("inet", NODE_TABLE)] {
            let _ = writeln!(s, "table {family} {table}\ndelete table {family} {table}");
        }
        let _ = writeln!(s, "table bridge {BRIDGE_TABLE} {{");
        for (t, c, _) in COUNTERS.iter().filter(|(t, _, _)| *t == BRIDGE_TABLE) {
            let _ = t;
            let _ = writeln!(s, "  counter {c} {{ }}");
        }
        let _ = writeln!(s, "  map ports {{\n    type ifname : verdict");
        if !self.ports.is_empty() {
            let elems = set(self.ports.iter(), |p| {
                format!("\"{0}\" : goto port-{0}", p.host_ifname)
            });
            let _ = writeln!(s, "    elements = {elems}");
        }
        let _ = writeln!(s, "  }}");
        let _ = writeln!(
            s,
            "  chain prerouting {{\n    type filter hook prerouting priority -300; policy accept;"
        );
        let _ = writeln!(s, "    iifname vmap @ports");
        let _ = writeln!(
            s,
            "    iifname \"{POD_PORT_PREFIX}*\" counter name \"unknown-port\" drop\n  }}"
        );
        for p in &self.ports {
            p.write_chains(&mut s);
        }
        let _ = writeln!(s, "}}");

        let br = &self.node.bridge;
        let _ = writeln!(s, "table inet {NODE_TABLE} {{");
        for (_, c, _) in COUNTERS.iter().filter(|(t, _, _)| *t == NODE_TABLE) {
            let _ = writeln!(s, "  counter {c} {{ }}");
        }
        let _ = writeln!(
            s,
            "  chain input {{\n    type filter hook input priority -10; policy accept;"
        );
        let mut udp = self.node.udp.clone();
        udp.sort_unstable();
        udp.dedup();
        let mut tcp = self.node.tcp.clone();
        tcp.sort_unstable();
        tcp.dedup();
        if !udp.is_empty() {
            let _ = writeln!(
                s,
                "    iifname \"{br}\" udp dport {} counter name \"node-ports\" drop",
                set(udp, |p| p.to_string())
            );
        }
        if !tcp.is_empty() {
            let _ = writeln!(
                s,
                "    iifname \"{br}\" tcp dport {} counter name \"node-ports\" drop",
                set(tcp, |p| p.to_string())
            );
        }
        let _ = writeln!(
            s,
            "    iifname \"{br}\" icmpv6 type {{ nd-router-advert, nd-redirect, router-renumbering }} counter name \"node-router-messages\" drop"
        );
        let _ = writeln!(
            s,
            "    iifname \"{br}\" icmp type redirect counter name \"node-router-messages\" drop\n  }}\n}}"
        );
        Ok(s)
    }

    /// A script that removes both tables (nothing to remove is fine).
    pub fn removal() -> String {
        let mut s = String::new();
        for (family, table) in [("bridge", BRIDGE_TABLE), ("inet", NODE_TABLE)] {
            let _ = writeln!(s, "table {family} {table}\ndelete table {family} {table}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(ports: Vec<PodPort>) -> Guard {
        Guard {
            node: NodePorts {
                bridge: "weft".into(),
                udp: vec![6785, 6783, 6784, 6783],
                tcp: vec![6784, 6782],
            },
            ports,
        }
    }

    fn port(name: &str, last: u8) -> PodPort {
        PodPort {
            host_ifname: name.into(),
            mac: [0x02, 0, 0, 0, 0, last],
            ipv4: vec![Ipv4Addr::new(10, 32, 0, last)],
            ipv6: vec![],
        }
    }

    #[test]
    fn eui64_link_local() {
        // The kernel's address for 02:00:00:00:00:07 (and a published example).
        assert_eq!(
            link_local([0x02, 0, 0, 0, 0, 7]),
            "fe80::ff:fe00:7".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            link_local([0x00, 0x1b, 0x63, 0x84, 0x45, 0xe6]),
            "fe80::21b:63ff:fe84:45e6".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn names_that_could_escape_quotes_are_refused() {
        for bad in [
            "vethwe\"; flush",
            "vethwe 1",
            "vethwe",
            "eth0",
            "vethwe0123456789",
            "",
        ] {
            let g = guard(vec![port(bad, 7)]);
            assert!(g.to_nft().is_err(), "{bad:?} accepted");
        }
        let mut g = guard(vec![port("vethwe00000001", 1)]);
        g.node.bridge = "we\"ft".into();
        assert!(g.to_nft().is_err());
        let g = guard(vec![port("vethwe00000001", 1), port("vethwe00000001", 2)]);
        assert!(g.to_nft().is_err(), "a port twice");
    }

    #[test]
    fn a_pod_chain_names_its_mac_and_addresses() {
        let mut p = port("vethwe0000000a", 10);
        p.ipv6 = vec!["fd10::a".parse().unwrap()];
        let s = guard(vec![p, port("vethwe0000000b", 11)]).to_nft().unwrap();
        eprintln!("{s}");
        assert!(
            s.contains("\"vethwe0000000a\" : goto port-vethwe0000000a"),
            "{s}"
        );
        assert!(s.contains("ether saddr != 02:00:00:00:00:0a"), "{s}");
        assert!(s.contains("ip saddr != { 10.32.0.10 }"), "{s}");
        assert!(s.contains("arp saddr ip != { 0.0.0.0, 10.32.0.10 }"), "{s}");
        assert!(
            s.contains("ip6 saddr != { ::, fe80::ff:fe00:a, fd10::a }"),
            "{s}"
        );
        assert!(s.contains("@th,208,48 != 0x02000000000a"), "{s}");
        assert!(s.contains("0xfd10000000000000000000000000000a"), "{s}");
        assert!(s.contains("udp dport { 6783, 6784, 6785 }"), "{s}");
        assert!(s.contains("tcp dport { 6782, 6784 }"), "{s}");
        // Unknown pod ports are dropped after the map.
        let map = s.find("iifname vmap @ports").unwrap();
        let unknown = s
            .find("iifname \"vethwe*\" counter name \"unknown-port\" drop")
            .unwrap();
        assert!(map < unknown);
    }

    #[test]
    fn no_pods_still_drops_unknown_ports() {
        let s = guard(vec![]).to_nft().unwrap();
        assert!(!s.contains("elements"), "{s}");
        assert!(s.contains("unknown-port\" drop"), "{s}");
    }
}
