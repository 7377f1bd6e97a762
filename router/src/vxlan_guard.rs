//! The VXLAN guard: one nftables table, `ip weft-vxlan-guard`, that lets into the VXLAN port
//! only what a peer sent: datagrams from the underlay addresses of the fastpath's peers, and in
//! an encrypted mesh only those that came out of IPsec.
//!
//! The kernel VXLAN device decapsulates whatever reaches its port onto the pods' bridge, from
//! any source; `nolearning` only stops it from learning where to *send*. Without the guard any
//! host on the underlay (or a pod, through its gateway) could put frames on the bridge. The
//! input hook runs before UDP hands the datagram to the VXLAN socket. `meta secpath` (nft's
//! older name for `meta ipsec`) is set only on packets that ESP decrypted: with ESP the
//! kernel's `in` policy already refuses plaintext from an encrypted peer, and the rule refuses
//! it from everyone else. Heartbeats take the same path, so a peer missing from the set is
//! never judged healthy. The table is replaced in one transaction whenever the peers' addresses
//! change, and removed whenever the fastpath does not run.

use crate::nft_table::IpTable;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Set, SetTypeValue};
use nftables::stmt::{Counter, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use std::borrow::Cow;
use std::net::Ipv4Addr;

/// The table (family `ip`).
pub const TABLE: &str = "weft-vxlan-guard";
const CHAIN: &str = "input";
const PEERS: &str = "peers";
const OWNED: IpTable = IpTable(TABLE);

/// What the guard admits to the VXLAN port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guard {
    pub port: u16,
    /// Only datagrams that ESP decrypted (an encrypted mesh).
    pub esp: bool,
    /// Only datagrams from these addresses; `None`: from anyone (the ESP rule alone).
    pub peers: Option<Vec<Ipv4Addr>>,
}

fn udp_dport(port: u16) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: Cow::Borrowed("udp"),
                field: Cow::Borrowed("dport"),
            },
        ))),
        right: Expression::Number(u32::from(port)),
        op: Operator::EQ,
    })
}

fn drop_rule(matches: Vec<Statement<'static>>, comment: &'static str) -> NfListObject<'static> {
    let mut expr = matches;
    expr.push(Statement::Counter(Counter::Anonymous(None)));
    expr.push(Statement::Drop(None));
    NfListObject::Rule(Rule {
        family: NfFamily::IP,
        table: Cow::Borrowed(TABLE),
        chain: Cow::Borrowed(CHAIN),
        expr: Cow::Owned(expr),
        comment: Some(Cow::Borrowed(comment)),
        ..Default::default()
    })
}

/// The whole table for `g`.
pub fn ruleset(g: &Guard) -> Nftables<'static> {
    let mut b = OWNED.replacing();
    b.add(NfListObject::Chain(Chain {
        family: NfFamily::IP,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(CHAIN),
        _type: Some(NfChainType::Filter),
        hook: Some(NfHook::Input),
        prio: Some(0),
        policy: Some(NfChainPolicy::Accept),
        ..Default::default()
    }));
    if let Some(peers) = &g.peers {
        let mut peers = peers.clone();
        peers.sort_unstable();
        peers.dedup();
        b.add(NfListObject::Set(Box::new(Set {
            family: NfFamily::IP,
            table: Cow::Borrowed(TABLE),
            name: Cow::Borrowed(PEERS),
            handle: None,
            set_type: SetTypeValue::Single(nftables::schema::SetType::Ipv4Addr),
            policy: None,
            flags: None,
            elem: (!peers.is_empty()).then(|| {
                Cow::Owned(
                    peers
                        .iter()
                        .map(|a| Expression::String(Cow::Owned(a.to_string())))
                        .collect(),
                )
            }),
            timeout: None,
            gc_interval: None,
            size: None,
            comment: None,
        })));
        b.add(drop_rule(
            vec![
                udp_dport(g.port),
                Statement::Match(Match {
                    left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
                        PayloadField {
                            protocol: Cow::Borrowed("ip"),
                            field: Cow::Borrowed("saddr"),
                        },
                    ))),
                    right: Expression::String(Cow::Owned(format!("@{PEERS}"))),
                    op: Operator::NEQ,
                }),
            ],
            "weft: VXLAN only from the fastpath's peers",
        ));
    }
    if g.esp {
        b.add(drop_rule(
            vec![
                udp_dport(g.port),
                Statement::Match(Match {
                    left: Expression::Named(NamedExpression::Meta(Meta {
                        key: MetaKey::Secpath,
                    })),
                    right: Expression::Boolean(false),
                    op: Operator::EQ,
                }),
            ],
            "weft: encrypted mesh, VXLAN only through ESP",
        ));
    }
    b.to_nftables()
}

/// Installs (or replaces) the guard in the current network namespace.
pub fn apply_guard(g: &Guard) -> anyhow::Result<()> {
    OWNED.apply(&ruleset(g))
}

/// The ESP rule alone, from anyone: [`apply_guard`] with `esp` and no peer list.
pub fn apply(port: u16) -> anyhow::Result<()> {
    apply_guard(&Guard {
        port,
        esp: true,
        peers: None,
    })
}

/// Removes the guard; nothing to remove is fine.
pub fn remove() -> anyhow::Result<()> {
    OWNED.remove()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_transaction_with_the_port_and_the_ipsec_match() {
        let r = ruleset(&Guard {
            port: 6785,
            esp: true,
            peers: None,
        });
        let json = serde_json::to_string(&r).unwrap();
        eprintln!("{json}");
        // add, delete, add table; chain; rule.
        assert_eq!(r.objects.len(), 5);
        assert!(json.contains("\"dport\""), "{json}");
        assert!(json.contains("6785"), "{json}");
        assert!(json.contains("\"drop\""), "{json}");
    }

    #[test]
    fn peers_in_a_set_and_both_rules_when_encrypted() {
        let g = Guard {
            port: 6785,
            esp: true,
            peers: Some(vec![
                [10, 0, 0, 2].into(),
                [10, 0, 0, 1].into(),
                [10, 0, 0, 2].into(),
            ]),
        };
        let json = serde_json::to_string(&ruleset(&g)).unwrap();
        // add, delete, add table; chain; set; two rules.
        assert_eq!(ruleset(&g).objects.len(), 7, "{json}");
        assert!(
            json.contains("\"10.0.0.1\",\"10.0.0.2\""),
            "sorted, once each: {json}"
        );
        assert!(json.contains("@peers"), "{json}");
        let none = Guard {
            peers: Some(vec![]),
            esp: false,
            ..g
        };
        let json = serde_json::to_string(&ruleset(&none)).unwrap();
        assert!(
            json.contains("@peers") && !json.contains("secpath"),
            "{json}"
        );
    }
}
