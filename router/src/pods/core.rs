//! The pod logic with no I/O: the node's gateway address, the CNI requests (allocate,
//! attach, release, check, GC, remove a peer) answered from the mesh's IPAM, and the table
//! of local endpoints.
//!
//! Nothing here writes a file or answers a channel. A request whose answer depends on state
//! being on disk returns [`Step::Write`]: the driver ([`super::Pods`]) writes the files and
//! hands the outcome back to [`PodCore::written`], which gives the answer (undoing what a
//! failed write must not leave behind). Mesh actions (the endpoint gossip) are queued and
//! taken with [`PodCore::poll_action`]. The unit tests drive it in virtual time.

use crate::api::{code, AddOutcome, AddReply, ApiError, Attachment, GcReply, RmPeerReply};
use crate::api::{AddRequest, AttachedRequest, GcRequest, RmPeerRequest};
use crate::state::{self, LocalEndpoint};
use ipnet::Ipv4Net;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};
use tracing::{info, warn};
use weft_gossip::ipam::{AllocKey, IpamError};
use weft_gossip::{Action, Endpoint, Mesh};
use weft_types::Mac;

/// The allocation key of the node's own bridge address.
pub const GATEWAY_KEY: (&str, &str) = ("weft:gateway", "weft");
/// How soon an ADD is retried while the gateway is not up yet.
pub(crate) const NOT_READY_RETRY: Duration = Duration::from_millis(200);
/// How soon the gateway is allocated again after its IPAM record could not be written.
const GATEWAY_WRITE_RETRY: Duration = Duration::from_secs(1);
/// How soon the gateway is allocated again after IPAM refused it (other than "pending").
const GATEWAY_ERROR_RETRY: Duration = Duration::from_secs(5);
/// The smallest pod MTU weft hands out (IPv4's minimum datagram size).
pub const MIN_POD_MTU: u32 = 576;

/// Where the gateway address stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gateway {
    /// Not allocated yet (IPAM claiming a block); ask again at the instant.
    Waiting(Instant),
    /// Allocated and recorded; being set on the bridge.
    Setting(Ipv4Net),
    /// On the bridge: pods can be added.
    Ready(Ipv4Net),
    /// Setting it failed; retried on the next step.
    Failed(Ipv4Net, String),
}

/// A state file in `--state-dir` (see [`crate::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFile {
    /// The IPAM snapshot ([`Mesh::ipam_snapshot`]).
    Ipam,
    /// The local endpoints.
    Endpoints,
}

impl StateFile {
    /// The file's name in the state directory.
    pub fn name(self) -> &'static str {
        match self {
            StateFile::Ipam => state::IPAM_FILE,
            StateFile::Endpoints => state::ENDPOINTS_FILE,
        }
    }
}

/// One file to replace, durably, with these bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub file: StateFile,
    pub bytes: Vec<u8>,
}

/// What a request leads to: its answer, or files to write before the answer can be given.
pub enum Step<T> {
    Done(T),
    /// Write every file (all of them, even after one fails), then pass the first error (or
    /// `Ok`) to [`PodCore::written`] with the [`Then`].
    Write(Vec<Write>, Then<T>),
}

type Continue<T> =
    Box<dyn FnOnce(&mut PodCore, &mut Mesh, Result<(), String>, Instant) -> T + Send>;

/// What follows the writes of a [`Step::Write`]; opaque to the driver.
pub struct Then<T>(Continue<T>);

impl<T> Then<T> {
    fn new(
        f: impl FnOnce(&mut PodCore, &mut Mesh, Result<(), String>, Instant) -> T + Send + 'static,
    ) -> Self {
        Then(Box::new(f))
    }

    /// The answer does not depend on the writes (best effort: a restart at worst brings
    /// back an address GC releases again).
    fn regardless(answer: T) -> Self
    where
        T: Send + 'static,
    {
        Then::new(move |_, _, _, _| answer)
    }
}

/// What the gateway needs next (from [`PodCore::gateway_step`]).
#[derive(Debug, PartialEq, Eq)]
pub enum GatewayStep {
    /// Write the IPAM snapshot (it records the gateway's address), then report the outcome to
    /// [`PodCore::gateway_written`].
    Record(Write, Ipv4Net),
    /// Put this address on the bridge, then report to [`PodCore::gateway_set`].
    Set(Ipv4Net),
}

