//! Make the kernel's FDB match a [`DesiredFdb`]: list what is there (one `AF_BRIDGE` dump),
//! compute the minimal difference ([`diff`], pure), apply it, report the counts.
//!
//! What is ours, and so may be changed or removed:
//!
//! - every entry of the VXLAN device itself (`NTF_SELF`): weft owns the device, and anything
//!   there it did not ask for (an all-zeros default entry, a second remote, a custom port or
//!   VNI) would send frames where the router does not expect them;
//! - static, non-local bridge entries (`NUD_NOARP`) on the VXLAN and TAP ports;
//! - the bridge entry of any MAC the desired state names, wherever it is (a remote MAC learned
//!   on a pod port is moved where it belongs).
//!
//! Never touched: local entries (`NUD_PERMANENT`: the addresses of the bridge and its ports;
//! a desired MAC that is one of them is skipped and reported as a conflict), dynamic (learned)
//! entries of MACs we do not manage, entries with a VLAN, entries of other bridges and ports.
//!
//! Order of changes, so the bridge never points a MAC at the VXLAN port while the VXLAN
//! device has no destination for it: VXLAN entries set, then bridge entries set, then bridge
//! entries removed, then VXLAN entries removed. Within each phase the requests are pipelined
//! on the netlink socket (up to [`PIPELINE`] in flight).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use futures_util::{StreamExt, TryStreamExt};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::AddressFamily;
use tracing::debug;

use super::{DesiredFdb, Mac, Port};
use crate::error::{Error, Result};
use crate::nl::Netlink;

/// Requests in flight at once while applying a phase.
pub const PIPELINE: usize = 64;

const NUD_PERMANENT: u16 = 0x80;
const NUD_NOARP: u16 = 0x40;

/// Interface indexes of the bridge and the two ports weft programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbPorts {
    pub bridge: u32,
    pub vxlan: u32,
    pub tap: u32,
}

impl FdbPorts {
    /// Look the three up by name; the VXLAN device and the TAP must be ports of the bridge.
    pub async fn lookup(nl: &Netlink, bridge: &str, vxlan: &str, tap: &str) -> Result<FdbPorts> {
        let br = crate::node::require_bridge(nl, bridge).await?;
        let mut idx = [0u32; 2];
        for (i, name) in [vxlan, tap].into_iter().enumerate() {
            let l = nl.require_link(name).await?;
            if l.controller != Some(br.index) {
                return Err(Error::InvalidRequest(format!(
                    "{name} in {} is not a port of bridge {bridge}",
                    nl.ns()
                )));
            }
            idx[i] = l.index;
        }
        Ok(FdbPorts {
            bridge: br.index,
            vxlan: idx[0],
            tap: idx[1],
        })
    }

    fn port_index(&self, p: Port) -> u32 {
        match p {
            Port::Vxlan => self.vxlan,
            Port::Tap => self.tap,
        }
    }
}

/// A bridge FDB entry as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgeEntry {
    pub mac: Mac,
    pub ifindex: u32,
    pub kind: BridgeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeKind {
    /// An address of the bridge or a port (`NUD_PERMANENT`).
    Local,
    /// User-added (`NUD_NOARP`).
    Static { sticky: bool },
    /// Learned.
    Dynamic,
}

/// One remote of a VXLAN FDB entry (an entry with several remotes is reported once per remote).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanEntry {
    pub mac: Mac,
    pub dst: Option<IpAddr>,
    pub permanent: bool,
    /// Has a port, VNI or outgoing interface of its own (not the device's defaults).
    pub custom: bool,
}

/// The kernel's entries that matter to weft (bridge entries of our bridge, without VLAN; the
/// VXLAN device's own entries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActualFdb {
    pub bridge: Vec<BridgeEntry>,
    pub vxlan: Vec<VxlanEntry>,
}

