//! Gossip message handling of the [`Mesh`]: announce/request/records, digests, rounds.
//!
//! Push of summaries, pull of records: a changed record is announced (as a summary) to
//! ~log2(n) random neighbours once per gossip interval; whoever lacks it requests it from
//! one announcer at a time; merged records are announced onwards. Anti-entropy: a full
//! digest goes to one random neighbour every `full_sync_interval` and to every new
//! neighbour; the receiver pulls what is newer there and announces back what is newer here.

use crate::gossip::{records_msg_len, request_len, summaries_msg_len};
use crate::mesh::{chan_index, CloseReason, ConnId, Mesh};
use crate::message::{Channel, Message, Summary};
use crate::peer::PeerName;
use crate::store::{record_size, Record, Store};
use rand::seq::{IndexedRandom, SliceRandom};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Records per response message stay under this many bytes (one record always fits).
const RESPONSE_BUDGET: usize = 1 << 20;

impl Mesh {
    fn request_timeout(&self) -> Duration {
        self.config.gossip_interval * 2 + Duration::from_millis(250)
    }

    fn fanout(&self) -> usize {
        let n = self.topo.len().max(1);
        (usize::BITS - (n - 1).leading_zeros()).max(1) as usize
    }

    pub(crate) fn on_message(&mut self, conn: ConnId, msg: Message, now: Instant) {
        self.stats.messages_received += 1;
        if !self.conns.contains_key(&conn) {
            self.stats.bytes_received += msg.encoded_len() as u64;
            return; // closed by us meanwhile
        }
        match msg {
            Message::Announce { channel, entries } => {
                self.stats.bytes_received += summaries_msg_len(&entries) as u64;
                self.on_offers(conn, channel, &entries, false, now);
            }
            Message::Digest { channel, entries } => {
                self.stats.bytes_received += summaries_msg_len(&entries) as u64;
                self.on_offers(conn, channel, &entries, true, now);
            }
            Message::Request { channel, origins } => {
                self.stats.bytes_received += request_len(&origins) as u64;
                let mut out = Vec::new();
                match channel {
                    Channel::Topology => respond(&self.topo, &origins, conn, &mut out),
                    Channel::Endpoints => respond(&self.eps, &origins, conn, &mut out),
                    Channel::Ipam => respond(&self.ipam.store, &origins, conn, &mut out),
                }
                for (c, m, len) in out {
                    self.send(c, m, len);
                }
            }
            Message::Topology(recs) => {
                let ok = self.on_records(conn, recs, now, |m| &mut m.topo);
                if !ok {
                    self.close(conn, CloseReason::Protocol, now);
                }
            }
            Message::Endpoints(recs) => {
                let ok = self.on_records(conn, recs, now, |m| &mut m.eps);
                if !ok {
                    self.close(conn, CloseReason::Protocol, now);
                }
            }
            Message::Ipam(recs) => {
                let ok = self.on_records(conn, recs, now, |m| &mut m.ipam.store);
                if !ok {
                    self.close(conn, CloseReason::Protocol, now);
                }
            }
        }
    }

    /// Announce or digest entries from `conn`.
    fn on_offers(
        &mut self,
        conn: ConnId,
        channel: Channel,
        entries: &[Summary],
        digest: bool,
        now: Instant,
    ) {
        if entries.len() > crate::message::MAX_ENTRIES {
            self.close(conn, CloseReason::Protocol, now);
            return;
        }
        let ci = chan_index(channel);
        let timeout = self.request_timeout();
        let me = self.me.name;
        let mut wanted = Vec::new();
        let mut back = Vec::new();
        let mut sorted_copy;
        let mut entries = entries;
        if !entries.is_sorted_by(|a, b| a.origin < b.origin) {
            sorted_copy = entries.to_vec();
            sorted_copy.sort_by_key(|s| s.origin);
            sorted_copy.dedup_by_key(|s| s.origin);
            entries = &sorted_copy;
        }
        let mut bump = None;
        {
            let ours: Vec<Summary> = if digest {
                self.summaries(channel)
            } else {
                Vec::new()
            };
            let mut ours_it = ours.iter().peekable();
            for s in entries {
                // ours that the sender lacks
                while let Some(o) = ours_it.next_if(|o| o.origin < s.origin) {
                    back.push(*o);
                }
                let mine = ours_it.next_if(|o| o.origin == s.origin);
                if s.origin == me {
                    let own = self.own_key(channel);
                    if own.is_none_or(|k| s.key() > k) {
                        bump = Some(s.version);
                    } else if let Some(o) = mine.filter(|o| o.key() > s.key()) {
                        back.push(*o);
                    }
                    continue;
                }
                // (IPAM: what we hold is raised to removal stamps, which no summary shows)
                let have = if digest && channel != Channel::Ipam {
                    mine.map(|o| o.key())
                } else {
                    self.key_of(channel, &s.origin)
                };
                if let Some(o) = mine {
                    if o.key() > s.key() {
                        back.push(*o);
                    }
                }
                if self.chan[ci].offer(s, have, conn, now, timeout) {
                    wanted.push(s.origin);
                }
            }
            back.extend(ours_it.copied());
        }
        if let Some(v) = bump {
            self.bump_own(channel, v);
        }
        if digest && channel == Channel::Ipam {
            self.ipam_note_digest();
        }
        if !wanted.is_empty() {
            let len = request_len(&wanted);
            self.send(
                conn,
                Message::Request {
                    channel,
                    origins: wanted,
                },
                len,
            );
        }
        if !back.is_empty() {
            let len = summaries_msg_len(&back);
            self.send(
                conn,
                Message::Announce {
                    channel,
                    entries: back,
                },
                len,
            );
        }
    }

