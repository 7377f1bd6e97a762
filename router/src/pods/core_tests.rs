//! The pod core driven by hand in virtual time: a lone router's IPAM (it claims a block
//! after `SETTLE`), writes that succeed or fail on demand, no root, no files.

use super::*;
use weft_gossip::{Config, Identity, Input, IpamConfig, PeerName, PeerUid};

const SETTLE: Duration = Duration::from_secs(2);
const MTU: u32 = 1376;

fn lone_mesh(t0: Instant) -> Mesh {
    let me = Identity {
        name: PeerName::new(1).unwrap(),
        nickname: "n1".into(),
        uid: PeerUid(1),
    };
    let config = Config {
        ipam: Some(IpamConfig {
            range: "10.40.0.0/24".parse().unwrap(),
            block_prefix: Some(28),
            settle: SETTLE,
        }),
        ..Config::default()
    };
    Mesh::new(me, config, 1, t0)
}

fn core(t0: Instant) -> PodCore {
    PodCore::new("weft".into(), MTU, state::Endpoints::new(), t0)
}

/// Steps the gateway (ticking the mesh) until it asks for its record to be written.
fn until_record(c: &mut PodCore, m: &mut Mesh, mut now: Instant) -> (Write, Ipv4Net, Instant) {
    for _ in 0..50 {
        if let Some(step) = c.gateway_step(m, now) {
            let GatewayStep::Record(w, net) = step else {
                panic!("a new gateway is recorded before it is set: {step:?}");
            };
            return (w, net, now);
        }
        now += Duration::from_millis(500);
        m.handle(Input::Tick, now);
    }
    panic!("the gateway was never allocated");
}

/// A core whose gateway is on the bridge, and the time it got there.
fn ready(t0: Instant) -> (PodCore, Mesh, Instant) {
    let (mut c, mut m) = (core(t0), lone_mesh(t0));
    let (_, net, now) = until_record(&mut c, &mut m, t0);
    assert_eq!(c.gateway_written(net, Ok(()), now), Some(net));
    c.gateway_set(net, Ok(()));
    (c, m, now)
}

/// Carries a step through writes that end with `result`; the answer and what was written.
fn finish<T>(
    c: &mut PodCore,
    m: &mut Mesh,
    step: Step<T>,
    result: Result<(), String>,
    now: Instant,
) -> (T, Vec<Write>) {
    match step {
        Step::Done(t) => (t, Vec::new()),
        Step::Write(writes, then) => (c.written(m, then, result, now), writes),
    }
}

fn add_req(id: &str) -> AddRequest {
    AddRequest {
        container_id: id.into(),
        ifname: "eth0".into(),
        netns: format!("/var/run/netns/{id}"),
        pod_namespace: Some("default".into()),
        pod_name: Some(format!("pod-{id}")),
    }
}

fn att(id: &str) -> Attachment {
    Attachment {
        container_id: id.into(),
        ifname: "eth0".into(),
    }
}

fn attached_req(id: &str, mac: &str) -> AttachedRequest {
    AttachedRequest {
        container_id: id.into(),
        ifname: "eth0".into(),
        mac: mac.into(),
        host_ifname: weft_fastpath::host_ifname_for(id, "eth0"),
    }
}

/// ADDs `id` with every write succeeding; its address.
fn add_ok(c: &mut PodCore, m: &mut Mesh, id: &str, now: Instant) -> AddReply {
    let step = c.add(m, add_req(id), now);
    match finish(c, m, step, Ok(()), now).0 {
        Ok(AddOutcome::Done(r)) => r,
        other => panic!("ADD {id}: {other:?}"),
    }
}

fn attach_ok(c: &mut PodCore, m: &mut Mesh, id: &str, mac: &str, now: Instant) {
    let step = c.attached(m, attached_req(id, mac));
    let (answer, writes) = finish(c, m, step, Ok(()), now);
    answer.unwrap_or_else(|e| panic!("ATTACHED {id}: {e:?}"));
    assert_eq!(writes.len(), 1);
}

fn code_of<T: std::fmt::Debug>(r: Result<T, ApiError>) -> u32 {
    r.expect_err("an error").code
}

