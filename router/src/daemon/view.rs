//! The status snapshot the router publishes: connections with their path, MTU and reason,
//! peers, IPAM, readiness, and the metrics that follow from it.

use super::*;

impl Loop {
    /// The MTU new pods get follows the confirmed paths (unless --mtu fixed it): it must fit
    /// every one of them (the sleeve answers bigger DF packets with ICMP "fragmentation
    /// needed" anyway). Both paths count: the sleeve's overhead is the larger today, but a
    /// pod may use either path to a peer over the same underlay path.
    pub(super) fn refresh_pod_mtu(&mut self) {
        if self.cfg.mtu_fixed {
            return;
        }
        let fp = self.fastpath.view();
        let fits = self
            .dataplane
            .sessions_by_peer()
            .into_values()
            .filter(|s| s.confirmed)
            .map(|s| {
                let vxlan = crate::fastpath::inner_mtu(
                    s.path_mtu,
                    fp.overhead > crate::fastpath::VXLAN_OVERHEAD,
                );
                u32::from(s.inner_mtu).min(if fp.off.is_none() { vxlan } else { u32::MAX })
            });
        self.pods.core.mtu = crate::pods::pod_mtu(self.cfg.mtu, fits);
    }

    pub(super) fn status(&mut self, mesh: &mut Mesh, now: Instant) -> Status {
        self.inbound_failures
            .retain(|_, (_, t)| now.duration_since(*t) < INBOUND_FAILURE_TTL);
        let me = mesh.identity().clone();
        let connections = self.connection_rows(mesh, now);
        let peers = mesh
            .peers()
            .into_iter()
            .map(|p| PeerInfo {
                name: p.name.to_string(),
                nickname: p.nickname,
                uid: p.uid.to_string(),
                connections: p.connections,
                reachable: p.reachable || p.name == me.name,
                next_hop: p.next_hop.map(|n| n.to_string()),
            })
            .collect();
        Status {
            uptime_secs: now.duration_since(self.started).as_secs(),
            peers,
            connections,
            ipam: self.ipam_info(mesh, now),
            pod_mtu: self.pods.core.mtu,
            identity_conflicts: mesh
                .name_conflicts(now)
                .into_iter()
                .map(|c| crate::status::IdentityConflict {
                    name: c.name.to_string(),
                    ours: c.name == me.name,
                    kept_uid: c.kept.to_string(),
                    refused_uid: c.refused.to_string(),
                    refused_address: c.refused_addr.to_string(),
                    refusals: c.refusals,
                    since_secs: now.saturating_duration_since(c.since).as_secs(),
                })
                .collect(),
            refused_as_duplicate: mesh.refused_as_duplicate(now).map(|r| {
                crate::status::RefusedAsDuplicate {
                    name: me.name.to_string(),
                    refusals: r.refusals,
                    since_secs: now.saturating_duration_since(r.since).as_secs(),
                    last_refused_by: r.by.map(|a| a.to_string()),
                }
            }),
            endpoints: mesh
                .endpoints()
                .into_iter()
                .map(|(owner, e)| crate::status::EndpointInfo {
                    owner: owner.to_string(),
                    mac: weft_types::Mac(e.mac).to_string(),
                    ips: e.ips.iter().map(|i| i.to_string()).collect(),
                    pod: e.pod,
                })
                .collect(),
            ..base_status(&self.cfg, &self.transport)
        }
    }