    fn summaries(&self, channel: Channel) -> Vec<Summary> {
        match channel {
            Channel::Topology => self.topo.summaries(),
            Channel::Endpoints => self.eps.summaries(),
            Channel::Ipam => self.ipam.store.summaries(),
        }
    }

    fn key_of(&self, channel: Channel, origin: &PeerName) -> Option<crate::store::Key> {
        match channel {
            Channel::Topology => self.topo.key(origin),
            Channel::Endpoints => self.eps.key(origin),
            Channel::Ipam => self.ipam_key(origin),
        }
    }

    fn own_key(&self, channel: Channel) -> Option<crate::store::Key> {
        self.key_of(channel, &self.me.name)
    }

    /// Someone holds a record of ours with version `v` that beats our current one (an
    /// earlier incarnation, or an echo from the future): publish above it.
    fn bump_own(&mut self, channel: Channel, v: u64) {
        let ci = chan_index(channel);
        self.version_floor[ci] = self.version_floor[ci].max(v);
        match channel {
            Channel::Topology => self.topo_dirty = true,
            Channel::Endpoints => self.eps_dirty = true,
            Channel::Ipam => self.ipam_bump(),
        }
    }

    /// Merges records received from `conn`. Returns false on a protocol violation.
    fn on_records<R: Record>(
        &mut self,
        conn: ConnId,
        recs: Vec<Arc<R>>,
        now: Instant,
        store: fn(&mut Mesh) -> &mut Store<R>,
    ) -> bool {
        let ci = chan_index(R::CHANNEL);
        let me = self.me.name;
        let mut bytes = 0usize;
        let mut ok = recs.len() <= crate::message::MAX_ENTRIES;
        let count = recs.len();
        let mut bump = None;
        for rec in recs {
            let s = *rec.summary();
            let have = self.key_of(R::CHANNEL, &s.origin);
            let size_of = |st: &Store<R>, rec: &Arc<R>| match st.slot(&rec.summary().origin) {
                Some(slot) if Arc::ptr_eq(&slot.rec, rec) => slot.size,
                _ => record_size(&**rec),
            };
            if !ok {
                bytes += size_of(store(self), &rec);
                continue;
            }
            if s.origin == me {
                if have.is_none_or(|k| s.key() > k) {
                    bump = Some(bump.unwrap_or(0).max(s.version));
                }
                bytes += record_size(&*rec);
                continue;
            }
            if have.is_some_and(|k| k >= s.key()) || self.chan[ci].suppressed(&s) {
                if let Some(k) = have {
                    self.chan[ci].received(s.origin, k, conn, now);
                }
                bytes += size_of(store(self), &rec);
                continue;
            }
            if rec.check().is_err() {
                ok = false;
                bytes += record_size(&*rec);
                continue;
            }
            let st = store(self);
            let old = st.get(&s.origin).cloned();
            st.merge(rec.clone());
            bytes += size_of(st, &rec);
            if ci == 0 {
                self.reindex(old.as_ref().map_or(&[], |o| o.links()), rec.links());
            }
            self.chan[ci].received(s.origin, s.key(), conn, now);
            self.chan[ci].add_news(s, Some(conn));
            match R::CHANNEL {
                Channel::Topology => self.topology_touched(),
                Channel::Endpoints => self.changed[1] = true,
                Channel::Ipam => self.ipam_merged(s.origin),
            }
        }
        self.stats.bytes_received += records_msg_len(count, bytes) as u64;
        if let Some(v) = bump {
            self.bump_own(R::CHANNEL, v);
        }
        ok
    }