#[test]
fn the_gateway_goes_on_the_bridge_only_once_it_is_recorded() {
    let t0 = Instant::now();
    let (mut c, mut m) = (core(t0), lone_mesh(t0));
    // The lone router's claim settles first: nothing to record, nothing to set.
    assert_eq!(c.gateway_step(&mut m, t0), None);
    assert!(matches!(c.gateway, Gateway::Waiting(at) if at >= t0 + SETTLE));
    let (write, net, now) = until_record(&mut c, &mut m, t0);
    assert_eq!(write.file, StateFile::Ipam);
    assert_eq!(
        write.bytes,
        m.ipam_snapshot(),
        "the snapshot holding the gateway"
    );
    assert!("10.40.0.0/24"
        .parse::<Ipv4Net>()
        .unwrap()
        .contains(&net.addr()));
    assert_eq!(
        net.prefix_len(),
        24,
        "the gateway carries the range's prefix"
    );
    // The write fails: not set, tried again a second later, and then set.
    assert_eq!(c.gateway_written(net, Err("disk full".into()), now), None);
    assert_eq!(c.gateway, Gateway::Waiting(now + GATEWAY_WRITE_RETRY));
    assert_eq!(c.gateway_step(&mut m, now), None, "not before the retry");
    let later = now + GATEWAY_WRITE_RETRY;
    let Some(GatewayStep::Record(_, again)) = c.gateway_step(&mut m, later) else {
        panic!("recorded again");
    };
    assert_eq!(again, net, "the same address");
    assert_eq!(c.gateway_written(net, Ok(()), later), Some(net));
    assert_eq!(c.gateway, Gateway::Setting(net));
    assert_eq!(c.gateway_step(&mut m, later), None, "set once");
    // Setting it on the bridge fails: the next step sets it again (no new record).
    c.gateway_set(net, Err("no such device".into()));
    assert_eq!(c.gateway_step(&mut m, later), Some(GatewayStep::Set(net)));
    c.gateway_set(net, Ok(()));
    assert_eq!(c.gateway, Gateway::Ready(net));
    assert_eq!(c.status(&m), Ok(()));
}

#[test]
fn add_waits_for_the_gateway_and_refuses_without_ipam() {
    let t0 = Instant::now();
    let (mut c, mut m) = (core(t0), lone_mesh(t0));
    let step = c.add(&mut m, add_req("c1"), t0);
    match finish(&mut c, &mut m, step, Ok(()), t0).0 {
        Ok(AddOutcome::RetryAt(at)) => assert_eq!(at, t0 + NOT_READY_RETRY),
        other => panic!("{other:?}"),
    }
    assert_eq!(code_of(c.status(&m)), code::TRY_AGAIN_LATER);
    let mut no_ipam = Mesh::new(
        Identity {
            name: PeerName::new(2).unwrap(),
            nickname: "n2".into(),
            uid: PeerUid(2),
        },
        Config::default(),
        2,
        t0,
    );
    let step = c.add(&mut no_ipam, add_req("c1"), t0);
    assert_eq!(
        code_of(finish(&mut c, &mut no_ipam, step, Ok(()), t0).0),
        code::ROUTER_ERROR
    );
    assert_eq!(code_of(c.status(&no_ipam)), code::ROUTER_ERROR);
}

#[test]
fn add_answers_once_recorded_and_hands_out_nothing_it_could_not_record() {
    let (mut c, mut m, now) = ready(Instant::now());
    let Gateway::Ready(gw) = c.gateway else {
        unreachable!()
    };
    let r = add_ok(&mut c, &mut m, "c1", now);
    assert_eq!(r.gateway, gw.addr().to_string());
    assert_eq!((r.mtu, r.bridge.as_str()), (MTU, "weft"));
    let ip: ipnet::Ipv4Net = r.ip.parse().unwrap();
    assert_ne!(ip.addr(), gw.addr());
    assert_eq!(ip.prefix_len(), gw.prefix_len());
    // The same attachment again: the same address (a retried ADD).
    assert_eq!(add_ok(&mut c, &mut m, "c1", now).ip, r.ip);

    // A new attachment whose record cannot be written: "try again later", address released.
    let step = c.add(&mut m, add_req("c2"), now);
    let Step::Write(writes, _) = &step else {
        panic!("an ADD is recorded first")
    };
    assert_eq!(writes[0].file, StateFile::Ipam);
    let (answer, _) = finish(&mut c, &mut m, step, Err("disk full".into()), now);
    let e = answer.expect_err("not handed out");
    assert_eq!(e.code, code::TRY_AGAIN_LATER);
    assert!(e.error.contains("disk full"), "{e:?}");
    assert!(m.ipam_lookup(&key(&att("c2"))).is_none(), "released");
    // A retried ADD of an address recorded earlier keeps it when the write fails (the pod
    // may hold it).
    let step = c.add(&mut m, add_req("c1"), now);
    assert!(finish(&mut c, &mut m, step, Err("disk full".into()), now)
        .0
        .is_err());
    let kept = m.ipam_lookup(&key(&att("c1"))).expect("kept");
    assert_eq!(format!("{}/{}", kept.ip, kept.prefix_len), r.ip);
    assert_eq!(kept.pod.as_deref(), Some("default/pod-c1"));
}

