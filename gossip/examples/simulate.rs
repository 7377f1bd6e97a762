//! Simulates a weft mesh growing to N peers and reports convergence, steady-state gossip
//! traffic and the process's peak heap.
//!
//! `cargo run --release -p weft-gossip --example simulate -- --peers 1000 --seed 1`
//!
//! Peer i joins at i * join-interval with up to three random earlier peers as its
//! configured targets. Prints one line:
//! `converged_ms=… gossip_bytes_per_peer_per_s=… peak_heap_mb=…`
//! converged_ms: virtual ms from the last join until the last view change, once all views
//! are equal (checked to stay so through the measurement window); gossip bytes: sent per
//! peer per second over `--window-s` virtual seconds after convergence.

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};
use weft_gossip::message::Endpoint;
use weft_gossip::sim::{PeerOptions, Sim, SimConfig};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(l.size(), Relaxed) + l.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        CURRENT.fetch_sub(l.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new > l.size() {
                let now = CURRENT.fetch_add(new - l.size(), Relaxed) + new - l.size();
                PEAK.fetch_max(now, Relaxed);
            } else {
                CURRENT.fetch_sub(l.size() - new, Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

struct Args {
    peers: usize,
    seed: u64,
    conn_limit: Option<usize>,
    loss: f64,
    join_interval_ms: u64,
    window_s: u64,
    endpoints: usize,
    wire: bool,
    check_routes: bool,
    verbose: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        peers: 100,
        seed: 1,
        conn_limit: None,
        loss: 0.0,
        join_interval_ms: 20,
        window_s: 120,
        endpoints: 2,
        wire: false,
        check_routes: false,
        verbose: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        let bad = |e: &dyn std::fmt::Display| format!("bad value for {flag}: {e}");
        match flag.as_str() {
            "--peers" => a.peers = val()?.parse().map_err(|e| bad(&e))?,
            "--seed" => a.seed = val()?.parse().map_err(|e| bad(&e))?,
            "--conn-limit" => a.conn_limit = Some(val()?.parse().map_err(|e| bad(&e))?),
            "--loss" => a.loss = val()?.parse().map_err(|e| bad(&e))?,
            "--join-interval-ms" => a.join_interval_ms = val()?.parse().map_err(|e| bad(&e))?,
            "--window-s" => a.window_s = val()?.parse().map_err(|e| bad(&e))?,
            "--endpoints" => a.endpoints = val()?.parse().map_err(|e| bad(&e))?,
            "--wire" => a.wire = true,
            "--check-routes" => a.check_routes = true,
            "-v" | "--verbose" => a.verbose = true,
            "-h" | "--help" => {
                return Err(
                    "usage: simulate [--peers N] [--seed S] [--conn-limit N] [--loss P] \
                    [--join-interval-ms MS] [--window-s S] [--endpoints K] [--wire] \
                    [--check-routes] [-v]"
                        .into(),
                )
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let wall = Instant::now();
    let mut cfg = SimConfig {
        seed: args.seed,
        loss: args.loss,
        wire: args.wire,
        ..Default::default()
    };
    if let Some(l) = args.conn_limit {
        cfg.mesh.conn_limit = l;
    }
    let mut sim = Sim::new(cfg);
    // joins, with a deterministic choice of earlier peers
    let mut x = args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..args.peers {
        sim.run_until(Duration::from_millis(i as u64 * args.join_interval_ms));
        let mut targets: Vec<usize> = (0..3.min(i))
            .map(|_| (next() % i as u64) as usize)
            .collect();
        targets.sort();
        targets.dedup();
        let endpoints = (0..args.endpoints)
            .map(|k| {
                let v = (i * 16 + k) as u32;
                Endpoint {
                    mac: [
                        0x02,
                        0x42,
                        (v >> 24) as u8,
                        (v >> 16) as u8,
                        (v >> 8) as u8,
                        v as u8,
                    ],
                    ips: vec![std::net::IpAddr::from([10, 32, (v >> 8) as u8, v as u8])],
                    pod: Some(format!("default/pod-{i}-{k}")),
                }
            })
            .collect();
        sim.add_peer(PeerOptions {
            targets,
            endpoints,
            ..Default::default()
        });
        if args.verbose && i % 100 == 99 {
            eprintln!(
                "joined {} at {:?} virtual, wall {:?}, events {}",
                i + 1,
                sim.elapsed(),
                wall.elapsed(),
                sim.events()
            );
        }
    }
    let last_join = sim.last_join();
    let converged = sim.run_until_converged(Duration::from_secs(600), Duration::from_secs(2));
    if converged.is_none() && args.verbose {
        for i in sim.live() {
            let m = sim.mesh(i).expect("live");
            let est = m
                .connections(sim.now())
                .iter()
                .filter(|c| c.state == weft_gossip::TargetState::Established)
                .count();
            eprintln!(
                "peer {i}: view {} established {est} {:?}",
                m.view(weft_gossip::Channel::Topology).len(),
                m.connections(sim.now())
                    .iter()
                    .map(|c| (c.state, c.reason.clone()))
                    .collect::<Vec<_>>()
            );
        }
    }
    let Some(conv_at) = converged else {
        println!("converged_ms=never gossip_bytes_per_peer_per_s=nan peak_heap_mb=nan");
        std::process::exit(1);
    };
    let converged_ms = conv_at.saturating_sub(last_join).as_millis();
    if args.verbose {
        eprintln!(
            "converged at {conv_at:?}, wall {:?}, events {}",
            wall.elapsed(),
            sim.events()
        );
    }
    let bps = sim.measure_bytes_per_peer_per_s(Duration::from_secs(args.window_s));
    let stable = sim.converged() && sim.last_view_change() == conv_at;
    if args.check_routes {
        if let Err(e) = sim.check_routes() {
            eprintln!("routes inconsistent: {e}");
            std::process::exit(1);
        }
    }
    let peak_mb = PEAK.load(Relaxed) as f64 / (1 << 20) as f64;
    println!("converged_ms={converged_ms} gossip_bytes_per_peer_per_s={bps:.0} peak_heap_mb={peak_mb:.0}");
    if args.verbose {
        let degrees: Vec<usize> = sim
            .live()
            .iter()
            .map(|&i| {
                let m = sim.mesh(i).expect("live");
                m.view(weft_gossip::Channel::Topology).len();
                m.connections(sim.now())
                    .iter()
                    .filter(|c| c.state == weft_gossip::TargetState::Established)
                    .count()
            })
            .collect();
        let max = degrees.iter().max().copied().unwrap_or(0);
        let min = degrees.iter().min().copied().unwrap_or(0);
        let avg = degrees.iter().sum::<usize>() as f64 / degrees.len().max(1) as f64;
        eprintln!(
            "stable={stable} degree min/avg/max={min}/{avg:.1}/{max} events={} wall={:?} total_sent={}",
            sim.events(),
            wall.elapsed(),
            sim.total_stats().bytes_sent
        );
    }
    if !stable {
        eprintln!("views changed again during the measurement window");
        std::process::exit(1);
    }
}
