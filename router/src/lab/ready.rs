//! When is a lab's mesh complete? [`topology_ready`] answers from the statuses of its
//! routers and its [`Topology`]; [`mesh_gaps`] says what is missing.

use std::collections::BTreeSet;

use super::Topology;
use crate::status::{ConnState, Status};

/// Every node answers, has established connections to the `n - 1` others, and sees `n`
/// reachable peers (itself included). For one-segment labs; see [`topology_ready`].
pub fn mesh_ready(statuses: &[Option<Status>], n: usize) -> bool {
    statuses.len() == n
        && statuses.iter().all(|s| {
            let Some(s) = s else { return false };
            let established: BTreeSet<&str> = s
                .connections
                .iter()
                .filter(|c| c.state == ConnState::Established)
                .filter_map(|c| c.peer.as_deref())
                .filter(|p| *p != s.name)
                .collect();
            let mut reachable: BTreeSet<&str> = s
                .peers
                .iter()
                .filter(|p| p.reachable)
                .map(|p| p.name.as_str())
                .collect();
            reachable.insert(&s.name);
            established.len() + 1 >= n && reachable.len() >= n
        })
}

/// What keeps the mesh of `topo` from being ready, one line per node (empty when ready).
/// `names[i - 1]` is node `i`'s peer name and `statuses[i - 1]` its status (`None`: no
/// answer). A node is ready when it sees every node of its part of the mesh as a reachable
/// peer ([`Topology::reachable_from`]) and has established connections to every node it
/// can reach directly ([`Topology::direct_neighbours`]: same segment, and from behind NAT
/// the public segment's nodes). More connections than that are fine.
pub fn mesh_gaps(topo: &Topology, names: &[String], statuses: &[Option<Status>]) -> Vec<String> {
    let nick = |i: usize| format!("n{i}");
    let list = |v: Vec<usize>| v.into_iter().map(nick).collect::<Vec<_>>().join(" ");
    let mut gaps = Vec::new();
    if statuses.len() != topo.nodes || names.len() != topo.nodes {
        gaps.push(format!(
            "{} statuses and {} names for {} nodes",
            statuses.len(),
            names.len(),
            topo.nodes
        ));
        return gaps;
    }
    for i in 1..=topo.nodes {
        let Some(s) = &statuses[i - 1] else {
            gaps.push(format!("{}: no status", nick(i)));
            continue;
        };
        let established: BTreeSet<&str> = s
            .connections
            .iter()
            .filter(|c| c.state == ConnState::Established)
            .filter_map(|c| c.peer.as_deref())
            .collect();
        let reachable: BTreeSet<&str> = s
            .peers
            .iter()
            .filter(|p| p.reachable)
            .map(|p| p.name.as_str())
            .collect();
        let unconnected: Vec<usize> = topo
            .direct_neighbours(i)
            .into_iter()
            .filter(|&j| !established.contains(names[j - 1].as_str()))
            .collect();
        let unseen: Vec<usize> = topo
            .reachable_from(i)
            .into_iter()
            .filter(|&j| j != i && !reachable.contains(names[j - 1].as_str()))
            .collect();
        let mut what = Vec::new();
        if !unconnected.is_empty() {
            what.push(format!("not connected to {}", list(unconnected)));
        }
        if !unseen.is_empty() {
            what.push(format!("does not reach {}", list(unseen)));
        }
        if !what.is_empty() {
            gaps.push(format!("{}: {}", nick(i), what.join("; ")));
        }
    }
    gaps
}

/// Whether the mesh of `topo` is complete: see [`mesh_gaps`].
pub fn topology_ready(topo: &Topology, names: &[String], statuses: &[Option<Status>]) -> bool {
    mesh_gaps(topo, names, statuses).is_empty()
}
