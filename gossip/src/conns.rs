//! Connection events, dialling, discovery and garbage collection of the [`Mesh`].
//!
//! Duplicate connections to one peer: the one whose initiator has the smaller name is
//! kept, so both ends close the same one. Two connections with the same initiator: the
//! initiator keeps its older one and closes the newer; the other end keeps both until that
//! close arrives. A connection from a new incarnation of a peer (new uid) replaces the old,
//! unless it is the second of two live routers with one name (`crate::names`).
//!
//! Discovery dials peers learned from gossip while we have fewer than three quarters of
//! `conn_limit` connections, and only peers that report fewer than that themselves: the
//! last quarter stays free for configured (`--peer`) connections of joining peers. Should
//! a peer be full anyway, an inbound connection from a newcomer (a peer no record reports
//! connected) replaces one of its connections to a peer that has others (not one of its
//! configured targets), so that a joining peer is never locked out of a full mesh.

use crate::mesh::{chan_index, Action, CloseReason, Conn, ConnId, Failure, Mesh};
use crate::message::{Channel, ConnRecord};
use crate::peer::{Identity, PeerName};
use crate::routes::reachable_outward;
use crate::targets::Budget;
use rand::seq::SliceRandom;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long garbage-collected records are not fetched again (same incarnation).
pub(crate) const TOMBSTONE_TTL: Duration = Duration::from_secs(60);

impl Mesh {
    /// Connections up to which discovery dials.
    pub(crate) fn discovery_limit(&self) -> usize {
        let l = self.config.conn_limit;
        l - l / 4
    }

    pub(crate) fn on_established(
        &mut self,
        conn: ConnId,
        addr: SocketAddr,
        outbound: bool,
        peer: Identity,
        now: Instant,
    ) {
        if self.conns.contains_key(&conn) {
            return; // driver repeated itself
        }
        if peer.name == self.me.name {
            if peer.uid != self.me.uid {
                // Not us: another router with our name.
                self.names
                    .ours(self.me.name, self.me.uid, peer.uid, addr, now);
                self.out.push(Action::Close {
                    conn,
                    reason: CloseReason::SameNameAsUs,
                });
                return;
            }
            if outbound {
                self.targets.mark_self(addr);
            }
            self.out.push(Action::Close {
                conn,
                reason: CloseReason::SelfConnection,
            });
            return;
        }
        self.names.seen(peer.name, peer.uid, now);
        if let Some(old) = self.primary.get(&peer.name).and_then(|c| self.conns.get(c)) {
            if old.peer.uid != peer.uid {
                let verdict = self.names.new_incarnation(
                    peer.name,
                    old.peer.uid,
                    peer.uid,
                    addr,
                    old.addr,
                    now,
                );
                if verdict == crate::names::Verdict::Refuse {
                    self.out.push(Action::Close {
                        conn,
                        reason: CloseReason::DuplicateName,
                    });
                    return;
                }
            }
        }
        if !outbound && self.conn_count() >= self.config.conn_limit {
            // At the limit, a peer nobody reports connected (a newcomer) still gets in:
            // we drop one of our redundant discovered connections for it.
            if self.needy(&peer.name) {
                if let Some(victim) = self.evictable() {
                    self.close(victim, CloseReason::ConnLimit, now);
                }
            }
        }
        if !outbound && self.conn_count() >= self.config.conn_limit {
            self.out.push(Action::Close {
                conn,
                reason: CloseReason::ConnLimit,
            });
            return;
        }
        if outbound {
            self.targets
                .on_established(addr, conn, peer.name, &peer.nickname, now);
        }
        let name = peer.name;
        let new_initiator = if outbound { self.me.name } else { name };
        self.conns.insert(
            conn,
            Conn {
                peer: peer.clone(),
                addr,
                outbound,
            },
        );
        for c in &mut self.chan {
            c.clear_tombstone(&name);
        }
        let Some(&old) = self.primary.get(&name) else {
            self.make_primary(name, conn);
            return;
        };
        let old_c = &self.conns[&old];
        let old_initiator = if old_c.outbound { self.me.name } else { name };
        if old_c.peer.uid != peer.uid {
            // the peer restarted: its old connection is dead
            self.close(old, CloseReason::Duplicate, now);
            self.make_primary(name, conn);
        } else if new_initiator != old_initiator {
            if new_initiator < old_initiator {
                self.close(old, CloseReason::Duplicate, now);
                self.make_primary(name, conn);
            } else {
                self.close(conn, CloseReason::Duplicate, now);
            }
        } else if new_initiator == self.me.name {
            // both ours: keep the older
            self.close(conn, CloseReason::Duplicate, now);
        }
        // else both dialled by the peer: it closes one of them; keep `old` as primary
    }

