//! The VXLAN guard of an encrypted mesh (`weft::vxlan_guard`) with the real kernel: two
//! namespaces joined by plain kernel VXLAN on the weft port. Without the guard the receiver
//! decapsulates plaintext VXLAN; with it, every such datagram is dropped and counted while
//! the underlay itself keeps working; removing it restores VXLAN. (ESP itself, which the guard
//! lets through, needs a kernel with ESP: see the VM test in `fastpath.rs`.)
//! Needs root, iproute2, nft and ping; `#[ignore]`d unless asked for (see main.rs).

use crate::common::*;
use std::process::{Command, Stdio};
use weft_fastpath::netns::Netns;

const PORT: u16 = 6785;

fn pings(ns: &str, to: &str) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-c", "2", "-i", "0.2", "-W", "1", to,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Namespaces(Vec<String>);
impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn the_guard_drops_plaintext_vxlan_and_nothing_else() {
    prerequisites();
    let tag = weft::lab::random_alnum(5);
    let (a, b) = (format!("wg-{tag}-a"), format!("wg-{tag}-b"));
    let _ns = Namespaces(vec![a.clone(), b.clone()]);
    for n in [&a, &b] {
        ip(&["netns", "add", n]);
        ip(&["-n", n, "link", "set", "lo", "up"]);
    }
    ip(&[
        "-n", &a, "link", "add", "u0", "type", "veth", "peer", "name", "u0", "netns", &b,
    ]);
    for (n, me, peer, inner) in [
        (&a, "10.77.0.1", "10.77.0.2", "10.78.0.1/24"),
        (&b, "10.77.0.2", "10.77.0.1", "10.78.0.2/24"),
    ] {
        ip(&["-n", n, "addr", "add", &format!("{me}/24"), "dev", "u0"]);
        ip(&["-n", n, "link", "set", "u0", "up"]);
        ip(&[
            "-n",
            n,
            "link",
            "add",
            "vx0",
            "type",
            "vxlan",
            "id",
            "42",
            "local",
            me,
            "remote",
            peer,
            "dstport",
            &PORT.to_string(),
            "dev",
            "u0",
        ]);
        ip(&["-n", n, "addr", "add", inner, "dev", "vx0"]);
        ip(&["-n", n, "link", "set", "vx0", "up"]);
    }
    assert!(
        pings(&a, "10.78.0.2"),
        "plain VXLAN works without the guard"
    );

    let nb = Netns::open(format!("/run/netns/{b}")).unwrap();
    nb.run_blocking(|| weft::vxlan_guard::apply(PORT))
        .unwrap()
        .expect("guard applied");
    assert!(!pings(&a, "10.78.0.2"), "plaintext VXLAN is dropped");
    assert!(pings(&a, "10.77.0.2"), "the underlay itself is not touched");
    let listing = Command::new("ip")
        .args([
            "netns",
            "exec",
            &b,
            "nft",
            "list",
            "table",
            "ip",
            weft::vxlan_guard::TABLE,
        ])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    let dropped: u64 = listing
        .split("packets ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(dropped >= 2, "the drops are counted: {listing}");
    assert!(listing.contains("dport 6785"), "{listing}");

    // Applying twice replaces the table (one transaction), removing it twice is fine.
    nb.run_blocking(|| weft::vxlan_guard::apply(PORT))
        .unwrap()
        .unwrap();
    nb.run_blocking(weft::vxlan_guard::remove).unwrap().unwrap();
    nb.run_blocking(weft::vxlan_guard::remove).unwrap().unwrap();
    assert!(
        pings(&a, "10.78.0.2"),
        "VXLAN works again without the guard"
    );
}
