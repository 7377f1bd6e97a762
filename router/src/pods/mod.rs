//! The router's side of pods: [`core`] decides (gateway, CNI requests, local endpoints);
//! this driver writes the state files the core asks for and answers the API's channels.
//!
//! Everything here runs inside the event loop (it holds `&mut Mesh`); slow work (netlink,
//! nft) is spawned by the loop and reports back.

pub mod core;

use crate::api::{ApiCommand, Reply};
use crate::state;
use ipnet::Ipv4Net;
use std::path::PathBuf;
use std::time::Instant;
use tracing::warn;
use weft_gossip::{Action, Mesh};

pub use self::core::{parse_mac, pod_mtu, Gateway, PodCore, GATEWAY_KEY};
use self::core::{GatewayStep, Step, Write};

/// The pod core with its state directory and the replies it holds.
pub struct Pods {
    pub core: PodCore,
    state_dir: PathBuf,
    /// Attachments recorded and waiting for their port's guard before the plugin is told.
    pub guard_waiters: Vec<Reply<()>>,
}

impl Pods {
    pub fn new(bridge: String, mtu: u32, state_dir: PathBuf, endpoints: state::Endpoints) -> Self {
        Pods {
            core: PodCore::new(bridge, mtu, endpoints, Instant::now()),
            state_dir,
            guard_waiters: Vec::new(),
        }
    }

    /// Writes every file (each atomically and durably); the first error, if any.
    fn write(&self, writes: &[Write]) -> Result<(), String> {
        let mut first = Ok(());
        for w in writes {
            if let Err(e) = state::write_atomic(&self.state_dir, w.file.name(), &w.bytes) {
                let e = format!("{e:#}");
                warn!(file = w.file.name(), error = %e, "cannot save router state");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Carries a step through its writes to its answer.
    fn finish<T>(&mut self, mesh: &mut Mesh, step: Step<T>, now: Instant) -> T {
        match step {
            Step::Done(answer) => answer,
            Step::Write(writes, then) => {
                let written = self.write(&writes);
                self.core.written(mesh, then, written, now)
            }
        }
    }

    /// Writes the IPAM snapshot (after the mesh reports an IPAM change).
    pub fn save_ipam(&self, mesh: &Mesh) -> Result<(), String> {
        self.write(&[Write {
            file: self::core::StateFile::Ipam,
            bytes: mesh.ipam_snapshot(),
        }])
    }

    /// Allocates and records the gateway when due. Returns the address to put on the
    /// bridge, once.
    pub fn gateway_step(&mut self, mesh: &mut Mesh, now: Instant) -> Option<Ipv4Net> {
        match self.core.gateway_step(mesh, now)? {
            GatewayStep::Record(write, net) => {
                let written = self.write(&[write]);
                self.core.gateway_written(net, written, now)
            }
            GatewayStep::Set(net) => Some(net),
        }
    }

    /// Answers one API command; returns the mesh actions to execute.
    pub fn handle(&mut self, mesh: &mut Mesh, cmd: ApiCommand, now: Instant) -> Vec<Action> {
        match cmd {
            ApiCommand::Add(req, reply) => {
                let step = self.core.add(mesh, req, now);
                let _ = reply.send(self.finish(mesh, step, now));
            }
            ApiCommand::Attached(req, reply) => {
                let step = self.core.attached(mesh, req);
                match self.finish(mesh, step, now) {
                    // Answered once the port's guard is in force (see crate::pod_guard).
                    Ok(()) => self.guard_waiters.push(reply),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            ApiCommand::Del(a, reply) => {
                let step = self.core.del(mesh, a, now);
                self.finish(mesh, step, now);
                let _ = reply.send(Ok(()));
            }
            ApiCommand::Check(a, reply) => {
                let _ = reply.send(self.core.check(mesh, &a));
            }
            ApiCommand::Gc(req, reply) => {
                let step = self.core.gc(mesh, req, now);
                let _ = reply.send(Ok(self.finish(mesh, step, now)));
            }
            ApiCommand::RmPeer(req, reply) => {
                let step = self.core.rm_peer(mesh, req, now);
                let _ = reply.send(self.finish(mesh, step, now));
            }
            ApiCommand::Status(reply) => {
                let _ = reply.send(self.core.status(mesh));
            }
        }
        std::iter::from_fn(|| self.core.poll_action()).collect()
    }
}