    /// A peer not connected to us that no record reports connected: without us it may
    /// have no way into the mesh.
    fn needy(&self, peer: &PeerName) -> bool {
        !self.primary.contains_key(peer) && !self.inref.contains_key(peer)
    }

    /// The connection we give up for a newcomer when at the limit: never one of our
    /// configured targets, only one to a peer that reports other connections; one we
    /// dialled through discovery first, then the peer with the most connections.
    pub(crate) fn evictable(&self) -> Option<ConnId> {
        self.primary
            .iter()
            .filter_map(|(p, id)| {
                let c = self.conns.get(id)?;
                let t = self.targets.get(&c.addr).filter(|t| t.conn == Some(*id));
                if t.is_some_and(|t| t.configured) {
                    return None;
                }
                let degree = self.topo.get(p).map_or(0, |r| r.connections.len());
                let discovered = t.is_some_and(|t| t.discovered);
                (degree > 1).then_some((discovered, degree, std::cmp::Reverse(*id)))
            })
            .max()
            .map(|(_, _, std::cmp::Reverse(id))| id)
    }

    fn make_primary(&mut self, name: PeerName, conn: ConnId) {
        self.primary.insert(name, conn);
        self.pending_digests.push(conn);
        self.topo_dirty = true;
        self.topology_touched();
    }