/// One change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    SetVxlan {
        mac: Mac,
        dst: Ipv4Addr,
    },
    /// Delete the whole VXLAN entry (all its remotes), then set it: for an entry with several
    /// remotes, which a replace would only partly rewrite.
    ResetVxlan {
        mac: Mac,
        dst: Ipv4Addr,
    },
    /// Delete the whole VXLAN entry (all its remotes).
    DelVxlan {
        mac: Mac,
    },
    SetBridge {
        mac: Mac,
        port: Port,
    },
    DelBridge {
        mac: Mac,
        ifindex: u32,
    },
}

/// Added / removed / changed entries of one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
}

/// What [`diff`] found to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// In the order they must be applied.
    pub ops: Vec<Op>,
    pub bridge: Counts,
    pub vxlan: Counts,
    /// Desired MACs that are local addresses of this bridge: left alone.
    pub conflicts: Vec<Mac>,
}

/// What [`reconcile`] did.
#[derive(Debug, Default)]
pub struct ReconcileReport {
    pub bridge: Counts,
    pub vxlan: Counts,
    /// Desired MACs skipped because they are local addresses of the bridge.
    pub conflicts: Vec<Mac>,
    /// Changes the kernel refused; the next reconcile tries again.
    pub failed: Vec<(Op, Error)>,
}

impl ReconcileReport {
    /// Entries added, removed or changed, VXLAN and bridge together.
    pub fn total_changes(&self) -> usize {
        let c = |c: &Counts| c.added + c.removed + c.changed;
        c(&self.bridge) + c(&self.vxlan)
    }
}

/// The minimal changes that turn `actual` into `desired` (see the module docs for what is
/// ours). Pure.
pub fn diff(desired: &DesiredFdb, actual: &ActualFdb, ports: &FdbPorts) -> Diff {
    let mut d = Diff::default();
    let mut set_vx = Vec::new();
    let mut del_vx = Vec::new();
    let mut set_br = Vec::new();
    let mut del_br = Vec::new();

    // VXLAN entries, grouped by MAC.
    let mut vx: BTreeMap<Mac, Vec<&VxlanEntry>> = BTreeMap::new();
    for e in &actual.vxlan {
        vx.entry(e.mac).or_default().push(e);
    }
    for (&mac, &dst) in desired.vxlan() {
        match vx.get(&mac).map(Vec::as_slice) {
            None => {
                d.vxlan.added += 1;
                set_vx.push(Op::SetVxlan { mac, dst });
            }
            Some([one]) if one.dst == Some(IpAddr::V4(dst)) && one.permanent && !one.custom => {}
            Some([_]) => {
                d.vxlan.changed += 1;
                set_vx.push(Op::SetVxlan { mac, dst });
            }
            Some(_) => {
                d.vxlan.changed += 1;
                set_vx.push(Op::ResetVxlan { mac, dst });
            }
        }
    }
    for &mac in vx.keys() {
        if !desired.vxlan().contains_key(&mac) {
            d.vxlan.removed += 1;
            del_vx.push(Op::DelVxlan { mac });
        }
    }

    // Bridge entries, by MAC (one per MAC without VLAN).
    let br: BTreeMap<Mac, &BridgeEntry> = actual.bridge.iter().map(|e| (e.mac, e)).collect();
    for (&mac, &port) in desired.bridge() {
        let want = ports.port_index(port);
        match br.get(&mac) {
            None => {
                d.bridge.added += 1;
                set_br.push(Op::SetBridge { mac, port });
            }
            Some(e) if e.kind == BridgeKind::Local => d.conflicts.push(mac),
            Some(e) if e.ifindex == want && e.kind == BridgeKind::Static { sticky: true } => {}
            Some(_) => {
                d.bridge.changed += 1;
                set_br.push(Op::SetBridge { mac, port });
            }
        }
    }
    for e in &actual.bridge {
        let ours = matches!(e.kind, BridgeKind::Static { .. })
            && (e.ifindex == ports.vxlan || e.ifindex == ports.tap);
        if ours && !desired.bridge().contains_key(&e.mac) {
            d.bridge.removed += 1;
            del_br.push(Op::DelBridge {
                mac: e.mac,
                ifindex: e.ifindex,
            });
        }
    }
    d.ops = [set_vx, set_br, del_br, del_vx].concat();
    debug_assert!(d.ops.windows(2).all(|w| phase(&w[0]) <= phase(&w[1])));
    d
}

