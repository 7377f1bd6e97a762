//! Where IPAM takes this node's addresses from under `--kube` (pure): the Node's
//! `spec.podCIDR`, weft's gossip IPAM over the shared range, or nothing yet.
//!
//! The rule, applied to every peer view (from the API, or the peer cache at start):
//! 1. **This Node has an IPv4 `spec.podCIDR` inside the range**: use it
//!    ([`BlockSource::Fixed`]). The cluster assigned it; no consensus is needed.
//! 2. **This Node has none (or it is outside the range), but another Node has a pod CIDR
//!    in the range**: wait ([`BlockSource::Undecided`]). The cluster assigns pod CIDRs out
//!    of the range (kube-controller-manager `--allocate-node-cidrs`), so blocks claimed by
//!    gossip now could be given to another Node later; ours is coming.
//! 3. **No Node has a pod CIDR in the range**: gossip IPAM over the range
//!    ([`BlockSource::Shared`]), as outside Kubernetes. A podCIDR outside the range is
//!    reported (the range should be the cluster's pod CIDR).
//! 4. **No view yet** (API not answered, no cache): wait.
//!
//! Decisions are sticky where changing them would strand pods: a fixed CIDR is kept when a
//! later view does not show one (pod CIDRs are immutable; a Node object that lost it is a
//! re-registered Node), and is replaced only by another pod CIDR in the range. The shared
//! range gives way only to a pod CIDR (addresses already handed out stay valid and
//! reserved), never to waiting.

use ipnet::{IpNet, Ipv4Net};
use weft_gossip::ipam::BlockSource;

use super::nodes::{Origin, PeerView};