/// The node's pods as the router sees them.
pub struct PodCore {
    pub bridge: String,
    /// The MTU new pods get (see [`pod_mtu`]).
    pub mtu: u32,
    pub gateway: Gateway,
    pub endpoints: state::Endpoints,
    /// The local endpoints changed: the pod guard must follow ([`PodCore::guard_ports`]).
    pub guard_dirty: bool,
    actions: VecDeque<Action>,
}

fn key(a: &Attachment) -> AllocKey {
    AllocKey::new(a.container_id.clone(), a.ifname.clone())
}

fn gateway_key() -> AllocKey {
    AllocKey::new(GATEWAY_KEY.0, GATEWAY_KEY.1)
}

fn ipam_write(mesh: &Mesh) -> Write {
    Write {
        file: StateFile::Ipam,
        bytes: mesh.ipam_snapshot(),
    }
}

/// A MAC as the CNI plugin sends it (`02:0a:ff:00:00:01`, either case).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    s.parse::<Mac>().ok().map(Mac::octets)
}

/// The MTU new pods get: the configured one, lowered to fit every confirmed path to a peer
/// (`fits`: the largest inner MTU of each), never below [`MIN_POD_MTU`].
pub fn pod_mtu(configured: u32, fits: impl IntoIterator<Item = u32>) -> u32 {
    let fit = fits.into_iter().min().unwrap_or(configured);
    configured.min(fit).max(MIN_POD_MTU)
}

impl PodCore {
    pub fn new(bridge: String, mtu: u32, endpoints: state::Endpoints, now: Instant) -> Self {
        PodCore {
            bridge,
            mtu,
            gateway: Gateway::Waiting(now),
            endpoints,
            guard_dirty: true,
            actions: VecDeque::new(),
        }
    }