    /// Forgets connection `conn` (closed by us or by the peer).
    fn drop_conn(&mut self, conn: ConnId, failure: Option<&Failure>, now: Instant) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        for ch in &mut self.chan {
            ch.conn_closed(conn, now);
        }
        let name = c.peer.name;
        if self.primary.get(&name) == Some(&conn) {
            let other = self
                .conns
                .iter()
                .find(|(_, o)| o.peer.name == name)
                .map(|(id, _)| *id);
            match other {
                Some(id) => {
                    self.primary.insert(name, id);
                    self.pending_digests.push(id);
                }
                None => {
                    self.primary.remove(&name);
                    let initial = self.config.backoff_initial;
                    self.targets.delay_peer(name, now, &mut self.rng, initial);
                }
            }
            self.topo_dirty = true;
            self.topology_touched();
        }
        if c.outbound
            && self
                .targets
                .get(&c.addr)
                .is_some_and(|t| t.conn == Some(conn))
        {
            let (initial, max) = (self.config.backoff_initial, self.config.backoff_max);
            match failure {
                Some(f) => {
                    self.targets
                        .on_failed(c.addr, &f.detail, now, &mut self.rng, initial, max)
                }
                None => self
                    .targets
                    .on_closed_clean(c.addr, now, &mut self.rng, initial),
            }
        }
    }

    pub(crate) fn close(&mut self, conn: ConnId, reason: CloseReason, now: Instant) {
        self.drop_conn(conn, None, now);
        self.out.push(Action::Close { conn, reason });
    }

    pub(crate) fn on_closed(&mut self, conn: ConnId, reason: Option<Failure>, now: Instant) {
        if reason
            .as_ref()
            .is_some_and(|r| r.kind == crate::FailKind::DuplicateName)
        {
            let addr = self.conns.get(&conn).map(|c| c.addr);
            self.names.refused_here(addr, now);
        }
        self.drop_conn(conn, reason.as_ref(), now);
    }

    pub(crate) fn on_connect_failed(&mut self, addr: SocketAddr, failure: Failure, now: Instant) {
        if failure.kind == crate::FailKind::DuplicateName {
            self.names.refused_here(Some(addr), now);
        }
        let (initial, max) = (self.config.backoff_initial, self.config.backoff_max);
        self.targets
            .on_failed(addr, &failure.detail, now, &mut self.rng, initial, max);
    }

    /// Dials the targets that are due, within the connection limits.
    pub(crate) fn dial(&mut self, now: Instant) {
        if !self.targets.needs_pass(now) {
            return;
        }
        let used = self.conn_count();
        let budget = Budget {
            total: self.config.conn_limit.saturating_sub(used),
            discovered: self.discovery_limit().saturating_sub(used),
        };
        let (primary, topo) = (&self.primary, &self.topo);
        let (limit, dlimit) = (self.config.conn_limit, self.discovery_limit());
        let connected = !primary.is_empty();
        let blocked = |p: PeerName, configured: bool| {
            if primary.contains_key(&p) {
                return Some("peer already connected");
            }
            // a peer reporting a full house refuses us: wait until it has room (a
            // configured one only while we are connected to the mesh some other way)
            let degree = topo.get(&p).map_or(0, |r| r.connections.len());
            let full = if configured {
                connected && degree >= limit
            } else {
                degree >= dlimit
            };
            full.then_some("peer at its connection limit")
        };
        let addrs = self.targets.pass(now, budget, &mut self.rng, blocked);
        self.out
            .extend(addrs.into_iter().map(|addr| Action::Connect { addr }));
    }

    /// Whether a discovery pass could add anything.
    pub(crate) fn discovery_wanted(&self) -> bool {
        self.config.discovery
            && self.discovery_dirty
            && self.conn_count() < self.discovery_limit()
            && self.topo.len() > self.primary.len() + 1
    }

    /// An address `peer` listens on, from other peers' records of connections with it:
    /// preferably one they dialled.
    fn address_of(&self, peer: PeerName) -> Option<SocketAddr> {
        let rec = self.topo.get(&peer)?;
        let mut fallback = None;
        for c in rec.connections.iter().take(32) {
            let Some(other) = self.topo.get(&c.peer) else {
                continue;
            };
            if let Ok(i) = other.connections.binary_search_by(|x| x.peer.cmp(&peer)) {
                let ConnRecord { addr, outbound, .. } = other.connections[i];
                if outbound {
                    return Some(addr);
                }
                fallback.get_or_insert(addr);
            }
        }
        fallback
    }

    /// Adds discovered targets for peers we are not connected to, as many as we may dial.
    pub(crate) fn discover(&mut self, now: Instant) {
        self.discovery_dirty = false;
        self.next_discovery = now + self.config.gossip_interval;
        let limit = self.discovery_limit();
        let mut budget = limit.saturating_sub(self.conn_count());
        let known = self.targets.peers();
        let mut candidates: Vec<PeerName> = self
            .topo
            .iter()
            .filter(|(p, slot)| {
                **p != self.me.name
                    && !self.primary.contains_key(p)
                    && !known.contains(p)
                    && slot.rec.connections.len() < limit
            })
            .map(|(p, _)| *p)
            .collect();
        candidates.shuffle(&mut self.rng);
        for p in candidates {
            if budget == 0 {
                break;
            }
            let Some(addr) = self.address_of(p) else {
                continue;
            };
            if self
                .targets
                .get(&addr)
                .is_some_and(|t| t.state == crate::mesh::TargetState::IsSelf)
            {
                continue;
            }
            if self.targets.add_discovered(addr, p, now) {
                budget -= 1;
            }
        }
    }

    /// Updates reference counts for a topology record replaced (`old` -> `new`).
    pub(crate) fn reindex(&mut self, old: &[ConnRecord], new: &[ConnRecord]) {
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < new.len() {
            let ord = match (old.get(i), new.get(j)) {
                (Some(a), Some(b)) => a.peer.cmp(&b.peer),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match ord {
                std::cmp::Ordering::Less => {
                    if let Some(c) = self.inref.get_mut(&old[i].peer) {
                        *c -= 1;
                        if *c == 0 {
                            self.inref.remove(&old[i].peer);
                        }
                    }
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    *self.inref.entry(new[j].peer).or_insert(0) += 1;
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    i += 1;
                    j += 1;
                }
            }
        }
    }

    /// Forgets peers unreachable from us for longer than `gc_grace`.
    pub(crate) fn collect_garbage(&mut self, now: Instant) {
        for c in &mut self.chan {
            c.expire_tombstones(now, TOMBSTONE_TTL);
        }
        if !self.gc_dirty && self.unreachable_since.is_empty() {
            return; // nothing changed, nobody waiting to be collected
        }
        self.gc_dirty = false;
        let me = self.me.name;
        let mine: Vec<PeerName> = self.primary.keys().copied().collect();
        let expect = self
            .topo
            .origins()
            .filter(|p| **p == me || self.primary.contains_key(p) || self.inref.contains_key(p))
            .count();
        let reach = reachable_outward(me, &mine, &self.topo, expect);
        let lost = |p: &PeerName| !reach.contains(p);
        let mut unreachable: Vec<PeerName> =
            self.topo.origins().filter(|p| lost(p)).copied().collect();
        unreachable.extend(
            self.eps
                .origins()
                .filter(|p| lost(p) && !self.topo.contains(p)),
        );
        unreachable.sort_unstable();
        let before = std::mem::take(&mut self.unreachable_since);
        let mut doomed = Vec::new();
        for p in unreachable {
            let since = before.get(&p).copied().unwrap_or(now);
            if now.saturating_duration_since(since) >= self.config.gc_grace {
                doomed.push(p);
            } else {
                self.unreachable_since.insert(p, since);
            }
        }
        for p in doomed {
            if let Some(r) = self.topo.remove(&p) {
                self.reindex(&r.connections, &[]);
                self.chan[chan_index(Channel::Topology)].tombstone(&r.summary, now);
                self.topology_touched();
            }
            if let Some(r) = self.eps.remove(&p) {
                self.chan[chan_index(Channel::Endpoints)].tombstone(&r.summary, now);
                self.changed[1] = true;
            }
            self.targets.forget_peer(p);
            self.names.forget(&p);
        }
    }
}