    /// One row per connection the mesh knows (duplicates of an established one and
    /// ourselves left out), then the recent inbound handshake failures.
    fn connection_rows(&self, mesh: &mut Mesh, now: Instant) -> Vec<ConnInfo> {
        let encrypted = self.cfg.psk.is_some();
        let mtu = self.cfg.mtu;
        let sessions = self.dataplane.sessions_by_peer();
        let fp = self.fastpath.view();
        let next_hops: HashMap<PeerName, PeerName> = mesh
            .peers()
            .into_iter()
            .filter_map(|p| Some((p.name, p.next_hop?)))
            .collect();
        let mut connections: Vec<ConnInfo> = Vec::new();
        let all = mesh.connections(now);
        let established = || all.iter().filter(|c| c.state == TargetState::Established);
        let connected: std::collections::BTreeSet<_> =
            established().filter_map(|c| c.peer).collect();
        let connected_addrs: std::collections::BTreeSet<_> =
            established().map(|c| c.addr).collect();
        for c in all {
            // A second path to a peer we are connected to (a dial racing its inbound
            // connection, another address of it): the duplicate is resolved by the mesh.
            let duplicate = c.state != TargetState::Established
                && (connected_addrs.contains(&c.addr)
                    || c.peer.is_some_and(|p| connected.contains(&p)));
            let state = match c.state {
                _ if duplicate => continue,
                TargetState::Established => ConnState::Established,
                TargetState::Connecting => ConnState::Connecting,
                TargetState::Failed => ConnState::Failed,
                // Ourselves: nothing to show. An idle target of an unconnected peer waits
                // for the connection limit: a failure to connect, with its reason.
                TargetState::IsSelf => continue,
                TargetState::Idle => ConnState::Failed,
            };
            let (path, path_mtu, path_reason) = self.path_of(&c, state, &sessions, &next_hops, &fp);
            connections.push(ConnInfo {
                peer: c.peer.map(|p| p.to_string()),
                nickname: c.nickname.clone(),
                address: c.addr.to_string(),
                state,
                outbound: c.outbound,
                path,
                encrypted: encrypted && (state == ConnState::Established || path_mtu.is_some()),
                mtu: path_mtu.map_or(mtu, u32::from),
                reason: c.reason.clone().or(path_reason),
                attempts: c.attempts,
                retry_in_ms: c.retry_in.map(|d| d.as_millis() as u64),
                source: match c.source {
                    TargetSource::Configured => "configured",
                    TargetSource::Discovered => "discovered",
                    TargetSource::Inbound => "inbound",
                }
                .to_string(),
            });
        }
        for (addr, (reason, _)) in &self.inbound_failures {
            connections.push(ConnInfo {
                peer: None,
                nickname: None,
                address: addr.to_string(),
                state: ConnState::Failed,
                outbound: false,
                path: None,
                encrypted: false,
                mtu,
                reason: Some(reason.clone()),
                attempts: 1,
                retry_in_ms: None,
                source: "inbound".to_string(),
            });
        }
        connections
    }

    /// The data path towards a connection's peer: the sleeve over this connection, a relay
    /// through another peer when this connection is down, or none. Returns the path, its
    /// inner MTU and why.
    fn path_of(
        &self,
        c: &weft_gossip::ConnectionStatus,
        state: ConnState,
        sessions: &HashMap<u64, SessionInfo>,
        next_hops: &HashMap<PeerName, PeerName>,
        fp: &crate::fastpath::FastpathView,
    ) -> (Option<String>, Option<u16>, Option<String>) {
        let Some(peer) = c.peer else {
            return (None, None, None);
        };
        if state == ConnState::Established {
            let health = fp.peers.get(&peer.as_u64());
            if let Some(h) = health.filter(|h| h.path == weft_fastpath::health::Path::Fastpath) {
                let mtu = u16::try_from(fp.mtu).unwrap_or(u16::MAX);
                return (Some("fastpath".into()), Some(mtu), Some(h.reason.clone()));
            }
            // Why not the fastpath: the whole node's reason, else a path too small for its
            // frames, else this peer's health.
            let shortfall = sessions
                .get(&peer.as_u64())
                .filter(|s| s.confirmed)
                .and_then(|s| crate::fastpath::mtu_shortfall(fp, s.path_mtu));
            let why_not = fp
                .off
                .clone()
                .or(shortfall)
                .or_else(|| {
                    health.map(|h| {
                        let state = format!("{:?}", h.state).to_lowercase();
                        format!("fastpath {state}: {}", h.reason)
                    })
                })
                .unwrap_or_else(|| "fastpath not probed yet".into());
            return match sessions.get(&peer.as_u64()) {
                Some(s) => (
                    Some("sleeve".into()),
                    Some(s.inner_mtu),
                    Some(format!(
                        "sleeve ({why_not}); path MTU {} {}",
                        s.path_mtu,
                        if s.confirmed {
                            "confirmed"
                        } else {
                            "being probed"
                        }
                    )),
                ),
                None => (None, None, self.dataplane.unavailable.clone()),
            };
        }
        match next_hops.get(&peer) {
            Some(hop) if *hop != peer => {
                let inner = sessions.get(&hop.as_u64()).map(|s| s.inner_mtu);
                let why = format!("relayed through {hop}: no direct connection");
                (Some("relay".into()), inner, Some(why))
            }
            _ => (None, None, None),
        }
    }