    /// The next queued mesh action (the gossip of changed endpoints).
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Gives the continuation of a [`Step::Write`] the outcome of its writes: the answer.
    pub fn written<T>(
        &mut self,
        mesh: &mut Mesh,
        then: Then<T>,
        result: Result<(), String>,
        now: Instant,
    ) -> T {
        (then.0)(self, mesh, result, now)
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

    /// The endpoint list to gossip: one per MAC, sorted.
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

    /// The endpoints changed: gossip them, and have the guard follow.
    fn endpoints_changed(&mut self, mesh: &mut Mesh, now: Instant) {
        self.guard_dirty = true;
        let actions = mesh.set_local_endpoints(self.gossip_endpoints(), now);
        self.actions.extend(actions);
    }

    fn endpoints_write(&self) -> Result<Write, String> {
        let list: Vec<_> = self.endpoints.iter().collect();
        let bytes = serde_json::to_vec_pretty(&list).map_err(|e| e.to_string())?;
        Ok(Write {
            file: StateFile::Endpoints,
            bytes,
        })
    }

    /// Allocates the gateway when it is due. The address goes on the bridge only once it
    /// is recorded on disk.
    pub fn gateway_step(&mut self, mesh: &mut Mesh, now: Instant) -> Option<GatewayStep> {
        match &self.gateway {
            Gateway::Waiting(at) if now < *at => None,
            Gateway::Waiting(_) => match mesh.ipam_allocate(gateway_key(), None, now) {
                Ok(a) => match Ipv4Net::new(a.ip, a.prefix_len) {
                    Ok(net) => Some(GatewayStep::Record(ipam_write(mesh), net)),
                    Err(e) => {
                        warn!(error = %e, "IPAM gave the gateway an invalid prefix");
                        self.gateway = Gateway::Waiting(now + GATEWAY_ERROR_RETRY);
                        None
                    }
                },
                Err(IpamError::Pending { retry_at }) => {
                    self.gateway = Gateway::Waiting(retry_at.max(now + NOT_READY_RETRY));
                    None
                }
                Err(e) => {
                    warn!(error = %e, "cannot allocate the gateway address");
                    self.gateway = Gateway::Waiting(now + GATEWAY_ERROR_RETRY);
                    None
                }
            },
            Gateway::Failed(net, _) => {
                let net = *net;
                self.gateway = Gateway::Setting(net);
                Some(GatewayStep::Set(net))
            }
            Gateway::Setting(_) | Gateway::Ready(_) => None,
        }
    }

    /// The outcome of recording the gateway: the address to put on the bridge, or `None`
    /// (not on the bridge before it is on disk; allocated and written again shortly).
    pub fn gateway_written(
        &mut self,
        net: Ipv4Net,
        result: Result<(), String>,
        now: Instant,
    ) -> Option<Ipv4Net> {
        match result {
            Ok(()) => {
                self.gateway = Gateway::Setting(net);
                Some(net)
            }
            Err(_) => {
                self.gateway = Gateway::Waiting(now + GATEWAY_WRITE_RETRY);
                None
            }
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

    /// ADD: an address for the attachment (the same one when it has one), answered once
    /// the allocation is on disk, so an address handed out is never forgotten by a crash.
    pub fn add(
        &mut self,
        mesh: &mut Mesh,
        req: AddRequest,
        now: Instant,
    ) -> Step<Result<AddOutcome, ApiError>> {
        let Gateway::Ready(gw) = self.gateway else {
            return Step::Done(if mesh.ipam_enabled() {
                Ok(AddOutcome::RetryAt(now + NOT_READY_RETRY))
            } else {
                Err(ApiError::new(
                    code::ROUTER_ERROR,
                    "IPAM is not enabled on this router",
                ))
            });
        };
        let k = AllocKey::new(req.container_id, req.ifname);
        let pod = match (req.pod_namespace, req.pod_name) {
            (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
            _ => None,
        };
        let existed = mesh.ipam_lookup(&k).is_some();
        match mesh.ipam_allocate(k.clone(), pod, now) {
            Ok(al) => {
                let reply = self.reply(al.ip, al.prefix_len, gw);
                Step::Write(
                    vec![ipam_write(mesh)],
                    Then::new(move |_, mesh, written, now| match written {
                        Ok(()) => Ok(AddOutcome::Done(reply)),
                        Err(e) => {
                            // Not durably recorded: nothing is handed out. A retried ADD of an
                            // address recorded earlier keeps it (a pod may hold it).
                            if !existed {
                                mesh.ipam_release(&k, now);
                            }
                            Err(ApiError::new(
                                code::TRY_AGAIN_LATER,
                                format!("cannot record the address in the state directory: {e}"),
                            ))
                        }
                    }),
                )
            }
            Err(IpamError::Pending { retry_at }) => Step::Done(Ok(AddOutcome::RetryAt(retry_at))),
            Err(e @ (IpamError::Exhausted { .. } | IpamError::CidrExhausted { .. })) => {
                Step::Done(Err(ApiError::new(code::RANGE_EXHAUSTED, e.to_string())))
            }
            Err(e) => Step::Done(Err(ApiError::new(code::ROUTER_ERROR, e.to_string()))),
        }
    }

    /// The plugin made the pod's interface: record the endpoint (on disk first) and gossip
    /// it. `Ok` means recorded: the plugin is told once the port's guard is in force (the
    /// driver holds the reply until then).
    pub fn attached(&mut self, mesh: &Mesh, req: AttachedRequest) -> Step<Result<(), ApiError>> {
        let a = Attachment {
            container_id: req.container_id,
            ifname: req.ifname,
        };
        let Some(al) = mesh.ipam_lookup(&key(&a)) else {
            return Step::Done(Err(ApiError::new(
                code::ROUTER_ERROR,
                "attachment has no address: ADD it first",
            )));
        };
        match req.mac.parse::<Mac>() {
            Ok(m) if m.is_unicast() => {}
            _ => {
                return Step::Done(Err(ApiError::new(
                    code::ROUTER_ERROR,
                    format!("invalid MAC {:?} (must be unicast)", req.mac),
                )));
            }
        }
        let host_ifname = weft_fastpath::host_ifname_for(&a.container_id, &a.ifname);
        if req.host_ifname != host_ifname {
            return Step::Done(Err(ApiError::new(
                code::ROUTER_ERROR,
                format!(
                    "host interface {:?} is not the one weft-net makes for this attachment ({host_ifname})",
                    req.host_ifname
                ),
            )));
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
        let undo = move |core: &mut PodCore, e: String| -> Result<(), ApiError> {
            match before {
                Some(b) => core.endpoints.insert(a, b),
                None => core.endpoints.remove(&a),
            };
            Err(ApiError::new(
                code::TRY_AGAIN_LATER,
                format!("cannot record the endpoint in the state directory: {e}"),
            ))
        };
        let write = match self.endpoints_write() {
            Ok(w) => w,
            Err(e) => return Step::Done(undo(self, e)),
        };
        Step::Write(
            vec![write],
            Then::new(move |core, mesh, written, now| match written {
                Ok(()) => {
                    core.endpoints_changed(mesh, now);
                    Ok(())
                }
                Err(e) => undo(core, e),
            }),
        )
    }

    /// DEL: releases the address and forgets the endpoint. Made even when it cannot be
    /// written: at worst a restart brings the address back as allocated, which GC releases
    /// again. Never the reverse.
    pub fn del(&mut self, mesh: &mut Mesh, a: Attachment, now: Instant) -> Step<()> {
        let mut writes = Vec::new();
        if mesh.ipam_release(&key(&a), now).is_some() {
            writes.push(ipam_write(mesh));
        }
        if self.endpoints.remove(&a).is_some() {
            writes.extend(self.endpoints_write().ok());
            self.endpoints_changed(mesh, now);
        }
        best_effort(writes, ())
    }

    /// CHECK: the attachment's address as ADD gave it, `None` when it has none.
    pub fn check(&self, mesh: &Mesh, a: &Attachment) -> Result<Option<AddReply>, ApiError> {
        match (mesh.ipam_lookup(&key(a)), &self.gateway) {
            (Some(al), Gateway::Ready(gw)) => Ok(Some(self.reply(al.ip, al.prefix_len, *gw))),
            (Some(_), _) => Err(ApiError::new(code::TRY_AGAIN_LATER, "gateway not ready")),
            (None, _) => Ok(None),
        }
    }

    /// GC: releases every address (and forgets every endpoint) not in the valid list; the
    /// gateway is always kept.
    pub fn gc(&mut self, mesh: &mut Mesh, req: GcRequest, now: Instant) -> Step<GcReply> {
        let mut valid: Vec<AllocKey> = req.valid.iter().map(key).collect();
        valid.push(gateway_key());
        let released = mesh.ipam_gc(&valid, now);
        let mut writes = Vec::new();
        if !released.is_empty() {
            writes.push(ipam_write(mesh));
        }
        let keep: std::collections::BTreeSet<&Attachment> = req.valid.iter().collect();
        let before = self.endpoints.len();
        self.endpoints.retain(|a, _| keep.contains(a));
        if self.endpoints.len() != before {
            writes.extend(self.endpoints_write().ok());
            self.endpoints_changed(mesh, now);
        }
        best_effort(
            writes,
            GcReply {
                released: released.len(),
            },
        )
    }

    /// `weft rmpeer`: takes over a removed peer's address space (by name, or by nickname
    /// while the peer is in the view).
    pub fn rm_peer(
        &mut self,
        mesh: &mut Mesh,
        req: RmPeerRequest,
        now: Instant,
    ) -> Step<Result<RmPeerReply, ApiError>> {
        let name = req.peer.parse().ok().or_else(|| {
            mesh.peers()
                .into_iter()
                .find(|p| p.nickname == req.peer)
                .map(|p| p.name)
        });
        let Some(n) = name else {
            return Step::Done(Err(ApiError::new(
                code::ROUTER_ERROR,
                format!("no peer named {:?} (give its name like 02:..:07, or its nickname while it is in the view)", req.peer),
            )));
        };
        match mesh.remove_peer(n, req.force, now) {
            Ok(o) => {
                info!(peer = %n, addresses = o.addresses, "took over a removed peer's address space");
                // Taken over in memory either way; the loop writes it again on the next change.
                best_effort(
                    vec![ipam_write(mesh)],
                    Ok(RmPeerReply {
                        peer: n.to_string(),
                        blocks: o.blocks.iter().map(|b| b.to_string()).collect(),
                        addresses: o.addresses,
                    }),
                )
            }
            Err(e) => Step::Done(Err(ApiError::new(code::ROUTER_ERROR, e.to_string()))),
        }
    }

    /// CNI STATUS: can this node add pods now?
    pub fn status(&self, mesh: &Mesh) -> Result<(), ApiError> {
        match &self.gateway {
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
        }
    }
}

/// Writes whose outcome does not change the answer.
fn best_effort<T: Send + 'static>(writes: Vec<Write>, answer: T) -> Step<T> {
    if writes.is_empty() {
        Step::Done(answer)
    } else {
        Step::Write(writes, Then::regardless(answer))
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