#[test]
fn the_range_running_out_is_range_exhausted() {
    let (mut c, mut m, mut now) = ready(Instant::now());
    // 10.40.0.0/24: 256 addresses, the gateway holds one; past the last, RANGE_EXHAUSTED.
    for i in 0..300 {
        let step = c.add(&mut m, add_req(&format!("c{i}")), now);
        match finish(&mut c, &mut m, step, Ok(()), now).0 {
            Ok(AddOutcome::Done(_)) => {}
            Ok(AddOutcome::RetryAt(at)) => {
                now = at;
                m.handle(Input::Tick, now);
            }
            Err(e) => {
                assert_eq!(e.code, code::RANGE_EXHAUSTED, "{e:?}");
                assert!(i > 200, "exhausted after {i} pods");
                return;
            }
        }
    }
    panic!("the range never ran out");
}

#[test]
fn attached_checks_what_the_plugin_says_and_records_before_it_gossips() {
    let (mut c, mut m, now) = ready(Instant::now());
    // No ADD first.
    let step = c.attached(&m, attached_req("c1", "02:00:00:00:00:01"));
    assert_eq!(
        code_of(finish(&mut c, &mut m, step, Ok(()), now).0),
        code::ROUTER_ERROR
    );
    add_ok(&mut c, &mut m, "c1", now);
    for bad in [
        "03:00:00:00:00:01",
        "00:00:00:00:00:00",
        "02:00:00:00:01",
        "zz",
    ] {
        let step = c.attached(&m, attached_req("c1", bad));
        let e = finish(&mut c, &mut m, step, Ok(()), now).0.expect_err(bad);
        assert!(e.error.contains("invalid MAC"), "{bad}: {e:?}");
    }
    let mut wrong_port = attached_req("c1", "02:00:00:00:00:01");
    wrong_port.host_ifname = "eth0".into();
    let step = c.attached(&m, wrong_port);
    let e = finish(&mut c, &mut m, step, Ok(()), now)
        .0
        .expect_err("a port weft-net did not make");
    assert!(e.error.contains("is not the one weft-net makes"), "{e:?}");
    assert!(c.endpoints.is_empty() && m.endpoints().is_empty());

    // The record cannot be written: nothing kept, nothing gossiped.
    c.guard_dirty = false;
    let step = c.attached(&m, attached_req("c1", "02:00:00:00:00:01"));
    let e = finish(&mut c, &mut m, step, Err("read-only".into()), now)
        .0
        .unwrap_err();
    assert_eq!(e.code, code::TRY_AGAIN_LATER);
    assert!(c.endpoints.is_empty(), "undone");
    assert!(m.endpoints().is_empty(), "not gossiped");
    assert!(!c.guard_dirty, "the guard has nothing new");

    // Recorded: written as the endpoints file, then gossiped and guarded.
    let step = c.attached(&m, attached_req("c1", "02:AB:00:00:00:01"));
    let Step::Write(writes, _) = &step else {
        panic!("recorded first")
    };
    assert_eq!(writes[0].file, StateFile::Endpoints);
    let list: Vec<(Attachment, LocalEndpoint)> = serde_json::from_slice(&writes[0].bytes).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].1.mac, "02:ab:00:00:00:01", "stored in lower case");
    assert!(
        m.endpoints().is_empty(),
        "not gossiped before it is written"
    );
    finish(&mut c, &mut m, step, Ok(()), now).0.unwrap();
    assert!(c.guard_dirty);
    let gossip = m.endpoints();
    assert_eq!(gossip.len(), 1, "gossiped: {gossip:?}");
    assert_eq!(gossip[0].0, m.identity().name);
    assert_eq!(gossip[0].1.mac, [2, 0xab, 0, 0, 0, 1]);
    let ports = c.guard_ports();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].mac, [2, 0xab, 0, 0, 0, 1]);
    assert_eq!(
        ports[0].host_ifname,
        weft_fastpath::host_ifname_for("c1", "eth0")
    );
    let gossiped = c.gossip_endpoints();
    assert_eq!(gossiped.len(), 1);
    assert_eq!(gossiped[0].pod.as_deref(), Some("default/pod-c1"));
    assert_eq!(
        ports[0].ipv4,
        vec![list[0].1.ip.parse::<Ipv4Addr>().unwrap()]
    );

    // Re-attached with a new MAC whose record fails: the old endpoint stays.
    let step = c.attached(&m, attached_req("c1", "02:00:00:00:00:09"));
    finish(&mut c, &mut m, step, Err("read-only".into()), now)
        .0
        .unwrap_err();
    assert_eq!(c.endpoints[&att("c1")].mac, "02:ab:00:00:00:01");
}