    fn ipam_info(&self, mesh: &Mesh, now: Instant) -> IpamInfo {
        let me = mesh.identity();
        let mut info = IpamInfo {
            range: self.cfg.ipalloc_range.to_string(),
            gateway: match &self.pods.core.gateway {
                Gateway::Ready(n) | Gateway::Setting(n) => Some(n.to_string()),
                Gateway::Failed(n, e) => Some(format!("{n} (not set: {e})")),
                Gateway::Waiting(_) => None,
            },
            ..Default::default()
        };
        let st = match mesh.ipam_status(now) {
            Ok(st) => st,
            Err(e) => {
                info.error = Some(e.to_string());
                return info;
            }
        };
        let names = Names::of(mesh);
        info.block_size = st.block_size;
        info.blocks_total = st.blocks_total;
        info.blocks_free = st.blocks_free;
        info.used = st.ours.used;
        info.free = st.ours.free;
        let cidrs = |v: &[ipnet::Ipv4Net]| v.iter().map(|n| n.to_string()).collect();
        info.peers = st
            .peers
            .iter()
            .map(|p| IpamPeerInfo {
                name: p.name.to_string(),
                nickname: p.nickname.clone(),
                blocks: cidrs(&p.blocks),
                pending: cidrs(&p.pending),
                addresses: p.addresses,
                reachable: p.reachable || p.is_self,
            })
            .collect();
        info.unreachable_owners = st
            .unreachable_owners
            .iter()
            .map(|n| names.label(*n))
            .collect();
        info.removed = st.removed.iter().map(|n| n.to_string()).collect();
        ipam_problems(&st, me.name, &names, &mut info);
        info
    }

    /// Why this router is not ready yet (see `Status::not_ready`), from its status.
    pub(super) fn not_ready(&self, st: &Status) -> Option<String> {
        if let Some(g) = st.pod_guard.as_ref().filter(|g| !g.ok) {
            return Some(format!(
                "the pod guard is not in force: {}",
                g.error.as_deref().unwrap_or("not applied yet")
            ));
        }
        if let Some(r) = &st.refused_as_duplicate {
            return Some(r.describe());
        }
        if !matches!(self.pods.core.gateway, Gateway::Ready(_)) {
            return Some(format!(
                "the node's pod gateway is not set up yet ({})",
                ipam_summary_for_readiness(&st.ipam)
            ));
        }
        if st.kube.as_ref().is_some_and(|k| !k.synced) {
            return Some("the Kubernetes API caches are not synced yet".into());
        }
        if !self.peers_resolved {
            return Some("resolving the --peer addresses".into());
        }
        // Peers we know of (configured, discovered, other Nodes) but not one connection: a
        // router that cannot join the mesh (wrong password, unreachable, incompatible) must
        // not let a rolling update move on to the next node.
        let (established, _, _) = st.connection_counts();
        let known = st
            .connections
            .iter()
            .filter(|c| c.source != "inbound")
            .count();
        if established == 0 && known > 0 {
            let why = st
                .connections
                .iter()
                .find_map(|c| c.reason.clone())
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            return Some(format!(
                "no connection established to any of {known} known peers{why}"
            ));
        }
        None
    }

    pub(super) fn update_metrics(&self, mesh: &Mesh, st: &Status) {
        let count = |s: ConnState| st.connections.iter().filter(|c| c.state == s).count() as i64;
        self.metrics.set_connection_counts(
            count(ConnState::Established),
            count(ConnState::Connecting),
            count(ConnState::Failed),
        );
        self.metrics.set_peers(st.peers.len() as i64);
        self.metrics
            .ipam_conflicting_addresses
            .set(st.ipam.conflicting_addresses as i64);
        self.metrics.identity_conflicts.set(
            (st.identity_conflicts.len() + usize::from(st.refused_as_duplicate.is_some())) as i64,
        );
        if let Some(g) = &st.pod_guard {
            self.metrics.set_guard_drops(&g.drops);
        }
        // The sleeve counters are read at every scrape (Metrics::watch_sleeve).
        let s = mesh.stats();
        self.metrics.set_gossip_totals(
            s.bytes_sent,
            s.messages_sent,
            s.bytes_received,
            s.messages_received,
        );
    }
}

/// What readiness says while the pod gateway is missing.
fn ipam_summary_for_readiness(ipam: &IpamInfo) -> String {
    match ipam.error.as_ref().or(ipam.problems.first()) {
        Some(p) => p.clone(),
        None => format!("waiting for an address block of {}", ipam.range),
    }
}

/// Peer labels (`name(nickname)`) and the pods holding this node's addresses, for the IPAM
/// lines of the status.
struct Names {
    nicknames: BTreeMap<PeerName, String>,
    pods_here: BTreeMap<std::net::Ipv4Addr, String>,
}

impl Names {
    fn of(mesh: &Mesh) -> Self {
        Names {
            nicknames: mesh
                .peers()
                .into_iter()
                .map(|p| (p.name, p.nickname))
                .collect(),
            pods_here: mesh
                .ipam_allocations()
                .into_iter()
                .map(|(k, a)| (a.ip, a.pod.unwrap_or(k.container_id)))
                .collect(),
        }
    }

    fn label(&self, n: PeerName) -> String {
        match self.nicknames.get(&n) {
            Some(nick) => format!("{n}({nick})"),
            None => n.to_string(),
        }
    }

