//! IPAM in the simulator: calls that act like a router (persist, then let the mesh
//! publish), and consistency checks across all running peers.

use super::{PeerId, Sim};
use crate::ipam::{AllocKey, Allocation, IpamError, RemoveOutcome};
use crate::mesh::Input;
use crate::peer::PeerName;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Instant;

impl Sim {
    /// Writes peer `i`'s IPAM snapshot to its simulated state directory.
    pub(super) fn save_ipam(&mut self, i: PeerId) {
        if let Some(m) = &self.peers[i].mesh {
            if m.ipam_enabled() {
                self.peers[i].ipam_state = Some(m.ipam_snapshot());
            }
        }
    }

    /// Loses peer `i`'s state directory (a reinstalled node).
    pub fn forget_ipam_state(&mut self, i: PeerId) {
        self.peers[i].ipam_state = None;
    }

    /// Feeds a tick so that changes made through direct calls are published.
    fn flush(&mut self, i: PeerId) {
        self.save_ipam(i);
        self.input(i, Input::Tick);
    }

    /// Allocates on peer `i` as its router would (persisting before answering).
    pub fn ipam_allocate(
        &mut self,
        i: PeerId,
        key: AllocKey,
        pod: Option<String>,
    ) -> Result<Allocation, IpamError> {
        let now = self.now;
        let m = self.peers[i].mesh.as_mut().ok_or(IpamError::Disabled)?;
        let r = m.ipam_allocate(key, pod, now);
        self.flush(i);
        r
    }

    pub fn ipam_release(&mut self, i: PeerId, key: &AllocKey) -> Option<Ipv4Addr> {
        let now = self.now;
        let r = self.peers[i].mesh.as_mut()?.ipam_release(key, now);
        self.flush(i);
        r
    }

    /// `weft rmpeer` on peer `i`.
    pub fn remove_peer(
        &mut self,
        i: PeerId,
        name: PeerName,
        force: bool,
    ) -> Result<RemoveOutcome, IpamError> {
        let now = self.now;
        let m = self.peers[i].mesh.as_mut().ok_or(IpamError::Disabled)?;
        let r = m.remove_peer(name, force, now);
        self.flush(i);
        r
    }

    /// Every allocation of every running peer: (address, peer, key, conflicting).
    pub fn ipam_all_allocations(&self) -> Vec<(Ipv4Addr, PeerId, AllocKey, bool)> {
        let mut out = Vec::new();
        for i in self.live() {
            let m = self.mesh(i).expect("live");
            for (k, a) in m.ipam_allocations() {
                out.push((a.ip, i, k, a.conflicting));
            }
        }
        out.sort();
        out
    }

    /// Checks, over all running peers: no address allocated twice (counting only
    /// allocations that are not flagged conflicting when `strict` is false); no block
    /// owned (settled) by two peers; every peer's settled blocks are its own in every
    /// other peer's view (once converged).
    pub fn ipam_check(&self, strict: bool) -> Result<(), String> {
        let mut seen: BTreeMap<Ipv4Addr, (PeerId, AllocKey)> = BTreeMap::new();
        for (ip, i, k, conflicting) in self.ipam_all_allocations() {
            if conflicting && !strict {
                continue;
            }
            if let Some((j, other)) = seen.insert(ip, (i, k.clone())) {
                return Err(format!(
                    "{ip} allocated twice: peer {j} {other:?}, peer {i} {k:?}"
                ));
            }
        }
        let mut owner: BTreeMap<u32, PeerId> = BTreeMap::new();
        for i in self.live() {
            let Some(local) = self.mesh(i).and_then(|m| m.ipam.local.as_ref()) else {
                continue;
            };
            for &b in &local.settled {
                if let Some(j) = owner.insert(b, i) {
                    return Err(format!("block {b} settled at peers {j} and {i}"));
                }
            }
        }
        Ok(())
    }

    /// Whether every running peer shows the same owners and claims of every block.
    pub fn ipam_views_agree(&self, now: Instant) -> bool {
        let mut first = None;
        for i in self.live() {
            let Ok(st) = self.mesh(i).expect("live").ipam_status(now) else {
                continue;
            };
            let owners: Vec<_> = st
                .peers
                .iter()
                .map(|p| (p.name, p.blocks.clone(), p.pending.clone()))
                .collect();
            let v = (owners, st.conflicts.clone(), st.removed.clone());
            match &first {
                None => first = Some(v),
                Some(f) if *f != v => return false,
                Some(_) => {}
            }
        }
        true
    }
}