#[test]
fn del_and_gc_release_even_when_the_write_fails_and_gc_keeps_the_gateway() {
    let (mut c, mut m, now) = ready(Instant::now());
    for (i, id) in ["c1", "c2", "c3"].into_iter().enumerate() {
        add_ok(&mut c, &mut m, id, now);
        attach_ok(
            &mut c,
            &mut m,
            id,
            &format!("02:00:00:00:00:0{}", i + 1),
            now,
        );
    }
    assert_eq!(m.endpoints().len(), 3);
    // DEL whose writes fail: released and forgotten anyway (never the reverse).
    let step = c.del(&mut m, att("c1"), now);
    let (_, writes) = finish(&mut c, &mut m, step, Err("disk full".into()), now);
    let files: Vec<_> = writes.iter().map(|w| w.file).collect();
    assert_eq!(files, [StateFile::Ipam, StateFile::Endpoints]);
    assert!(m.ipam_lookup(&key(&att("c1"))).is_none());
    assert!(!c.endpoints.contains_key(&att("c1")));
    let macs: Vec<_> = m.endpoints().into_iter().map(|(_, e)| e.mac[5]).collect();
    assert_eq!(macs, [2, 3], "the endpoint's removal is gossiped");
    // A DEL of what is not there writes nothing.
    assert!(matches!(c.del(&mut m, att("c1"), now), Step::Done(())));
    assert_eq!(c.check(&m, &att("c1")), Ok(None));
    // CHECK of a live one gives what ADD gave.
    let c2 = c.check(&m, &att("c2")).unwrap().expect("c2 has an address");
    assert_eq!(c2.ip, add_ok(&mut c, &mut m, "c2", now).ip);

    // GC with only c3 valid: c2 goes, c3 and the gateway stay.
    let step = c.gc(
        &mut m,
        GcRequest {
            valid: vec![att("c3")],
        },
        now,
    );
    let (reply, writes) = finish(&mut c, &mut m, step, Ok(()), now);
    assert_eq!(reply.released, 1);
    assert_eq!(writes.len(), 2);
    assert!(m.ipam_lookup(&key(&att("c2"))).is_none());
    assert!(m.ipam_lookup(&key(&att("c3"))).is_some());
    assert!(
        m.ipam_lookup(&gateway_key()).is_some(),
        "the gateway is never collected"
    );
    assert_eq!(c.endpoints.keys().collect::<Vec<_>>(), [&att("c3")]);
    // Nothing to collect: nothing written.
    let step = c.gc(
        &mut m,
        GcRequest {
            valid: vec![att("c3")],
        },
        now,
    );
    assert!(matches!(step, Step::Done(GcReply { released: 0 })));
}

#[test]
fn check_while_the_gateway_is_not_ready_is_try_again_later() {
    let (mut c, mut m, now) = ready(Instant::now());
    add_ok(&mut c, &mut m, "c1", now);
    let Gateway::Ready(net) = c.gateway else {
        unreachable!()
    };
    c.gateway = Gateway::Failed(net, "gone".into());
    assert_eq!(code_of(c.check(&m, &att("c1"))), code::TRY_AGAIN_LATER);
    let e = c.status(&m).unwrap_err();
    assert!(e.error.contains("could not be set: gone"), "{e:?}");
}

#[test]
fn rm_peer_of_an_unknown_peer_is_refused_with_the_name() {
    let (mut c, mut m, now) = ready(Instant::now());
    let step = c.rm_peer(
        &mut m,
        RmPeerRequest {
            peer: "nobody".into(),
            force: false,
        },
        now,
    );
    let e = finish(&mut c, &mut m, step, Ok(()), now).0.unwrap_err();
    assert_eq!(e.code, code::ROUTER_ERROR);
    assert!(e.error.contains("\"nobody\""), "{e:?}");
}

#[test]
fn the_pod_mtu_fits_every_confirmed_path_and_never_drops_below_576() {
    assert_eq!(pod_mtu(1376, []), 1376, "no peer: as configured");
    assert_eq!(pod_mtu(1376, [1400, 1300, 1420]), 1300, "the smallest path");
    assert_eq!(
        pod_mtu(1376, [9000]),
        1376,
        "never above the configured MTU"
    );
    assert_eq!(pod_mtu(1376, [400]), MIN_POD_MTU);
}

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
