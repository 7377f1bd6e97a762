//! FDB reconciliation against the real kernel: entries removed behind our back come back,
//! stale ones go, changed ones are fixed, foreign ones stay; the cost with 1,000 MACs. Needs
//! root.

mod common;

use std::net::Ipv4Addr;
use std::time::Instant;

use common::{require_root, run, TestNs};
use weft_fastpath::fdb::reconcile::{list, BridgeKind, Counts};
use weft_fastpath::fdb::{reconcile, DesiredFdb, FdbPorts, Mac, ReconcileReport};
use weft_fastpath::{setup_node, setup_vxlan, NodeConfig, VxlanConfig};

fn mac(i: u32) -> Mac {
    let b = i.to_be_bytes();
    [0x02, 0xaa, b[0], b[1], b[2], b[3]]
}

fn fmt(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// 1,000 MACs: even ones on the fastpath (spread over 10 peers), odd ones on the sleeve, plus
/// a probe entry per peer.
fn desired(fastpath_from: u32) -> DesiredFdb {
    let mut d = DesiredFdb::new();
    for i in 0..1000u32 {
        let peer = Ipv4Addr::new(198, 18, 1, (i % 10) as u8 + 1);
        if i % 2 == 0 || i >= fastpath_from {
            d.fastpath(mac(i), peer);
        } else {
            d.sleeve(mac(i));
        }
    }
    for p in 0..10u8 {
        d.probe([0x02, 0xbb, 0, 0, 0, p], Ipv4Addr::new(198, 18, 1, p + 1));
    }
    d
}

async fn reconcile_in(host: &TestNs, d: DesiredFdb) -> (ReconcileReport, f64) {
    host.open()
        .run(move |nl| async move {
            let ports = FdbPorts::lookup(&nl, "weft", "weft-vxlan", "weft-tap").await?;
            let t = Instant::now();
            let r = reconcile(&nl, &ports, &d).await?;
            Ok((r, t.elapsed().as_secs_f64() * 1000.0))
        })
        .await
        .unwrap()
}

fn fdb(host: &TestNs, dev: &str) -> String {
    run("bridge", &["-n", &host.name, "fdb", "show", "dev", dev])
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn reconcile_restores_removes_fixes_and_is_cheap_at_1000_macs() {
    require_root!();
    let host = TestNs::new("host");
    host.open()
        .run(|_| async {
            setup_node(&NodeConfig::default()).await?;
            setup_vxlan(&VxlanConfig::default()).await
        })
        .await
        .unwrap();
    // A foreign port with an operator's static entry: not ours.
    host.ip(&[
        "link", "add", "wfor0", "type", "veth", "peer", "name", "wfor1",
    ]);
    host.ip(&["link", "set", "wfor0", "master", "weft", "up"]);
    run(
        "bridge",
        &[
            "-n",
            &host.name,
            "fdb",
            "add",
            "02:cc:00:00:00:01",
            "dev",
            "wfor0",
            "master",
            "static",
        ],
    );

    let (r, initial_ms) = reconcile_in(&host, desired(u32::MAX)).await;
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!(
        r.bridge,
        Counts {
            added: 1000,
            removed: 0,
            changed: 0
        }
    );
    assert_eq!(
        r.vxlan,
        Counts {
            added: 510,
            removed: 0,
            changed: 0
        }
    );

    let (r, noop_ms) = reconcile_in(&host, desired(u32::MAX)).await;
    assert_eq!(r.total_changes(), 0, "{r:?}");

    // Behind our back: a VXLAN entry and a bridge entry deleted, a VXLAN destination changed,
    // a bridge entry moved to the other port and made non-sticky, stale entries of both kinds
    // added, a default (all-zeros) VXLAN destination added.
    let b = |args: &[&str]| {
        let mut all = vec!["-n", host.name.as_str(), "fdb"];
        all.extend_from_slice(args);
        run("bridge", &all)
    };
    b(&["del", &fmt(&mac(0)), "dev", "weft-vxlan", "self"]);
    b(&["del", &fmt(&mac(1)), "dev", "weft-tap", "master"]);
    b(&[
        "replace",
        &fmt(&mac(2)),
        "dev",
        "weft-vxlan",
        "self",
        "dst",
        "198.18.9.9",
    ]);
    b(&[
        "replace",
        &fmt(&mac(4)),
        "dev",
        "weft-tap",
        "master",
        "static",
    ]);
    b(&[
        "add",
        "02:ff:00:00:00:01",
        "dev",
        "weft-vxlan",
        "self",
        "dst",
        "198.18.0.50",
    ]);
    b(&[
        "add",
        "02:ff:00:00:00:02",
        "dev",
        "weft-tap",
        "master",
        "static",
        "sticky",
    ]);
    b(&[
        "append",
        "00:00:00:00:00:00",
        "dev",
        "weft-vxlan",
        "self",
        "dst",
        "198.18.0.77",
    ]);

    let (r, repair_ms) = reconcile_in(&host, desired(u32::MAX)).await;
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!(
        r.vxlan,
        Counts {
            added: 1,
            removed: 2,
            changed: 1
        },
        "{r:?}"
    );
    assert_eq!(
        r.bridge,
        Counts {
            added: 1,
            removed: 1,
            changed: 1
        },
        "{r:?}"
    );
    let vx = fdb(&host, "weft-vxlan");
    assert!(
        vx.contains(&format!("{} dst 198.18.1.1 self permanent", fmt(&mac(0)))),
        "{vx}"
    );
    assert!(vx.contains(&format!("{} dst 198.18.1.3 self permanent", fmt(&mac(2)))));
    assert!(!vx.contains("198.18.9.9") && !vx.contains("02:ff:00:00:00:01"));
    assert!(
        !vx.contains("00:00:00:00:00:00"),
        "default destination removed"
    );
    assert!(vx.contains(&format!("{} sticky master weft static", fmt(&mac(4)))));
    let tap = fdb(&host, "weft-tap");
    assert!(tap.contains(&format!("{} sticky master weft static", fmt(&mac(1)))));
    assert!(!tap.contains("02:ff:00:00:00:02"));
    // Foreign and kernel entries untouched.
    assert!(fdb(&host, "wfor0").contains("02:cc:00:00:00:01 master weft static"));
    let own_tap_mac = common::mac_of(&host, "weft-tap");
    assert!(tap.contains(&format!("{} master weft permanent", fmt(&own_tap_mac))));

    // 100 sleeve MACs move to the fastpath: 100 bridge changes, 100 VXLAN entries added.
    let (r, move_ms) = reconcile_in(&host, desired(800)).await;
    assert_eq!(
        r.bridge,
        Counts {
            added: 0,
            removed: 0,
            changed: 100
        }
    );
    assert_eq!(
        r.vxlan,
        Counts {
            added: 100,
            removed: 0,
            changed: 0
        }
    );
    // And everything goes away when nothing is desired (except what is not ours).
    let (r, clear_ms) = reconcile_in(&host, DesiredFdb::new()).await;
    assert_eq!(r.bridge.removed, 1000);
    assert_eq!(r.vxlan.removed, 610);
    let left = host
        .open()
        .run(|nl| async move {
            let ports = FdbPorts::lookup(&nl, "weft", "weft-vxlan", "weft-tap").await?;
            list(&nl, &ports).await
        })
        .await
        .unwrap();
    assert!(left.vxlan.is_empty());
    assert!(left.bridge.iter().all(|e| e.kind == BridgeKind::Local
        || e.mac == [0x02, 0xcc, 0, 0, 0, 1]
        || e.kind == BridgeKind::Dynamic));

    // A desired MAC that is a local address of the bridge is never taken over.
    let mut d = DesiredFdb::new();
    d.sleeve(own_tap_mac);
    let (r, _) = reconcile_in(&host, d).await;
    assert_eq!(r.conflicts, vec![own_tap_mac]);
    assert_eq!(r.total_changes(), 0);
    assert!(
        fdb(&host, "weft-tap").contains(&format!("{} master weft permanent", fmt(&own_tap_mac)))
    );

    eprintln!(
        "reconcile timings (1,000 MACs, 1,510 entries): initial {initial_ms:.1} ms, no-op {noop_ms:.1} ms, \
         repair of 7 {repair_ms:.1} ms, move of 100 {move_ms:.1} ms, clear {clear_ms:.1} ms"
    );
    // Cheap enough to run every few seconds, and after every switch.
    assert!(noop_ms < 200.0, "no-op reconcile took {noop_ms} ms");
}