fn lladdr(msg: &NeighbourMessage) -> Option<Mac> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(v) if v.len() == 6 => v.as_slice().try_into().ok(),
        _ => None,
    })
}

/// Classify one `AF_BRIDGE` neighbour message.
fn classify(msg: &NeighbourMessage, ports: &FdbPorts, out: &mut ActualFdb) {
    let Some(mac) = lladdr(msg) else { return };
    let state = u16::from(msg.header.state);
    let mut master = None;
    let mut vlan = None;
    let mut dst = None;
    let mut custom = false;
    for a in &msg.attributes {
        match a {
            NeighbourAttribute::Controller(m) => master = Some(*m),
            NeighbourAttribute::Vlan(v) => vlan = Some(*v),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                dst = Some(IpAddr::V4(*ip))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                dst = Some(IpAddr::V6(*ip))
            }
            // AF_BRIDGE messages carry NDA_DST as raw bytes (the family says nothing about it).
            NeighbourAttribute::Destination(NeighbourAddress::Other(v)) => {
                dst = match v.len() {
                    4 => <[u8; 4]>::try_from(v.as_slice()).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(v.as_slice()).ok().map(IpAddr::from),
                    _ => None,
                }
            }
            NeighbourAttribute::Port(_)
            | NeighbourAttribute::Vni(_)
            | NeighbourAttribute::IfIndex(_) => custom = true,
            _ => {}
        }
    }
    match master {
        Some(m) if m == ports.bridge => {
            if vlan.is_some_and(|v| v != 0) {
                return;
            }
            let kind = if state & NUD_PERMANENT != 0 {
                BridgeKind::Local
            } else if state & NUD_NOARP != 0 {
                BridgeKind::Static {
                    sticky: msg.header.flags.contains(NeighbourFlags::Sticky),
                }
            } else {
                BridgeKind::Dynamic
            };
            out.bridge.push(BridgeEntry {
                mac,
                ifindex: msg.header.ifindex,
                kind,
            });
        }
        Some(_) => {}
        None if msg.header.ifindex == ports.vxlan => out.vxlan.push(VxlanEntry {
            mac,
            dst,
            permanent: state & NUD_PERMANENT != 0,
            custom,
        }),
        None => {}
    }
}

/// Read the kernel's entries (one dump of the `AF_BRIDGE` neighbour table).
pub async fn list(nl: &Netlink, ports: &FdbPorts) -> Result<ActualFdb> {
    let msgs: Vec<NeighbourMessage> = nl
        .handle()
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute()
        .try_collect()
        .await
        .map_err(|e| nl.err("listing FDB entries", "", e))?;
    let mut out = ActualFdb::default();
    for m in &msgs {
        classify(m, ports, &mut out);
    }
    Ok(out)
}

async fn set_vxlan(nl: &Netlink, ports: &FdbPorts, mac: Mac, dst: Ipv4Addr) -> Result<()> {
    nl.handle()
        .neighbours()
        .add_bridge(ports.vxlan, &mac)
        .state(NeighbourState::Permanent)
        .flags(NeighbourFlags::Own)
        .destination(IpAddr::V4(dst))
        .replace()
        .execute()
        .await
        .map_err(|e| {
            nl.err(
                "setting VXLAN FDB entry",
                &format!("{} dst {dst}", weft_types::Mac(mac)),
                e,
            )
        })
}

/// Delete the entry for `mac` on `ifindex` (`Own`: the device's own table; `Controller`: the
/// bridge's). Already gone is fine.
async fn del_entry(
    nl: &Netlink,
    ifindex: u32,
    flags: NeighbourFlags,
    what: &'static str,
    mac: Mac,
) -> Result<()> {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = ifindex;
    msg.header.flags = flags;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    match nl.handle().neighbours().del(msg).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ENOENT => Ok(()),
        Err(e) => Err(nl.err(what, &weft_types::Mac(mac).to_string(), e)),
    }
}

