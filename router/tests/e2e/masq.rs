//! The masquerade table applied with nft in a throwaway network namespace: created, replaced
//! atomically (one rule after two applies), removed. Needs root and nft; `#[ignore]`d unless asked for (see main.rs).

use std::net::Ipv4Addr;
use std::process::Command;

struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn nft_list(ns: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "ruleset"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn masquerade_table_apply_replace_remove() {
    if let Err(e) = weft::lab::check_prerequisites() {
        panic!("this test needs root, iproute2 and nft: {e:#}");
    }
    let ns = Netns(format!("wmasq-{}", weft::lab::random_alnum(6)));
    assert!(Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .unwrap()
        .success());
    let name = ns.0.clone();
    weft::lab::run_in_netns(&name, || weft::masq::apply(Ipv4Addr::new(10, 32, 0, 0), 12))
        .unwrap()
        .unwrap();
    let first = nft_list(&ns.0);
    assert!(first.contains("table ip weft"), "{first}");
    assert!(
        first.contains("ip saddr 10.32.0.0/12 ip daddr != 10.32.0.0/12")
            && first.contains("masquerade"),
        "{first}"
    );
    // Applying again (e.g. after a restart, or with another range) replaces, never duplicates.
    weft::lab::run_in_netns(&name, || weft::masq::apply(Ipv4Addr::new(10, 40, 0, 0), 16))
        .unwrap()
        .unwrap();
    let second = nft_list(&ns.0);
    assert_eq!(second.matches("masquerade").count(), 1, "{second}");
    assert!(second.contains("10.40.0.0/16") && !second.contains("10.32.0.0/12"));
    weft::lab::run_in_netns(&name, weft::masq::remove)
        .unwrap()
        .unwrap();
    assert!(!nft_list(&ns.0).contains("table ip weft"));
    // Removing nothing is fine.
    weft::lab::run_in_netns(&name, weft::masq::remove)
        .unwrap()
        .unwrap();
}