    /// Digests for new connections (both channels).
    pub(crate) fn send_pending_digests(&mut self) {
        for conn in std::mem::take(&mut self.pending_digests) {
            let live = self
                .conns
                .get(&conn)
                .is_some_and(|c| self.primary.get(&c.peer.name) == Some(&conn));
            if live {
                self.send_digests(conn);
            }
        }
    }

    fn send_digests(&mut self, conn: ConnId) {
        for channel in Channel::ALL {
            let entries = self.summaries(channel);
            // an empty IPAM digest still tells the other side it has synchronised
            let skip = match channel {
                Channel::Topology => false,
                Channel::Endpoints => entries.is_empty(),
                Channel::Ipam => entries.is_empty() && !self.ipam.enabled(),
            };
            if skip {
                continue;
            }
            let len = summaries_msg_len(&entries);
            self.send(conn, Message::Digest { channel, entries }, len);
        }
    }

    /// Anti-entropy with one random neighbour.
    pub(crate) fn full_sync(&mut self) {
        let conns: Vec<ConnId> = self.primary.values().copied().collect();
        if let Some(&c) = conns.choose(&mut self.rng) {
            self.send_digests(c);
        }
    }

    /// Announces news: changes of our own records to every neighbour (summaries are small,
    /// and random rumour-mongering alone can miss a peer until the next digest), others'
    /// news to ~log2(n) random neighbours.
    pub(crate) fn gossip_round(&mut self) {
        if self.chan.iter().all(|c| c.news.is_empty()) {
            return;
        }
        let mut conns: Vec<ConnId> = self.primary.values().copied().collect();
        let k = self.fanout().min(conns.len());
        let (chosen, _) = conns.partial_shuffle(&mut self.rng, k);
        let chosen: std::collections::BTreeSet<ConnId> = chosen.iter().copied().collect();
        conns.sort_unstable();
        let me = self.me.name;
        for channel in Channel::ALL {
            let ci = chan_index(channel);
            if self.chan[ci].news.is_empty() {
                continue;
            }
            for &c in &conns {
                let to = self.conns.get(&c).map(|x| x.peer.name);
                let random_pick = chosen.contains(&c);
                let entries: Vec<Summary> = self.chan[ci]
                    .news
                    .values()
                    .filter(|n| random_pick || n.summary.origin == me)
                    .filter(|n| n.from != Some(c) && Some(n.summary.origin) != to)
                    .map(|n| n.summary)
                    .collect();
                if entries.is_empty() {
                    continue;
                }
                let len = summaries_msg_len(&entries);
                self.send(c, Message::Announce { channel, entries }, len);
            }
            self.chan[ci].news.retain(|_, n| {
                n.rounds -= 1;
                n.rounds > 0
            });
        }
    }

    /// Re-requests records whose request timed out or whose source went away.
    pub(crate) fn request_retries(&mut self, now: Instant) {
        let timeout = self.request_timeout();
        for channel in Channel::ALL {
            let ci = chan_index(channel);
            let retries = match channel {
                Channel::Topology => {
                    let st = &self.topo;
                    self.chan[ci].retries(now, timeout, |o| st.key(o))
                }
                Channel::Endpoints => {
                    let st = &self.eps;
                    self.chan[ci].retries(now, timeout, |o| st.key(o))
                }
                Channel::Ipam => {
                    let (st, removed) = (&self.ipam.store, &self.ipam.removed);
                    self.chan[ci].retries(now, timeout, |o| {
                        let have = st.key(o);
                        match removed.get(o) {
                            Some(r) => Some(have.map_or(*r, |h| h.max(*r))),
                            None => have,
                        }
                    })
                }
            };
            let mut by_conn: std::collections::BTreeMap<ConnId, Vec<PeerName>> = Default::default();
            for (c, o) in retries {
                by_conn.entry(c).or_default().push(o);
            }
            for (c, origins) in by_conn {
                let len = request_len(&origins);
                self.send(c, Message::Request { channel, origins }, len);
            }
        }
    }
}

/// Answers a request with the records we have, in messages of bounded size.
fn respond<R: Record>(
    store: &Store<R>,
    origins: &[PeerName],
    conn: ConnId,
    out: &mut Vec<(ConnId, Message, usize)>,
) {
    let mut batch = Vec::new();
    let mut bytes = 0;
    for o in origins {
        let Some(slot) = store.slot(o) else { continue };
        if !batch.is_empty() && bytes + slot.size > RESPONSE_BUDGET {
            let len = records_msg_len(batch.len(), bytes);
            out.push((conn, R::message(std::mem::take(&mut batch)), len));
            bytes = 0;
        }
        batch.push(slot.rec.clone());
        bytes += slot.size;
    }
    if !batch.is_empty() {
        let len = records_msg_len(batch.len(), bytes);
        out.push((conn, R::message(batch), len));
    }
}
