//! Forwarding for remote MACs: which bridge port (VXLAN or the sleeve's TAP) and which
//! underlay address (VXLAN FDB) each MAC gets.
//!
//! Two kinds of kernel entries, both `AF_BRIDGE` neighbours:
//!
//! - **VXLAN entries** (`NTF_SELF` on the VXLAN device, `NDA_DST` = the owner's underlay
//!   address, `NUD_PERMANENT`): where the VXLAN device sends a frame for that MAC. The device is
//!   `nolearning` and has no default (all-zeros) entry, so it sends nothing else anywhere.
//! - **Bridge entries** (`NTF_MASTER` on a bridge port, `NUD_NOARP` = "static", plus
//!   `NTF_STICKY`): which port the bridge sends the MAC to. `NUD_PERMANENT` would make it a
//!   *local* entry (frames for the MAC go to the bridge's own stack), so it is not used here.
//!   Sticky matters: the bridge moves even a static entry to whatever port it last saw the MAC
//!   arrive on (verified on this kernel), and broadcasts of remote pods (ARP) keep arriving
//!   through the sleeve; a sticky entry never moves.
//!
//! A MAC on the **fastpath** has both: VXLAN entry → owner's address, bridge entry → the VXLAN
//! port. A MAC on the **sleeve** has a bridge entry → the TAP port and no VXLAN entry. Every
//! fastpath *candidate* peer also has a VXLAN entry for its bridge MAC (a "probe" entry), so
//! heartbeats reach it while its MACs are on the sleeve. Moving a peer between paths is moving
//! bridge entries and adding/removing VXLAN entries, done in an order that never points the
//! bridge at the VXLAN port for a MAC the VXLAN device cannot send (see
//! [`reconcile::apply`]).
//!
//! [`plan`] (pure) turns the gossiped MAC table, the peers' addresses and their health into a
//! [`DesiredFdb`], resolving bad input deterministically; [`reconcile::reconcile`] makes the
//! kernel match it and reports what it changed.

pub mod reconcile;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

pub use crate::heartbeat::Mac;
pub use reconcile::{reconcile, FdbPorts, ReconcileReport};

/// Which bridge port a MAC goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Port {
    Vxlan,
    Tap,
}

/// The FDB weft wants. Construct with [`DesiredFdb::fastpath`], [`DesiredFdb::sleeve`] and
/// [`DesiredFdb::probe`] (or [`plan`]): they keep the invariant that a MAC whose bridge entry
/// points at the VXLAN port has a VXLAN entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredFdb {
    bridge: BTreeMap<Mac, Port>,
    vxlan: BTreeMap<Mac, Ipv4Addr>,
}

impl DesiredFdb {
    pub fn new() -> Self {
        Self::default()
    }

    /// `mac` on the fastpath: bridge → VXLAN port, VXLAN → `dst`.
    pub fn fastpath(&mut self, mac: Mac, dst: Ipv4Addr) {
        self.bridge.insert(mac, Port::Vxlan);
        self.vxlan.insert(mac, dst);
    }

    /// `mac` on the sleeve: bridge → TAP port. A VXLAN entry set by [`DesiredFdb::probe`]
    /// stays (heartbeats use it); one set by [`DesiredFdb::fastpath`] goes.
    pub fn sleeve(&mut self, mac: Mac) {
        if self.bridge.insert(mac, Port::Tap) == Some(Port::Vxlan) {
            self.vxlan.remove(&mac);
        }
    }

    /// A VXLAN entry only (no bridge entry change): `mac` is reachable by heartbeats sent
    /// straight into the VXLAN device. Used for each candidate peer's bridge MAC.
    pub fn probe(&mut self, mac: Mac, dst: Ipv4Addr) {
        self.vxlan.insert(mac, dst);
    }

    /// Bridge entries: MAC → port.
    pub fn bridge(&self) -> &BTreeMap<Mac, Port> {
        &self.bridge
    }

    /// VXLAN entries: MAC → underlay address.
    pub fn vxlan(&self) -> &BTreeMap<Mac, Ipv4Addr> {
        &self.vxlan
    }
}

/// What the router knows about one remote peer, for [`plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInput {
    /// The peer's bridge MAC (`mac_of(name)`).
    pub bridge_mac: Mac,
    /// Its underlay address for VXLAN, when it is a direct peer and a fastpath candidate
    /// (`None`: its MACs go to the sleeve, nothing is probed).
    pub vxlan_addr: Option<Ipv4Addr>,
    /// Its fastpath is healthy ([`crate::health::Health::use_fastpath`]).
    pub healthy: bool,
}

/// Input of [`plan`].
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// Our peer name: MACs we claim ourselves get no entry (the bridge learns them locally).
    pub me: u64,
    /// Our own underlay addresses: a peer claiming one of them is refused.
    pub local_addrs: &'a [Ipv4Addr],
    /// Remote peers by name.
    pub peers: &'a BTreeMap<u64, PeerInput>,
    /// MAC claims: (MAC, owner). May contain a MAC more than once (conflicting claims).
    pub claims: &'a [(Mac, u64)],
}

