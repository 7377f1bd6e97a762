//! The router's side of pods: the node bridge and its gateway address, the CNI requests
//! (allocate, attach, release, check, GC) answered from the mesh's IPAM, and the local
//! endpoint table (persisted in `--state-dir`, gossiped on the endpoints channel).
//!
//! Everything here runs inside the event loop (it holds `&mut Mesh`); slow work (netlink,
//! nft) is spawned and reports back.

use crate::api::{
    code, AddOutcome, AddReply, ApiCommand, ApiError, Attachment, GcReply, Reply, RmPeerReply,
};
use crate::state::{self, LocalEndpoint};
use ipnet::Ipv4Net;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tracing::{info, warn};
use weft_gossip::ipam::{AllocKey, IpamError};
use weft_gossip::{Action, Endpoint, Mesh};

/// The allocation key of the node's own bridge address.
pub const GATEWAY_KEY: (&str, &str) = ("weft:gateway", "weft");
/// How soon an ADD is retried while the gateway is not up yet.
const NOT_READY_RETRY: Duration = Duration::from_millis(200);

/// Where the gateway address stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gateway {
    /// Not allocated yet (IPAM claiming a block); ask again at the instant.
    Waiting(Instant),
    /// Allocated; being set on the bridge.
    Setting(Ipv4Net),
    /// On the bridge: pods can be added.
    Ready(Ipv4Net),
    /// Setting it failed; retried on the next tick.
    Failed(Ipv4Net, String),
}

pub struct Pods {
    pub bridge: String,
    pub mtu: u32,
    pub state_dir: PathBuf,
    pub gateway: Gateway,
    pub endpoints: state::Endpoints,
    /// The local endpoints changed: the pod guard must follow ([`Pods::guard_ports`]).
    pub guard_dirty: bool,
    /// Attachments waiting for their port's guard before the plugin is told they are done.
    pub guard_waiters: Vec<Reply<()>>,
}

fn key(a: &Attachment) -> AllocKey {
    AllocKey::new(a.container_id.clone(), a.ifname.clone())
}