/// What IPAM should use, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceDecision {
    pub source: BlockSource,
    /// For status: why this source (one phrase).
    pub reason: String,
    /// Something the operator should fix or know, for status and the log.
    pub warning: Option<String>,
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The decision for `view`, given the range (`--ipalloc-range`) and the current source.
pub fn decide(view: &PeerView, range: Ipv4Net, current: &BlockSource) -> SourceDecision {
    let out = |source, reason: String, warning| SourceDecision {
        source,
        reason,
        warning,
    };
    if view.origin == Origin::Nothing {
        return out(
            current.clone(),
            "waiting for the Node list from the API server".to_string(),
            None,
        );
    }
    let set = &view.set;
    let ours = set.this_node.as_ref().and_then(|t| t.pod_cidr_v4());
    let others_in_range = set
        .peers
        .values()
        .flat_map(|p| p.pod_cidrs.iter())
        .any(|c| matches!(c, IpNet::V4(n) if overlaps(*n, range)));
    let outside = ours.filter(|n| !range.contains(n)).map(|n| {
        format!("this Node's spec.podCIDR {n} is not inside the IP range {range}: set WEFT_IPALLOC_RANGE (--ipalloc-range) to the cluster's pod CIDR")
    });
    match (current, ours) {
        (_, Some(n)) if range.contains(&n) => {
            let warning = match current {
                BlockSource::Fixed(old) if *old != n => Some(format!(
                    "this Node's spec.podCIDR changed from {old} to {n}: pods started before keep their addresses"
                )),
                _ => None,
            };
            return out(
                BlockSource::Fixed(n),
                format!("this Node's spec.podCIDR {n}"),
                warning,
            );
        }
        (BlockSource::Fixed(old), _) => {
            return out(
                current.clone(),
                format!("this Node's spec.podCIDR {old} (as first seen)"),
                Some(format!(
                    "the Node list no longer shows this Node's spec.podCIDR {old}; still using it"
                )),
            );
        }
        (BlockSource::Shared, _) => {
            // decided before: keep handing out addresses from the blocks already claimed
            let warning = outside.or_else(|| {
                others_in_range.then(|| {
                    format!("other Nodes have pod CIDRs in {range} but this one has none: using the gossip IPAM claimed before (blocks claimed by gossip may overlap pod CIDRs the cluster assigns)")
                })
            });
            return out(
                BlockSource::Shared,
                format!("gossip IPAM over {range}"),
                warning,
            );
        }
        _ => {}
    }
    let node = |what: &str| match &set.this_node {
        Some(t) => format!("{what} Node {}", t.node),
        None => "no Node named like this node (NODE_NAME)".to_string(),
    };
    if others_in_range {
        let why = match (&set.this_node, outside.is_some()) {
            (None, _) => node(""),
            (Some(_), true) => format!("{}'s spec.podCIDR is outside {range}", node("this")),
            (Some(_), false) => format!("{} has no spec.podCIDR yet", node("this")),
        };
        return out(
            BlockSource::Undecided,
            format!("waiting for this Node's spec.podCIDR: {why}, while other Nodes have pod CIDRs in {range} (the cluster assigns them)"),
            outside,
        );
    }
    out(
        BlockSource::Shared,
        format!("gossip IPAM over {range} (no Node has a spec.podCIDR in it)"),
        outside,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::peers::{AddressKind, NodePeer, PeerSet, ThisNode};
    use std::sync::Arc;

    fn range() -> Ipv4Net {
        "10.32.0.0/12".parse().unwrap()
    }

    fn view(origin: Origin, ours: Option<&str>, others: &[Option<&str>], found: bool) -> PeerView {
        let cidrs = |c: Option<&str>| c.map(|c| c.parse().unwrap()).into_iter().collect();
        let mut set = PeerSet::default();
        if found {
            set.this_node = Some(ThisNode {
                node: "me".into(),
                pod_cidrs: cidrs(ours),
                ..Default::default()
            });
        }
        for (i, c) in others.iter().enumerate() {
            let node = format!("n{i}");
            set.peers.insert(
                node.clone(),
                NodePeer {
                    peer_name: crate::kube::peer_name_for_node(&node),
                    node,
                    address: format!("192.0.2.{}", i + 1).parse().unwrap(),
                    kind: AddressKind::InternalIP,
                    pod_cidrs: cidrs(*c),
                },
            );
        }
        PeerView {
            set: Arc::new(set),
            origin,
        }
    }

    fn fixed(s: &str) -> BlockSource {
        BlockSource::Fixed(s.parse().unwrap())
    }

    #[test]
    fn the_rule() {
        let u = BlockSource::Undecided;
        let api = Origin::Api;
        let d = |v: &PeerView, cur: &BlockSource| decide(v, range(), cur);
        // 4. nothing yet
        let v = PeerView::default();
        assert_eq!(d(&v, &u).source, u);
        // 1. our podCIDR, from the API or the cache
        for origin in [Origin::Api, Origin::Cache] {
            let v = view(origin, Some("10.32.1.0/24"), &[Some("10.32.2.0/24")], true);
            let got = d(&v, &u);
            assert_eq!(got.source, fixed("10.32.1.0/24"));
            assert!(got.warning.is_none());
        }
        // 2. none for us, others have theirs in the range: wait
        let v = view(api, None, &[Some("10.32.2.0/24"), None], true);
        let got = d(&v, &u);
        assert_eq!(got.source, u);
        assert!(
            got.reason.contains("has no spec.podCIDR yet"),
            "{}",
            got.reason
        );
        let v = view(api, None, &[Some("10.32.2.0/24")], false);
        assert!(d(&v, &u).reason.contains("no Node named like this node"));
        // ... or ours is outside the range while theirs are inside
        let v = view(api, Some("10.244.1.0/24"), &[Some("10.32.2.0/24")], true);
        let got = d(&v, &u);
        assert_eq!(got.source, u);
        assert!(got.warning.unwrap().contains("not inside the IP range"));
        // 3. nobody has one in the range: gossip, with a warning when ours is elsewhere
        let v = view(api, None, &[None, None], true);
        assert_eq!(d(&v, &u).source, BlockSource::Shared);
        let v = view(api, Some("10.244.1.0/24"), &[Some("10.244.2.0/24")], true);
        let got = d(&v, &u);
        assert_eq!(got.source, BlockSource::Shared);
        assert!(got.warning.unwrap().contains("WEFT_IPALLOC_RANGE"));
        // an IPv6-only pod CIDR is not ours to use
        let v = view(api, Some("fd00:1::/64"), &[], true);
        assert_eq!(d(&v, &u).source, BlockSource::Shared);
        // a larger CIDR around the range counts as overlapping it
        let v = view(api, None, &[Some("10.0.0.0/8")], true);
        assert_eq!(d(&v, &u).source, u);
    }

    #[test]
    fn decisions_are_sticky_where_pods_would_be_stranded() {
        let api = Origin::Api;
        let cur = fixed("10.32.1.0/24");
        // the Node list stops showing it (re-registered Node, or not found): kept
        for v in [
            view(api, None, &[Some("10.32.2.0/24")], true),
            view(api, None, &[], false),
        ] {
            let got = decide(&v, range(), &cur);
            assert_eq!(got.source, cur);
            assert!(got.warning.unwrap().contains("still using it"));
        }
        // another podCIDR in the range replaces it, with a warning
        let v = view(api, Some("10.32.9.0/24"), &[], true);
        let got = decide(&v, range(), &cur);
        assert_eq!(got.source, fixed("10.32.9.0/24"));
        assert!(got.warning.unwrap().contains("changed from 10.32.1.0/24"));
        // gossip, once decided from the API, gives way to a podCIDR but never to waiting
        let shared = BlockSource::Shared;
        let v = view(api, None, &[Some("10.32.2.0/24")], true);
        let got = decide(&v, range(), &shared);
        assert_eq!(got.source, shared);
        assert!(got.warning.unwrap().contains("may overlap"));
        let v = view(api, Some("10.32.1.0/24"), &[Some("10.32.2.0/24")], true);
        assert_eq!(decide(&v, range(), &shared).source, fixed("10.32.1.0/24"));
        let v = view(api, None, &[], false);
        let got = decide(&v, range(), &shared);
        assert_eq!((got.source, got.warning), (shared, None));
    }
}