/// A problem [`plan`] resolved; each is worth a log line (they repeat on every plan, so log
/// them when they change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A peer's VXLAN address cannot be used: its MACs go to the sleeve.
    BogusAddress {
        peer: u64,
        addr: Ipv4Addr,
        why: &'static str,
    },
    /// Several peers claim one MAC: `winner` keeps it (we do when we are a claimant; else
    /// the lowest peer name).
    MacConflict {
        mac: Mac,
        winner: u64,
        losers: Vec<u64>,
    },
    /// Not a unicast MAC (group bit set, or all zeros): ignored. An all-zeros VXLAN entry
    /// would be the device's default destination for every unknown frame.
    BadMac { mac: Mac, owner: u64 },
}

/// The result of [`plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub desired: DesiredFdb,
    pub findings: Vec<Finding>,
    /// Peers whose VXLAN address was refused, with the reason (for status; also tell
    /// [`crate::health::Health::set_unavailable`]).
    pub refused: BTreeMap<u64, String>,
}

/// Why `addr` cannot be a peer's VXLAN address, if it cannot.
pub fn bogus_address(addr: Ipv4Addr, local: &[Ipv4Addr]) -> Option<&'static str> {
    if addr.is_unspecified() || addr.octets()[0] == 0 {
        Some("unspecified (0.0.0.0/8)")
    } else if addr.is_loopback() {
        Some("loopback")
    } else if addr.is_multicast() {
        Some("multicast")
    } else if addr.is_broadcast() {
        Some("broadcast")
    } else if addr.octets()[0] >= 240 {
        Some("reserved (240.0.0.0/4)")
    } else if local.contains(&addr) {
        Some("one of this node's own addresses")
    } else {
        None
    }
}

/// Whether `mac` is a unicast address that can own an FDB entry.
pub fn is_unicast_mac(mac: &Mac) -> bool {
    mac[0] & 1 == 0 && *mac != [0; 6]
}