async fn exec(nl: &Netlink, ports: &FdbPorts, op: Op) -> Result<()> {
    match op {
        Op::SetVxlan { mac, dst } => set_vxlan(nl, ports, mac, dst).await,
        Op::ResetVxlan { mac, dst } => {
            del_entry(
                nl,
                ports.vxlan,
                NeighbourFlags::Own,
                "removing VXLAN FDB entry",
                mac,
            )
            .await?;
            set_vxlan(nl, ports, mac, dst).await
        }
        Op::DelVxlan { mac } => {
            del_entry(
                nl,
                ports.vxlan,
                NeighbourFlags::Own,
                "removing VXLAN FDB entry",
                mac,
            )
            .await
        }
        Op::SetBridge { mac, port } => nl
            .handle()
            .neighbours()
            .add_bridge(ports.port_index(port), &mac)
            .state(NeighbourState::Noarp)
            .flags(NeighbourFlags::Controller | NeighbourFlags::Sticky)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                nl.err(
                    "setting bridge FDB entry",
                    &format!("{} -> {port:?} port", weft_types::Mac(mac)),
                    e,
                )
            }),
        Op::DelBridge { mac, ifindex } => {
            del_entry(
                nl,
                ifindex,
                NeighbourFlags::Controller,
                "removing bridge FDB entry",
                mac,
            )
            .await
        }
    }
}

fn phase(op: &Op) -> u8 {
    match op {
        Op::SetVxlan { .. } | Op::ResetVxlan { .. } => 0,
        Op::SetBridge { .. } => 1,
        Op::DelBridge { .. } => 2,
        Op::DelVxlan { .. } => 3,
    }
}

/// Apply `ops` phase by phase (see the module docs), pipelining within a phase. Returns the
/// changes the kernel refused.
pub async fn apply(nl: &Netlink, ports: &FdbPorts, ops: &[Op]) -> Vec<(Op, Error)> {
    let mut failed = Vec::new();
    for p in 0..4 {
        let results: Vec<(Op, Result<()>)> =
            futures_util::stream::iter(ops.iter().copied().filter(|op| phase(op) == p))
                .map(|op| async move { (op, exec(nl, ports, op).await) })
                .buffer_unordered(PIPELINE)
                .collect()
                .await;
        failed.extend(
            results
                .into_iter()
                .filter_map(|(op, r)| r.err().map(|e| (op, e))),
        );
    }
    failed
}

