//! Persistence across restarts: our claims, allocations and removals as bytes for the
//! driver to keep in `--state-dir`.
//!
//! Format: the 8 bytes `weftipam`, a format byte (1), then the postcard encoding of
//! [`Snapshot`]. A restored router owns its settled blocks at once (they were its own),
//! re-settles its pending claims, keeps its allocations, and publishes its record above
//! the saved version; records of its previous incarnation (same name, older uid) are the
//! same owner and never conflict with it. The block source ([`super::BlockSource`]) is
//! not saved: the driver sets it at every start, before or after the restore.

use super::alloc::AllocKey;
use super::space::IpamSpace;
use super::IpamError;
use crate::mesh::{chan_index, Mesh};
use crate::message::{Channel, Removal};
use crate::peer::{PeerName, PeerUid};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::time::Instant;

const MAGIC: &[u8; 8] = b"weftipam";
const FORMAT: u8 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    name: PeerName,
    /// The incarnation that wrote it, and its record version then.
    uid: PeerUid,
    version: u64,
    space: IpamSpace,
    settled: Vec<u32>,
    pending: Vec<u32>,
    allocs: Vec<SavedAlloc>,
    cursor: u32,
    /// Oldest first.
    removals: Vec<Removal>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedAlloc {
    key: AllocKey,
    ip: Ipv4Addr,
    pod: Option<String>,
}

fn bad(msg: impl Into<String>) -> IpamError {
    IpamError::Snapshot(msg.into())
}

impl Mesh {
    /// Our IPAM state as bytes (empty when IPAM is disabled). The driver writes it after
    /// every `Action::IpamChanged` and every successful allocation, release or GC, and
    /// hands it to [`Mesh::restore_ipam`] at the next start.
    pub fn ipam_snapshot(&self) -> Vec<u8> {
        let Some(local) = self.ipam.local.as_ref() else {
            return Vec::new();
        };
        let version = self
            .ipam
            .store
            .key(&self.me.name)
            .map_or(0, |k| k.0)
            .max(self.version_floor[chan_index(Channel::Ipam)]);
        let snap = Snapshot {
            name: self.me.name,
            uid: self.me.uid,
            version,
            space: local.space,
            settled: local.settled.iter().copied().collect(),
            pending: local.pending.keys().copied().collect(),
            allocs: local
                .allocs
                .iter()
                .map(|(k, e)| SavedAlloc {
                    key: k.clone(),
                    ip: Ipv4Addr::from(e.ip),
                    pod: e.pod.clone(),
                })
                .collect(),
            cursor: local.allocs.cursor,
            removals: local.removals.clone(),
        };
        let mut out = MAGIC.to_vec();
        out.push(FORMAT);
        out.extend(postcard::to_allocvec(&snap).expect("postcard encoding of plain data"));
        out
    }

    /// Restores a snapshot written by [`Mesh::ipam_snapshot`] of an earlier run. Call it
    /// right after [`Mesh::new`], before the first `handle`: our record is first published
    /// from the restored state. Fails (changing nothing) on a corrupt snapshot, one of
    /// another peer, or one of another range or block size.
    pub fn restore_ipam(&mut self, bytes: &[u8], now: Instant) -> Result<(), IpamError> {
        self.ipam.check()?;
        let local = self.ipam.local.as_ref().expect("checked");
        if !local.pristine() {
            return Err(IpamError::AlreadyStarted);
        }
        let body = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| bad("not a weft IPAM snapshot"))?;
        let (&format, body) = body.split_first().ok_or_else(|| bad("truncated"))?;
        if format != FORMAT {
            return Err(bad(format!("unsupported snapshot format {format}")));
        }
        let snap: Snapshot = postcard::from_bytes(body).map_err(|e| bad(e.to_string()))?;
        if snap.name != self.me.name {
            return Err(bad(format!(
                "the snapshot belongs to peer {}, this router is {}",
                snap.name, self.me.name
            )));
        }
        if snap.space != local.space {
            return Err(IpamError::RangeMismatch {
                configured: local.space.to_string(),
                saved: snap.space.to_string(),
            });
        }
        let space = local.space;
        let n = space.block_count();
        if snap.settled.iter().chain(&snap.pending).any(|&b| b >= n) {
            return Err(bad("block outside the range"));
        }
        let mut fresh = super::claims::Local::new(space, local.settle, local.started);
        fresh.synced = local.synced;
        fresh.settled = snap.settled.iter().copied().collect();
        fresh.pending = snap
            .pending
            .iter()
            .filter(|b| !fresh.settled.contains(b))
            .map(|&b| (b, now))
            .collect();
        for a in snap.allocs {
            let ip = u32::from(a.ip);
            if !space.usable(ip) {
                return Err(bad(format!("address {} outside the range", a.ip)));
            }
            if !fresh.allocs.insert(a.key, ip, a.pod) {
                return Err(bad(format!("address {} or its key twice", a.ip)));
            }
        }
        fresh.allocs.cursor = snap.cursor;
        for r in snap.removals.iter().filter(|r| r.peer != self.me.name) {
            fresh.add_removal(*r);
        }
        // the block source set before the restore wins over the saved blocks
        fresh
            .set_source(local.source.clone())
            .expect("the source was valid for this space");
        fresh.dirty = true;
        fresh.persist = true;
        self.ipam.local = Some(fresh);
        let ci = chan_index(Channel::Ipam);
        self.version_floor[ci] = self.version_floor[ci].max(snap.version);
        for r in snap.removals {
            self.ipam_note_removal(r);
        }
        self.ipam_step(now);
        Ok(())
    }
}
