//! Path-MTU discovery against simulated paths in virtual time: clean paths, black holes at
//! every size, paths that improve or degrade, loss, link MTU changes.

use std::time::{Duration, Instant};

use weft_sleeve::pmtu::{Pmtu, PmtuConfig};

const TICK: Duration = Duration::from_millis(5);

/// A simulated path: probes up to `limit` bytes get through (minus deterministic loss),
/// acks come back after `rtt`.
struct Sim {
    t0: Instant,
    now: Instant,
    rtt: Duration,
    limit: u16,
    /// Loss per mille, applied to probes and acks alike.
    loss: u64,
    rng: u64,
    inflight: Vec<(Instant, u32, u16)>,
    probes: u64,
}

impl Sim {
    fn new(limit: u16) -> Self {
        let t0 = Instant::now();
        Sim {
            t0,
            now: t0,
            rtt: Duration::from_millis(20),
            limit,
            loss: 0,
            rng: 0x2545_f491_4f6c_dd1d,
            inflight: Vec::new(),
            probes: 0,
        }
    }

    fn lost(&mut self) -> bool {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % 1000 < self.loss
    }

    /// Runs until `until` (virtual time since start), calling `check` after every tick.
    fn run(&mut self, p: &mut Pmtu, until: Duration, mut check: impl FnMut(&Pmtu, Duration)) {
        while self.now < self.t0 + until {
            let now = self.now;
            let due: Vec<_> = self
                .inflight
                .iter()
                .filter(|a| a.0 <= now)
                .copied()
                .collect();
            self.inflight.retain(|a| a.0 > now);
            for (_, id, size) in due {
                p.on_ack(id, size, now);
            }
            while let Some(probe) = p.poll(now) {
                self.probes += 1;
                assert!(probe.size <= p.link_mtu());
                if probe.size <= self.limit && !self.lost() && !self.lost() {
                    self.inflight.push((now + self.rtt, probe.id, probe.size));
                }
            }
            let nt = p.next_timeout().expect("always a next timeout");
            assert!(nt + TICK > now, "next_timeout is not in the past");
            check(p, now - self.t0);
            self.now += TICK;
        }
    }

    fn elapsed(&self) -> Duration {
        self.now - self.t0
    }
}

fn cfg() -> PmtuConfig {
    PmtuConfig::default()
}

#[test]
fn clean_path_stays_at_link_mtu() {
    let mut sim = Sim::new(1500);
    let mut p = Pmtu::new(1500, cfg(), sim.now);
    sim.run(&mut p, Duration::from_secs(600), |p, t| {
        assert_eq!(p.current(), 1500);
        if t >= Duration::from_millis(25) {
            assert!(p.confirmed(), "confirmed after one round trip");
        }
    });
    // One round of 13 probes at start and one per minute after: cheap.
    assert!(sim.probes <= 11 * 13, "{} probes", sim.probes);
}

#[test]
fn black_hole_anywhere_is_found_within_granularity_in_bounded_time() {
    for limit in (580..1500)
        .step_by(7)
        .chain([577, 1499, 1492, 1450, 1400, 1280])
    {
        let mut sim = Sim::new(limit);
        let mut p = Pmtu::new(1500, cfg(), sim.now);
        let mut converged_at = None;
        sim.run(&mut p, Duration::from_secs(5), |p, t| {
            if t >= Duration::from_millis(600) + TICK {
                // After the first round, never above the black hole.
                assert!(
                    p.current() <= limit,
                    "limit {limit}: {} at {t:?}",
                    p.current()
                );
            }
            if converged_at.is_none() && !p.searching() {
                converged_at = Some(t);
            }
        });
        let at = converged_at.expect("converges");
        assert!(
            at <= Duration::from_millis(1250),
            "limit {limit}: converged at {at:?}"
        );
        assert!(
            p.current() <= limit && p.current() + 8 > limit,
            "limit {limit}: {}",
            p.current()
        );
        assert!(p.confirmed());
    }
}

#[test]
fn unresponsive_peer_changes_nothing_and_backs_off() {
    // Nothing gets through, not even the floor: no conclusion about the MTU.
    let mut sim = Sim::new(0);
    let mut p = Pmtu::new(1500, cfg(), sim.now);
    sim.run(&mut p, Duration::from_secs(3), |p, _| {
        assert_eq!(p.current(), 1500);
        assert!(!p.confirmed());
    });
    let early = sim.probes;
    sim.run(&mut p, Duration::from_secs(600), |p, _| {
        assert_eq!(p.current(), 1500)
    });
    // Rounds of 13 probes x 3 tries, backing off to one a minute: 1+2+4+...+32 s, then
    // 60 s apart, is 15 rounds in 600 s; without backoff it would be ~375.
    assert!(
        sim.probes - early <= 39 * 15,
        "{} probes",
        sim.probes - early
    );
}

#[test]
fn peer_that_answers_late_is_measured_soon_after() {
    // The peer installs its half of the session 1.5 s late, on a path limited to 1400.
    let mut sim = Sim::new(0);
    let mut p = Pmtu::new(1500, cfg(), sim.now);
    sim.run(&mut p, Duration::from_millis(1500), |_, _| {});
    sim.limit = 1400;
    let mut done_at = None;
    sim.run(&mut p, Duration::from_secs(10), |p, t| {
        if done_at.is_none() && p.confirmed() && !p.searching() {
            done_at = Some(t);
        }
    });
    // Silent round to 0.6 s, retry at 1.6 s, then at most two narrowing rounds.
    let at = done_at.expect("measured");
    assert!(at <= Duration::from_millis(3000), "{at:?}");
    assert!(p.current() <= 1400 && p.current() > 1392, "{}", p.current());
}