/// List, diff, apply: make the kernel match `desired`. Cheap when nothing changed (one dump).
/// Errors only when the kernel cannot be read; refused changes are in the report.
pub async fn reconcile(
    nl: &Netlink,
    ports: &FdbPorts,
    desired: &DesiredFdb,
) -> Result<ReconcileReport> {
    let actual = list(nl, ports).await?;
    let d = diff(desired, &actual, ports);
    let failed = if d.ops.is_empty() {
        Vec::new()
    } else {
        apply(nl, ports, &d.ops).await
    };
    if !d.ops.is_empty() {
        debug!(bridge = ?d.bridge, vxlan = ?d.vxlan, failed = failed.len(), "FDB reconciled");
    }
    Ok(ReconcileReport {
        bridge: d.bridge,
        vxlan: d.vxlan,
        conflicts: d.conflicts,
        failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: FdbPorts = FdbPorts {
        bridge: 10,
        vxlan: 11,
        tap: 12,
    };
    const POD_PORT: u32 = 13;

    fn mac(n: u8) -> Mac {
        [2, 0, 0, 0, 0, n]
    }
    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, n)
    }
    fn vxe(n: u8, dst: u8) -> VxlanEntry {
        VxlanEntry {
            mac: mac(n),
            dst: Some(IpAddr::V4(ip(dst))),
            permanent: true,
            custom: false,
        }
    }
    fn bre(n: u8, ifindex: u32, kind: BridgeKind) -> BridgeEntry {
        BridgeEntry {
            mac: mac(n),
            ifindex,
            kind,
        }
    }
    const STICKY: BridgeKind = BridgeKind::Static { sticky: true };

    #[test]
    fn in_sync_means_no_ops() {
        let mut d = DesiredFdb::new();
        d.fastpath(mac(1), ip(2));
        d.sleeve(mac(2));
        let actual = ActualFdb {
            bridge: vec![
                bre(1, P.vxlan, STICKY),
                bre(2, P.tap, STICKY),
                bre(9, P.tap, BridgeKind::Local),
                bre(8, POD_PORT, BridgeKind::Dynamic),
                bre(7, P.tap, BridgeKind::Dynamic),
            ],
            vxlan: vec![vxe(1, 2)],
        };
        let r = diff(&d, &actual, &P);
        assert!(r.ops.is_empty(), "{:?}", r.ops);
        assert_eq!(r.bridge, Counts::default());
    }

    #[test]
    fn adds_fixes_and_removes_in_safe_order() {
        let mut d = DesiredFdb::new();
        d.fastpath(mac(1), ip(2)); // missing entirely
        d.fastpath(mac(2), ip(3)); // vxlan dst wrong, bridge on tap
        d.sleeve(mac(3)); // on vxlan port now, has vxlan entry
        d.fastpath(mac(4), ip(2)); // two remotes; learned on a pod port
        d.sleeve(mac(5)); // static but not sticky
        d.sleeve(mac(9)); // a local address: conflict
        let actual = ActualFdb {
            bridge: vec![
                bre(2, P.tap, STICKY),
                bre(3, P.vxlan, STICKY),
                bre(4, POD_PORT, BridgeKind::Dynamic),
                bre(5, P.tap, BridgeKind::Static { sticky: false }),
                bre(6, P.vxlan, STICKY), // stale
                bre(7, POD_PORT, BridgeKind::Static { sticky: true }), // not ours
                bre(9, P.tap, BridgeKind::Local),
            ],
            vxlan: vec![vxe(2, 9), vxe(3, 3), vxe(4, 2), vxe(4, 3), vxe(0, 5)],
        };
        let r = diff(&d, &actual, &P);
        assert_eq!(
            r.vxlan,
            Counts {
                added: 1,
                removed: 2,
                changed: 2
            }
        );
        assert_eq!(
            r.bridge,
            Counts {
                added: 1,
                removed: 1,
                changed: 4
            }
        );
        assert_eq!(r.conflicts, vec![mac(9)]);
        let pos = |op: Op| r.ops.iter().position(|&o| o == op).unwrap();
        // mac 3 moves vxlan -> tap: bridge entry first, then the vxlan entry goes.
        assert!(
            pos(Op::SetBridge {
                mac: mac(3),
                port: Port::Tap
            }) < pos(Op::DelVxlan { mac: mac(3) })
        );
        // mac 1 moves onto the fastpath: vxlan entry first.
        assert!(
            pos(Op::SetVxlan {
                mac: mac(1),
                dst: ip(2)
            }) < pos(Op::SetBridge {
                mac: mac(1),
                port: Port::Vxlan
            })
        );
        // Two remotes: delete, then set.
        assert!(r.ops.contains(&Op::ResetVxlan {
            mac: mac(4),
            dst: ip(2)
        }));
        assert!(r.ops.contains(&Op::DelBridge {
            mac: mac(6),
            ifindex: P.vxlan
        }));
        assert!(r.ops.contains(&Op::DelVxlan { mac: mac(0) }));
        assert!(!r
            .ops
            .iter()
            .any(|o| matches!(o, Op::DelBridge { mac: m, .. } if *m == mac(7))));
    }

    #[test]
    fn non_permanent_or_custom_vxlan_entries_are_rewritten() {
        let mut d = DesiredFdb::new();
        d.probe(mac(1), ip(2));
        d.probe(mac(2), ip(2));
        let mut a = vxe(1, 2);
        a.permanent = false;
        let mut b = vxe(2, 2);
        b.custom = true;
        let r = diff(
            &d,
            &ActualFdb {
                bridge: vec![],
                vxlan: vec![a, b],
            },
            &P,
        );
        assert_eq!(r.vxlan.changed, 2);
        assert!(r.bridge == Counts::default());
    }
}
