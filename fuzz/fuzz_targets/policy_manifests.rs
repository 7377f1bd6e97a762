//! NetworkPolicy, Pod and Namespace manifests (`weft_policy::manifests::parse`, the source of
//! `--manifests DIR`) from arbitrary text, as YAML and as JSON, then compiled and rendered:
//! never panics, whatever the text holds; the nft script keeps input names inside their
//! quotes; and the rendered ruleset agrees with the compiled model on a few queries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr};
use weft_policy::{manifests, Compiled, LogSettings, Protocol, Ruleset};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for name in ["fuzz.yaml", "fuzz.json"] {
        let m = manifests::parse([(name, text)]);
        let c = Compiled::new(&m.cluster);
        let ips: Vec<IpAddr> = c
            .pods()
            .iter()
            .flat_map(|p| p.ips.iter().copied())
            .collect();
        let rs = Ruleset::build(&c, &ips, &LogSettings::default());
        // Names from the input reach the nft script (log prefixes, counter comments): none
        // may break out of its quotes or start a line of its own.
        for line in rs.to_nft().lines() {
            assert_eq!(
                line.matches('"').count() % 2,
                0,
                "unbalanced quotes: {line}"
            );
        }
        // The property the tests check: with every pod local, the table admits exactly
        // what the model allows. Only for distinct IPv4 pod addresses (the test's domain:
        // two pods claiming one address, or IPv6, are out of it), and a few of them.
        let mut distinct = ips.clone();
        distinct.sort();
        distinct.dedup();
        if distinct.len() != ips.len() || ips.iter().any(|a| a.is_ipv6()) {
            continue;
        }
        let mut addrs: Vec<IpAddr> = ips.iter().copied().take(4).collect();
        addrs.push(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        for &s in &addrs {
            for &d in &addrs {
                if c.pod_by_ip(s).is_some() && c.pod_by_ip(s) == c.pod_by_ip(d) {
                    continue; // a pod always reaches itself; not the table's business
                }
                for (proto, port) in [(Protocol::Tcp, 80), (Protocol::Udp, 53)] {
                    assert_eq!(
                        c.allowed(s, d, proto, port),
                        rs.admits(s, d, proto, port),
                        "model and ruleset disagree: {s} -> {d} {proto:?}/{port}"
                    );
                }
            }
        }
    }
});