    /// The pods holding these addresses (the first few), so that the operator can delete
    /// them (their controllers recreate them with new addresses).
    fn pods_of(&self, ips: &[std::net::Ipv4Addr]) -> String {
        const SHOWN: usize = 8;
        let mut v: Vec<String> = ips
            .iter()
            .filter_map(|ip| self.pods_here.get(ip).map(|p| format!("{p} ({ip})")))
            .collect();
        if v.len() > SHOWN {
            let more = v.len() - SHOWN;
            v.truncate(SHOWN);
            v.push(format!("+{more} more"));
        }
        v.join(", ")
    }
}

/// The IPAM problems an operator must see: addresses held twice after a partition, peers
/// with another range, contested blocks, an exhausted range.
fn ipam_problems(st: &weft_gossip::IpamStatus, me: PeerName, names: &Names, info: &mut IpamInfo) {
    for c in &st.conflicts {
        info.conflicting_addresses += c.addresses.len() as u64;
        let owner = c.owner.map_or("nobody".to_string(), |n| names.label(n));
        let line = if c.holder == me {
            format!(
                    "{} pod address(es) of this node are in block {}, which {owner} won after a partition: another pod may have the same address; delete these pods (their controllers recreate them with new addresses): {}",
                    c.addresses.len(),
                    c.block,
                    names.pods_of(&c.addresses)
                )
        } else {
            format!(
                    "{} still holds {} address(es) in block {} now owned by {owner} (two pods may share an address; its status names the pods to delete)",
                    names.label(c.holder),
                    c.addresses.len(),
                    c.block,
                )
        };
        info.conflicts.push(line.clone());
        info.problems.push(line);
    }
    for m in &st.mismatched {
        info.problems.push(format!(
            "{} uses range {} with /{} blocks; this router uses {}",
            names.label(m.peer),
            m.range,
            m.block_prefix_len,
            st.range
        ));
    }
    for (block, peer) in &st.ours.contested {
        info.problems.push(format!(
                "block {block} of this node's pod CIDR is also claimed by {}: an address may be handed out twice",
                names.label(*peer)
            ));
    }
    if !st.ours.duplicates.is_empty() {
        let line = format!(
                "{} address(es) of pods on this node are also held by a pod on the other side of a healed partition (that node's status names the pods to delete; new pods never get them): {}",
                st.ours.duplicates.len(),
                names.pods_of(&st.ours.duplicates)
            );
        info.conflicts.push(line.clone());
        info.problems.push(line);
    }
    if st.ours.exhausted {
        info.problems
            .push("the range is exhausted: new pods cannot get an address".to_string());
    }
}

/// The parts of the status that come from configuration; the loop adds the live view.
pub(super) fn base_status(cfg: &RouterConfig, t: &Transport) -> Status {
    config_status(cfg, t.local_addr().to_string())
}

/// The status of a router that runs no mesh yet: its identity and settings (`listen`: the
/// control address it is or will be bound to). Also what `crate::startup` serves while it
/// waits for the password.
pub(crate) fn config_status(cfg: &RouterConfig, listen: String) -> Status {
    Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        name: cfg.identity.name.to_string(),
        nickname: cfg.identity.nickname.clone(),
        uid: cfg.identity.uid.to_string(),
        encryption: cfg.psk.is_some(),
        protocol: weft_gossip::PROTOCOL_VERSION,
        listen,
        uptime_secs: 0,
        conn_limit: cfg.mesh.conn_limit,
        discovery: cfg.mesh.discovery,
        targets: cfg
            .peers
            .iter()
            .map(|p| format!("{}:{}", p.host, p.port))
            .collect(),
        peers: Vec::new(),
        connections: Vec::new(),
        ipam: IpamInfo {
            range: cfg.ipalloc_range.to_string(),
            ..Default::default()
        },
        pod_mtu: cfg.mtu,
        endpoints: Vec::new(),
        policy: None,
        kube: None,
        identity_conflicts: Vec::new(),
        refused_as_duplicate: None,
        pod_guard: None,
        // Until the loop publishes its first snapshot (which says why, or None once ready),
        // /readyz must not answer 200: a probe between the mesh's start and that snapshot
        // would otherwise see a router with no gateway as ready.
        not_ready: Some("starting: the first status snapshot is not built yet".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        router: crate::cli::RouterArgs,
    }

    #[test]
    fn the_status_served_before_the_first_snapshot_is_not_ready() {
        let args = Cli::try_parse_from(["weft", "--name", "02:00:00:00:00:01"])
            .unwrap()
            .router;
        let cfg = RouterConfig::from_args_except_password(&args).unwrap();
        let st = config_status(&cfg, "127.0.0.1:6783".into());
        assert!(!st.is_placeholder(), "it names the router");
        let why = st.not_ready.expect("not ready before the first snapshot");
        assert!(why.contains("starting"), "{why}");
    }
}