/// Build the desired FDB. Rules, applied in this order, all deterministic:
///
/// 1. Peers whose VXLAN address is bogus ([`bogus_address`]) are treated as having none and
///    listed in `refused`.
/// 2. Claims of non-unicast MACs are ignored ([`Finding::BadMac`]).
/// 3. A MAC claimed by us gets no entry at all (local; the bridge learns it). A MAC claimed
///    by several remote peers goes to the lowest peer name. Both are reported as
///    [`Finding::MacConflict`]. (The gossip layer already settles conflicting endpoint claims
///    the same way on every node; this guards the kernel against whatever input arrives.)
/// 4. A remote MAC goes to the fastpath when its owner has a usable address and is healthy;
///    otherwise to the sleeve (unknown owners too: the sleeve can relay).
/// 5. Every peer with a usable address gets a probe entry for its bridge MAC.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut out = Plan::default();
    let mut usable: BTreeMap<u64, (Ipv4Addr, bool)> = BTreeMap::new();
    for (&name, p) in input.peers {
        let Some(addr) = p.vxlan_addr else { continue };
        if name == input.me {
            continue;
        }
        match bogus_address(addr, input.local_addrs) {
            Some(why) => {
                out.findings.push(Finding::BogusAddress {
                    peer: name,
                    addr,
                    why,
                });
                out.refused
                    .insert(name, format!("bogus fastpath address {addr}: {why}"));
            }
            None => {
                usable.insert(name, (addr, p.healthy));
            }
        }
    }
    let mut owners: BTreeMap<Mac, Vec<u64>> = BTreeMap::new();
    for &(mac, owner) in input.claims {
        if !is_unicast_mac(&mac) {
            out.findings.push(Finding::BadMac { mac, owner });
            continue;
        }
        let v = owners.entry(mac).or_default();
        if !v.contains(&owner) {
            v.push(owner);
        }
    }
    for (mac, mut claimants) in owners {
        claimants.sort_unstable();
        let winner = if claimants.contains(&input.me) {
            input.me
        } else {
            claimants[0]
        };
        if claimants.len() > 1 {
            out.findings.push(Finding::MacConflict {
                mac,
                winner,
                losers: claimants.into_iter().filter(|&c| c != winner).collect(),
            });
        }
        if winner == input.me {
            continue;
        }
        match usable.get(&winner) {
            Some(&(addr, true)) => out.desired.fastpath(mac, addr),
            _ => out.desired.sleeve(mac),
        }
    }
    for (name, (addr, _)) in &usable {
        let mac = input.peers[name].bridge_mac;
        if is_unicast_mac(&mac) {
            out.desired.probe(mac, *addr);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> Mac {
        [2, 0, 0, 0, 0, n]
    }
    const ME: u64 = 1;

    fn peers() -> BTreeMap<u64, PeerInput> {
        let mut p = BTreeMap::new();
        p.insert(
            2,
            PeerInput {
                bridge_mac: mac(0x12),
                vxlan_addr: Some(Ipv4Addr::new(192, 0, 2, 2)),
                healthy: true,
            },
        );
        p.insert(
            3,
            PeerInput {
                bridge_mac: mac(0x13),
                vxlan_addr: Some(Ipv4Addr::new(192, 0, 2, 3)),
                healthy: false,
            },
        );
        p.insert(
            4,
            PeerInput {
                bridge_mac: mac(0x14),
                vxlan_addr: None,
                healthy: false,
            },
        );
        p
    }

    #[test]
    fn healthy_to_fastpath_others_to_sleeve_candidates_probed() {
        let peers = peers();
        let claims = [
            (mac(0x12), 2),
            (mac(0x13), 3),
            (mac(0x14), 4),
            (mac(0x21), 2),
            (mac(0x31), 3),
            (mac(0x41), 4),
            (mac(0x51), 5), // unknown owner
            (mac(0x01), ME),
        ];
        let p = plan(&PlanInput {
            me: ME,
            local_addrs: &[Ipv4Addr::new(192, 0, 2, 1)],
            peers: &peers,
            claims: &claims,
        });
        assert!(p.findings.is_empty(), "{:?}", p.findings);
        let b = p.desired.bridge();
        assert_eq!(b[&mac(0x12)], Port::Vxlan);
        assert_eq!(b[&mac(0x21)], Port::Vxlan);
        for m in [0x13, 0x14, 0x31, 0x41, 0x51] {
            assert_eq!(b[&mac(m)], Port::Tap, "{m:#x}");
        }
        assert!(!b.contains_key(&mac(0x01)), "our own MAC gets no entry");
        let v = p.desired.vxlan();
        assert_eq!(v[&mac(0x12)], Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(v[&mac(0x21)], Ipv4Addr::new(192, 0, 2, 2));
        // Peer 3 is unhealthy: only its bridge MAC is probed.
        assert_eq!(v[&mac(0x13)], Ipv4Addr::new(192, 0, 2, 3));
        assert!(!v.contains_key(&mac(0x31)));
        assert_eq!(v.len(), 3);
    }

    #[test]
    fn conflicts_resolve_to_us_or_lowest_name_in_any_order() {
        let peers = peers();
        let mut claims = vec![
            (mac(0x77), 3),
            (mac(0x77), 2),
            (mac(0x88), ME),
            (mac(0x88), 2),
        ];
        let a = plan(&PlanInput {
            me: ME,
            local_addrs: &[],
            peers: &peers,
            claims: &claims,
        });
        claims.reverse();
        let b = plan(&PlanInput {
            me: ME,
            local_addrs: &[],
            peers: &peers,
            claims: &claims,
        });
        assert_eq!(a.desired, b.desired);
        assert_eq!(a.desired.bridge()[&mac(0x77)], Port::Vxlan, "peer 2 wins");
        assert!(!a.desired.bridge().contains_key(&mac(0x88)), "we win");
        assert!(a.findings.contains(&Finding::MacConflict {
            mac: mac(0x77),
            winner: 2,
            losers: vec![3]
        }));
        assert!(a.findings.contains(&Finding::MacConflict {
            mac: mac(0x88),
            winner: ME,
            losers: vec![2]
        }));
    }

    #[test]
    fn bogus_addresses_and_macs_are_refused() {
        let local = Ipv4Addr::new(192, 0, 2, 1);
        for (addr, why) in [
            (Ipv4Addr::UNSPECIFIED, "unspecified (0.0.0.0/8)"),
            (Ipv4Addr::new(224, 0, 0, 5), "multicast"),
            (Ipv4Addr::BROADCAST, "broadcast"),
            (Ipv4Addr::LOCALHOST, "loopback"),
            (Ipv4Addr::new(250, 1, 1, 1), "reserved (240.0.0.0/4)"),
            (local, "one of this node's own addresses"),
        ] {
            let mut peers = BTreeMap::new();
            peers.insert(
                2,
                PeerInput {
                    bridge_mac: mac(0x12),
                    vxlan_addr: Some(addr),
                    healthy: true,
                },
            );
            let p = plan(&PlanInput {
                me: ME,
                local_addrs: &[local],
                peers: &peers,
                claims: &[(mac(0x21), 2), ([0; 6], 2), ([1, 0, 0x5e, 0, 0, 1], 2)],
            });
            assert_eq!(p.desired.bridge()[&mac(0x21)], Port::Tap, "{addr}");
            assert!(p.desired.vxlan().is_empty(), "{addr}: {:?}", p.desired);
            assert_eq!(
                p.refused[&2],
                format!("bogus fastpath address {addr}: {why}")
            );
            assert_eq!(
                p.findings
                    .iter()
                    .filter(|f| matches!(f, Finding::BadMac { .. }))
                    .count(),
                2
            );
        }
    }

    #[test]
    fn sleeve_after_fastpath_drops_the_vxlan_entry_but_keeps_probes() {
        let mut d = DesiredFdb::new();
        let ip = Ipv4Addr::new(192, 0, 2, 2);
        d.fastpath(mac(1), ip);
        d.sleeve(mac(1));
        assert!(d.vxlan().is_empty());
        d.probe(mac(2), ip);
        d.sleeve(mac(2));
        assert_eq!(d.vxlan()[&mac(2)], ip);
    }
}
