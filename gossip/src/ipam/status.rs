//! What `/status/ipam` shows: the range, who owns what, our usage, conflicts, peers with
//! another range, removed peers.

use super::{view, BlockSource, IpamError};
use crate::mesh::Mesh;
use crate::peer::PeerName;
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Instant;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpamStatus {
    pub range: Ipv4Net,
    /// Where this router's blocks come from.
    pub source: BlockSource,
    pub block_prefix_len: u8,
    /// Addresses per block.
    pub block_size: u32,
    pub blocks_total: u32,
    /// Blocks nobody claims.
    pub blocks_free: u32,
    /// Every peer with an IPAM record in our range (us included), by name.
    pub peers: Vec<IpamPeerStatus>,
    pub ours: IpamOwnStatus,
    /// Addresses peers still hold in blocks they lost to another peer (after a
    /// partition). The same everywhere once gossip has converged.
    pub conflicts: Vec<IpamConflict>,
    /// Peers configured with another range or block size (a configuration error).
    pub mismatched: Vec<IpamMismatch>,
    /// Peers removed with `rmpeer` (and not back since).
    pub removed: Vec<PeerName>,
    /// Peers owning blocks that we cannot reach now (down, partitioned, or gone for good:
    /// then `weft rmpeer` returns their space).
    pub unreachable_owners: Vec<PeerName>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpamPeerStatus {
    pub name: PeerName,
    /// Known while the peer is in the topology view.
    pub nickname: Option<String>,
    /// Blocks it owns (adjacent blocks merged).
    pub blocks: Vec<Ipv4Net>,
    /// Blocks it is claiming (settling).
    pub pending: Vec<Ipv4Net>,
    /// Addresses in owned blocks.
    pub addresses: u64,
    pub reachable: bool,
    pub is_self: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpamOwnStatus {
    /// Allocated addresses (including `lost` ones).
    pub used: u64,
    /// Free usable addresses in our owned blocks.
    pub free: u64,
    pub pending: Vec<Ipv4Net>,
    /// Our addresses in blocks we lost (kept, reserved, never handed out again).
    pub lost: Vec<Ipv4Addr>,
    /// Our addresses that another peer also holds as lost: the same address on two pods.
    pub duplicates: Vec<Ipv4Addr>,
    /// No free address and no free block (with a fixed CIDR: no free address in it):
    /// allocations fail.
    pub exhausted: bool,
    /// Blocks of our fixed CIDR that another peer's claim wins in the shared view: both
    /// may hand out the same addresses (only when the CIDR covers whole blocks; a CIDR
    /// smaller than a block shares it with its neighbours by design).
    pub contested: Vec<(Ipv4Net, PeerName)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpamConflict {
    pub block: Ipv4Net,
    /// Who owns the block now.
    pub owner: Option<PeerName>,
    /// Who still holds `addresses` in it.
    pub holder: PeerName,
    pub addresses: Vec<Ipv4Addr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpamMismatch {
    pub peer: PeerName,
    pub nickname: Option<String>,
    pub range: Ipv4Net,
    pub block_prefix_len: u8,
}

impl Mesh {
    /// IPAM status (`Err` when IPAM is disabled or misconfigured).
    pub fn ipam_status(&self, _now: Instant) -> Result<IpamStatus, IpamError> {
        self.ipam.check()?;
        let ipam = &self.ipam;
        let local = ipam.local.as_ref().expect("checked");
        let space = local.space;
        let idx = view(&ipam.index, &space, &ipam.store, &ipam.removed);
        let me = self.me.name;
        let routes = self.routes_ref();
        let nickname = |p: &PeerName| self.topo.get(p).map(|r| r.nickname.clone());
        let reachable = |p: &PeerName| *p == me || routes.unicast.contains_key(p);

        let mut owned: BTreeMap<PeerName, (Vec<u32>, Vec<u32>)> = BTreeMap::new();
        for (origin, slot) in ipam.store.iter() {
            if slot.rec.space == space {
                owned.entry(*origin).or_default();
            }
        }
        for (&b, claims) in &idx.claims {
            let w = claims[0];
            let e = owned.entry(w.peer).or_default();
            if w.settled {
                e.0.push(b);
            } else {
                e.1.push(b);
            }
        }
        let peers: Vec<IpamPeerStatus> = owned
            .iter()
            .map(|(p, (settled, pending))| IpamPeerStatus {
                name: *p,
                nickname: nickname(p),
                blocks: super::space::aggregate(&space, settled.iter().copied()),
                pending: super::space::aggregate(&space, pending.iter().copied()),
                addresses: settled.len() as u64 * u64::from(space.block_size()),
                reachable: reachable(p),
                is_self: *p == me,
            })
            .collect();
        let unreachable_owners = peers
            .iter()
            .filter(|p| !p.reachable && (!p.blocks.is_empty() || !p.pending.is_empty()))
            .map(|p| p.name)
            .collect();

        let mut by_block: BTreeMap<(PeerName, u32), Vec<Ipv4Addr>> = BTreeMap::new();
        for (&a, &holder) in &idx.reserved {
            if let Some(b) = space.block_of(a) {
                by_block
                    .entry((holder, b))
                    .or_default()
                    .push(Ipv4Addr::from(a));
            }
        }
        let conflicts = by_block
            .into_iter()
            .map(|((holder, b), addresses)| IpamConflict {
                block: space.block_net(b),
                owner: idx.winner(b).map(|c| c.peer),
                holder,
                addresses,
            })
            .collect();
        let mismatched = idx
            .mismatched
            .iter()
            .map(|(p, s)| IpamMismatch {
                peer: *p,
                nickname: nickname(p),
                range: s.range(),
                block_prefix_len: s.block_prefix_len,
            })
            .collect();
        let removed = ipam
            .removed
            .keys()
            .filter(|p| !ipam.store.contains(p))
            .copied()
            .collect();

        let (used_settled, usable) = local.usage();
        let reserved_ours = local
            .settled
            .iter()
            .map(|&b| {
                idx.reserved
                    .range(space.block_start(b)..=space.block_end(b))
                    .filter(|(a, h)| {
                        **h != me && local.allocs.holder(**a).is_none() && local.allows(**a)
                    })
                    .count() as u64
            })
            .sum::<u64>();
        let free = usable.saturating_sub(used_settled + reserved_ours);
        let duplicates = idx
            .reserved
            .iter()
            .filter(|(a, h)| **h != me && local.allocs.holder(**a).is_some())
            .map(|(a, _)| Ipv4Addr::from(*a))
            .collect();
        let blocks_free = idx.free_count(&space);
        let claimable = local.source == BlockSource::Shared && blocks_free > 0;
        let contested = local
            .fixed
            .iter()
            .filter(|f| f.whole_blocks(&space))
            .flat_map(|f| f.blocks.iter())
            .filter_map(|&b| {
                let w = idx.winner(b)?;
                (w.peer != me).then(|| (space.block_net(b), w.peer))
            })
            .collect();
        let ours = IpamOwnStatus {
            used: local.allocs.len() as u64,
            free,
            pending: super::space::aggregate(&space, local.pending.keys().copied()),
            lost: local.lost().into_iter().map(Ipv4Addr::from).collect(),
            duplicates,
            exhausted: local.source != BlockSource::Undecided
                && free == 0
                && local.pending.is_empty()
                && !claimable,
            contested,
        };
        Ok(IpamStatus {
            range: space.range(),
            source: local.source.clone(),
            block_prefix_len: space.block_prefix_len,
            block_size: space.block_size(),
            blocks_total: space.block_count(),
            blocks_free,
            peers,
            ours,
            conflicts,
            mismatched,
            removed,
            unreachable_owners,
        })
    }
}
