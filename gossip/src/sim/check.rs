//! Measurements and consistency checks over a [`Sim`].

use super::{PeerId, Sim};
use crate::mesh::{GossipStats, Routes};
use crate::message::{Channel, Summary};
use crate::peer::PeerName;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

impl Sim {
    /// Whether every running peer has the same view of `channel`.
    pub fn views_equal(&self, channel: Channel) -> bool {
        let mut first: Option<Vec<Summary>> = None;
        for p in &self.peers {
            let Some(m) = &p.mesh else { continue };
            let v = m.view(channel);
            match &first {
                None => first = Some(v),
                Some(f) if *f != v => return false,
                Some(_) => {}
            }
        }
        true
    }

    /// Both channels' views equal everywhere.
    pub fn converged(&self) -> bool {
        Channel::ALL.iter().all(|&c| self.views_equal(c))
    }

    /// Runs until all views are equal and no view changed for `quiet`, checking every
    /// 100 ms of virtual time; gives up at `elapsed() + max`. Returns the virtual time of
    /// the last view change when converged.
    pub fn run_until_converged(&mut self, max: Duration, quiet: Duration) -> Option<Duration> {
        let deadline = self.elapsed() + max;
        let step = Duration::from_millis(100);
        while self.elapsed() < deadline {
            self.run_for(step);
            if self.elapsed() >= self.last_view_change() + quiet && self.converged() {
                return Some(self.last_view_change());
            }
        }
        None
    }

    /// Gossip counters summed over every incarnation of every peer.
    pub fn total_stats(&self) -> GossipStats {
        let mut t = self.retired;
        for m in self.peers.iter().filter_map(|p| p.mesh.as_ref()) {
            let s = m.stats();
            t.messages_sent += s.messages_sent;
            t.bytes_sent += s.bytes_sent;
            t.messages_received += s.messages_received;
            t.bytes_received += s.bytes_received;
        }
        t
    }

    /// Runs for `window` and returns the gossip bytes sent per running peer per second.
    pub fn measure_bytes_per_peer_per_s(&mut self, window: Duration) -> f64 {
        let before = self.total_stats().bytes_sent;
        self.run_for(window);
        let sent = self.total_stats().bytes_sent - before;
        let n = self.live().len().max(1);
        sent as f64 / n as f64 / window.as_secs_f64()
    }

    /// Routes of every running peer.
    pub fn all_routes(&mut self) -> BTreeMap<PeerName, Routes> {
        let mut out = BTreeMap::new();
        for i in self.live() {
            let name = self.name_of(i);
            let m = self.mesh_mut(i).expect("live");
            out.insert(name, m.routes().clone());
        }
        out
    }

    /// Checks that unicast next hops lead every running peer to every destination it has
    /// a route to, without loops and only through running peers, that destinations are
    /// exactly the peers of the same connected component, and that a broadcast from any
    /// running peer, forwarded along everyone's broadcast routes, reaches each of the
    /// peers its origin can reach exactly once.
    pub fn check_routes(&mut self) -> Result<(), String> {
        let routes = self.all_routes();
        let n = routes.len();
        for (src, r) in &routes {
            for dst in r.unicast.keys() {
                let (mut at, mut hops) = (*src, 0);
                while at != *dst {
                    let Some(rt) = routes.get(&at) else {
                        return Err(format!(
                            "route {src}->{dst} passes through {at}, which is down"
                        ));
                    };
                    let Some(next) = rt.unicast.get(dst) else {
                        return Err(format!("route {src}->{dst}: {at} has no route onwards"));
                    };
                    at = *next;
                    hops += 1;
                    if hops > n {
                        return Err(format!("route {src}->{dst} loops"));
                    }
                }
            }
        }
        for (origin, r) in &routes {
            let mut got: BTreeMap<PeerName, usize> = BTreeMap::new();
            let mut queue = VecDeque::from([*origin]);
            while let Some(x) = queue.pop_front() {
                let Some(rx) = routes.get(&x) else { continue };
                for c in rx.broadcast.get(origin).into_iter().flatten() {
                    let k = got.entry(*c).or_insert(0);
                    *k += 1;
                    if *k == 1 {
                        queue.push_back(*c);
                    }
                }
            }
            if let Some((p, k)) = got.iter().find(|(_, k)| **k != 1) {
                return Err(format!("broadcast from {origin} reaches {p} {k} times"));
            }
            let expect: Vec<&PeerName> = r.unicast.keys().collect();
            let reached: Vec<&PeerName> = got.keys().collect();
            if expect != reached {
                return Err(format!(
                    "broadcast from {origin} reaches {} peers, it has routes to {}",
                    reached.len(),
                    expect.len()
                ));
            }
        }
        Ok(())
    }

    /// Peers `i` is connected to (established, per its mesh's status).
    pub fn degree(&self, i: PeerId) -> usize {
        self.mesh(i).map_or(0, |m| {
            m.peers()
                .iter()
                .filter(|p| p.next_hop == Some(p.name))
                .count()
        })
    }
}