fn gateway_key() -> AllocKey {
    AllocKey::new(GATEWAY_KEY.0, GATEWAY_KEY.1)
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl Pods {
    pub fn new(bridge: String, mtu: u32, state_dir: PathBuf, endpoints: state::Endpoints) -> Self {
        Pods {
            bridge,
            mtu,
            state_dir,
            gateway: Gateway::Waiting(Instant::now()),
            endpoints,
            guard_dirty: true,
            guard_waiters: Vec::new(),
        }
    }

    /// The pod ports to guard: every local endpoint's host port, MAC and addresses.
    pub fn guard_ports(&self) -> Vec<weft_policy::guard::PodPort> {
        self.endpoints
            .values()
            .filter_map(|e| {
                Some(weft_policy::guard::PodPort {
                    host_ifname: e.host_ifname.clone(),
                    mac: parse_mac(&e.mac)?,
                    ipv4: e.ip.parse::<Ipv4Addr>().ok().into_iter().collect(),
                    ipv6: Vec::new(),
                })
            })
            .collect()
    }

    /// The endpoint list to gossip.
    pub fn gossip_endpoints(&self) -> Vec<Endpoint> {
        let mut v: Vec<Endpoint> = self
            .endpoints
            .iter()
            .filter_map(|(a, e)| {
                Some(Endpoint {
                    mac: parse_mac(&e.mac)?,
                    ips: e
                        .ip
                        .parse::<Ipv4Addr>()
                        .ok()
                        .map(IpAddr::V4)
                        .into_iter()
                        .collect(),
                    pod: e.pod.clone().or_else(|| Some(a.container_id.clone())),
                })
            })
            .collect();
        v.sort_by_key(|e| e.mac);
        v.dedup_by_key(|e| e.mac);
        v
    }

    /// Allocates the gateway if needed. Returns the address to put on the bridge, once.
    pub fn gateway_step(&mut self, mesh: &mut Mesh, now: Instant) -> Option<Ipv4Net> {
        match &self.gateway {
            Gateway::Waiting(at) if now < *at => None,
            Gateway::Waiting(_) => match mesh.ipam_allocate(gateway_key(), None, now) {
                Ok(a) => {
                    if self.save_ipam(mesh).is_err() {
                        // Not on the bridge before it is on disk; the next try writes again.
                        self.gateway = Gateway::Waiting(now + Duration::from_secs(1));
                        return None;
                    }
                    let net = Ipv4Net::new(a.ip, a.prefix_len).ok()?;
                    self.gateway = Gateway::Setting(net);
                    Some(net)
                }
                Err(IpamError::Pending { retry_at }) => {
                    self.gateway = Gateway::Waiting(retry_at.max(now + NOT_READY_RETRY));
                    None
                }
                Err(e) => {
                    warn!(error = %e, "cannot allocate the gateway address");
                    self.gateway = Gateway::Waiting(now + Duration::from_secs(5));
                    None
                }
            },
            Gateway::Failed(net, _) => {
                let net = *net;
                self.gateway = Gateway::Setting(net);
                Some(net)
            }
            Gateway::Setting(_) | Gateway::Ready(_) => None,
        }
    }

    /// The outcome of setting the gateway on the bridge.
    pub fn gateway_set(&mut self, net: Ipv4Net, result: Result<(), String>) {
        self.gateway = match result {
            Ok(()) => {
                info!(gateway = %net, bridge = %self.bridge, "pods can be attached");
                Gateway::Ready(net)
            }
            Err(e) => {
                warn!(gateway = %net, error = %e, "cannot set the gateway address");
                Gateway::Failed(net, e)
            }
        };
    }

    fn reply(&self, ip: Ipv4Addr, prefix: u8, gw: Ipv4Net) -> AddReply {
        AddReply {
            ip: format!("{ip}/{prefix}"),
            gateway: gw.addr().to_string(),
            mtu: self.mtu,
            bridge: self.bridge.clone(),
        }
    }

    /// Writes the IPAM snapshot. Called before a CNI answer that depends on it, so an
    /// address handed out is never forgotten by a crash: an error means the answer must not
    /// be given (the caller undoes the allocation).
    pub fn save_ipam(&self, mesh: &Mesh) -> Result<(), String> {
        state::write_atomic(&self.state_dir, state::IPAM_FILE, &mesh.ipam_snapshot()).map_err(|e| {
            let e = format!("{e:#}");
            warn!(error = %e, "cannot save the IPAM state");
            e
        })
    }

    fn save_endpoints(&self) -> Result<(), String> {
        state::save_endpoints(&self.state_dir, &self.endpoints).map_err(|e| {
            let e = format!("{e:#}");
            warn!(error = %e, "cannot save the local endpoints");
            e
        })
    }

    /// The endpoints changed: gossip them, and have the guard follow.
    fn endpoints_changed(&mut self, mesh: &mut Mesh, now: Instant) -> Vec<Action> {
        self.guard_dirty = true;
        mesh.set_local_endpoints(self.gossip_endpoints(), now)
    }

    /// Answers one API command; returns mesh actions to execute.
    pub fn handle(&mut self, mesh: &mut Mesh, cmd: ApiCommand, now: Instant) -> Vec<Action> {
        match cmd {
            ApiCommand::Add(req, reply) => {
                let Gateway::Ready(gw) = self.gateway else {
                    let _ = reply.send(if mesh.ipam_enabled() {
                        Ok(AddOutcome::RetryAt(now + NOT_READY_RETRY))
                    } else {
                        Err(ApiError::new(
                            code::ROUTER_ERROR,
                            "IPAM is not enabled on this router",
                        ))
                    });
                    return Vec::new();
                };
                let a = Attachment {
                    container_id: req.container_id.clone(),
                    ifname: req.ifname.clone(),
                };
                let pod = match (&req.pod_namespace, &req.pod_name) {
                    (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
                    _ => None,
                };
                let existed = mesh.ipam_lookup(&key(&a)).is_some();
                let out = match mesh.ipam_allocate(key(&a), pod, now) {
                    Ok(al) => match self.save_ipam(mesh) {
                        Ok(()) => Ok(AddOutcome::Done(self.reply(al.ip, al.prefix_len, gw))),
                        Err(e) => {
                            // Not durably recorded: nothing is handed out. A retried ADD of an
                            // address recorded earlier keeps it (a pod may hold it).
                            if !existed {
                                mesh.ipam_release(&key(&a), now);
                            }
                            Err(ApiError::new(
                                code::TRY_AGAIN_LATER,
                                format!("cannot record the address in the state directory: {e}"),
                            ))
                        }
                    },
                    Err(IpamError::Pending { retry_at }) => Ok(AddOutcome::RetryAt(retry_at)),
                    Err(e @ (IpamError::Exhausted { .. } | IpamError::CidrExhausted { .. })) => {
                        Err(ApiError::new(code::RANGE_EXHAUSTED, e.to_string()))
                    }
                    Err(e) => Err(ApiError::new(code::ROUTER_ERROR, e.to_string())),
                };
                let _ = reply.send(out);
                Vec::new()
            }
            ApiCommand::Attached(req, reply) => {
                let a = Attachment {
                    container_id: req.container_id,
                    ifname: req.ifname,
                };
                let Some(al) = mesh.ipam_lookup(&key(&a)) else {
                    let _ = reply.send(Err(ApiError::new(
                        code::ROUTER_ERROR,
                        "attachment has no address: ADD it first",
                    )));
                    return Vec::new();
                };
                match parse_mac(&req.mac) {
                    Some(m) if m[0] & 1 == 0 && m != [0; 6] => {}
                    _ => {
                        let _ = reply.send(Err(ApiError::new(
                            code::ROUTER_ERROR,
                            format!("invalid MAC {:?} (must be unicast)", req.mac),
                        )));
                        return Vec::new();
                    }
                }
                let host_ifname = weft_fastpath::host_ifname_for(&a.container_id, &a.ifname);
                if req.host_ifname != host_ifname {
                    let _ = reply.send(Err(ApiError::new(
                        code::ROUTER_ERROR,
                        format!(
                            "host interface {:?} is not the one weft-net makes for this attachment ({host_ifname})",
                            req.host_ifname
                        ),
                    )));
                    return Vec::new();
                }
                let before = self.endpoints.insert(
                    a.clone(),
                    LocalEndpoint {
                        mac: req.mac.to_ascii_lowercase(),
                        ip: al.ip.to_string(),
                        host_ifname,
                        pod: al.pod,
                    },
                );
                if let Err(e) = self.save_endpoints() {
                    match before {
                        Some(b) => self.endpoints.insert(a, b),
                        None => self.endpoints.remove(&a),
                    };
                    let _ = reply.send(Err(ApiError::new(
                        code::TRY_AGAIN_LATER,
                        format!("cannot record the endpoint in the state directory: {e}"),
                    )));
                    return Vec::new();
                }
                // Answered once the port's guard is in force (see crate::pod_guard).
                self.guard_waiters.push(reply);
                self.endpoints_changed(mesh, now)
            }
            ApiCommand::Del(a, reply) => {
                // A release that cannot be written is still made: at worst a restart brings
                // the address back as allocated, which GC releases again. Never the reverse.
                if mesh.ipam_release(&key(&a), now).is_some() {
                    let _ = self.save_ipam(mesh);
                }
                let mut actions = Vec::new();
                if self.endpoints.remove(&a).is_some() {
                    let _ = self.save_endpoints();
                    actions.extend(self.endpoints_changed(mesh, now));
                }
                let _ = reply.send(Ok(()));
                actions
            }
            ApiCommand::Check(a, reply) => {
                let out = match (mesh.ipam_lookup(&key(&a)), &self.gateway) {
                    (Some(al), Gateway::Ready(gw)) => {
                        Ok(Some(self.reply(al.ip, al.prefix_len, *gw)))
                    }
                    (Some(_), _) => Err(ApiError::new(code::TRY_AGAIN_LATER, "gateway not ready")),
                    (None, _) => Ok(None),
                };
                let _ = reply.send(out);
                Vec::new()
            }
            ApiCommand::Gc(req, reply) => {
                let mut valid: Vec<AllocKey> = req.valid.iter().map(key).collect();
                valid.push(gateway_key());
                let released = mesh.ipam_gc(&valid, now);
                if !released.is_empty() {
                    let _ = self.save_ipam(mesh);
                }
                let keep: std::collections::BTreeSet<&Attachment> = req.valid.iter().collect();
                let before = self.endpoints.len();
                self.endpoints.retain(|a, _| keep.contains(a));
                let mut actions = Vec::new();
                if self.endpoints.len() != before {
                    let _ = self.save_endpoints();
                    actions.extend(self.endpoints_changed(mesh, now));
                }
                let _ = reply.send(Ok(GcReply {
                    released: released.len(),
                }));
                actions
            }
            ApiCommand::RmPeer(req, reply) => {
                let name = req.peer.parse().ok().or_else(|| {
                    mesh.peers()
                        .into_iter()
                        .find(|p| p.nickname == req.peer)
                        .map(|p| p.name)
                });
                let out = match name {
                    None => Err(ApiError::new(
                        code::ROUTER_ERROR,
                        format!("no peer named {:?} (give its name like 02:..:07, or its nickname while it is in the view)", req.peer),
                    )),
                    Some(n) => match mesh.remove_peer(n, req.force, now) {
                        Ok(o) => {
                            // Taken over in memory either way; the loop writes it again.
                            let _ = self.save_ipam(mesh);
                            info!(peer = %n, addresses = o.addresses, "took over a removed peer's address space");
                            Ok(RmPeerReply {
                                peer: n.to_string(),
                                blocks: o.blocks.iter().map(|b| b.to_string()).collect(),
                                addresses: o.addresses,
                            })
                        }
                        Err(e) => Err(ApiError::new(code::ROUTER_ERROR, e.to_string())),
                    },
                };
                let _ = reply.send(out);
                Vec::new()
            }
            ApiCommand::Status(reply) => {
                let out = match &self.gateway {
                    Gateway::Ready(_) => Ok(()),
                    Gateway::Failed(_, e) => Err(ApiError::new(
                        code::TRY_AGAIN_LATER,
                        format!("the bridge gateway could not be set: {e}"),
                    )),
                    _ if !mesh.ipam_enabled() => {
                        Err(ApiError::new(code::ROUTER_ERROR, "IPAM is not enabled"))
                    }
                    _ => Err(ApiError::new(
                        code::TRY_AGAIN_LATER,
                        "waiting for address space (IPAM is claiming a block)",
                    )),
                };
                let _ = reply.send(out);
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:0a:FF:00:00:01"), Some([2, 10, 255, 0, 0, 1]));
        for bad in [
            "",
            "02:0a:ff:00:00",
            "02:0a:ff:00:00:01:02",
            "2:0a:ff:00:00:01",
            "zz:0a:ff:00:00:01",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