#[test]
fn black_hole_just_above_the_floor() {
    let mut sim = Sim::new(580);
    let mut p = Pmtu::new(1500, cfg(), sim.now);
    sim.run(&mut p, Duration::from_secs(3), |_, _| {});
    assert!(p.current() <= 580 && p.current() >= 576);
    assert!(p.confirmed(), "the floor was probed and answered");
}

#[test]
fn jumbo_link_converges_in_three_rounds() {
    let mut sim = Sim::new(4321);
    let mut p = Pmtu::new(9000, cfg(), sim.now);
    sim.run(&mut p, Duration::from_millis(1850), |_, _| {});
    assert!(!p.searching());
    assert!(
        p.current() <= 4321 && p.current() + 8 > 4321,
        "{}",
        p.current()
    );
}

#[test]
fn recovers_upward_when_the_path_improves() {
    let mut sim = Sim::new(1400);
    let mut p = Pmtu::new(1500, cfg(), sim.now);
    sim.run(&mut p, Duration::from_secs(10), |_, _| {});
    assert!(p.current() <= 1400 && p.current() > 1392);
    sim.limit = 1500;
    let mut back_at = None;
    sim.run(&mut p, Duration::from_secs(200), |p, t| {
        if back_at.is_none() && p.current() == 1500 {
            back_at = Some(t);
        }
    });
    let back = back_at.expect("returns to the link MTU");
    // The next validation round (60 s after convergence) finds it at once.
    assert!(back <= Duration::from_secs(62), "{back:?}");
    assert_eq!(p.current(), 1500);
    assert!(p.confirmed());
}

#[test]
fn detects_a_path_that_degrades() {
    let mut sim = Sim::new(1500);
    let mut p = Pmtu::new(1500, cfg(), sim.now);
    sim.run(&mut p, Duration::from_secs(10), |_, _| {});
    assert_eq!(p.current(), 1500);
    sim.limit = 1300;
    let mut safe_at = None;
    sim.run(&mut p, Duration::from_secs(200), |p, t| {
        if safe_at.is_none() && p.current() <= 1300 {
            safe_at = Some(t);
        }
    });
    // Next validation at ~60 s; current falls below the limit when that round ends.
    let safe = safe_at.expect("detected");
    assert!(safe <= Duration::from_millis(61_000), "{safe:?}");
    assert!(p.current() <= 1300 && p.current() > 1292, "{}", p.current());

    // reprobe_now skips the wait.
    sim.limit = 1100;
    let start = sim.elapsed();
    p.reprobe_now(sim.now);
    let mut safe_at = None;
    sim.run(&mut p, start + Duration::from_secs(3), |p, t| {
        if safe_at.is_none() && p.current() <= 1100 {
            safe_at = Some(t);
        }
    });
    assert!(safe_at.expect("detected") - start <= Duration::from_millis(650));
    assert!(p.current() <= 1100 && p.current() > 1092, "{}", p.current());
}

#[test]
fn lossy_path_never_overshoots_and_settles() {
    let mut sim = Sim::new(1420);
    sim.loss = 150; // 15% each way
    sim.rtt = Duration::from_millis(150);
    let mut p = Pmtu::new(1500, cfg(), sim.now);
    sim.run(&mut p, Duration::from_secs(600), |p, t| {
        if t > Duration::from_secs(2) {
            assert!(p.current() <= 1420, "{} at {t:?}", p.current());
            assert!(p.current() >= 576);
        }
    });
    // Over ten validation rounds it finds the true value (loss only ever errs low).
    assert!(p.current() > 1412, "{}", p.current());
}

#[test]
fn slow_acks_still_count() {
    // RTT longer than the probe interval: acks of earlier tries are matched.
    let mut sim = Sim::new(1350);
    sim.rtt = Duration::from_millis(450);
    let mut p = Pmtu::new(1500, cfg(), sim.now);
    sim.run(&mut p, Duration::from_secs(5), |_, _| {});
    assert!(p.current() <= 1350 && p.current() > 1342, "{}", p.current());
}

#[test]
fn link_mtu_changes() {
    let mut sim = Sim::new(9000);
    let mut p = Pmtu::new(1500, cfg(), sim.now);
    sim.run(&mut p, Duration::from_secs(1), |_, _| {});
    assert_eq!(p.current(), 1500);
    p.set_link_mtu(1400, sim.now);
    assert_eq!(p.current(), 1400, "clamped at once");
    sim.run(&mut p, Duration::from_secs(2), |_, _| {});
    assert_eq!(p.current(), 1400);
    assert!(p.confirmed());
    p.set_link_mtu(9000, sim.now);
    sim.run(&mut p, Duration::from_secs(4), |_, _| {});
    assert_eq!(p.current(), 9000);
    // A silly link MTU is clamped to the smallest probe.
    let p = Pmtu::new(10, cfg(), sim.now);
    assert_eq!(p.current(), weft_sleeve::pmtu::MIN_PROBE_SIZE);
}
