//! The VXLAN guard of an encrypted mesh: one nftables table, `ip weft-vxlan-guard`, that drops
//! every datagram to the VXLAN port that did not come out of IPsec.
//!
//! With ESP the kernel's `in` policy already refuses plaintext VXLAN from the address of an
//! encrypted peer; VXLAN from any other address matches no policy, and the VXLAN device would
//! decapsulate it onto the pods' bridge. The input hook runs before UDP hands the datagram to
//! the VXLAN socket, and `meta secpath` (nft's older name for `meta ipsec`) is set only on
//! packets that ESP decrypted, so the rule lets exactly the encrypted fastpath through.
//! Heartbeats take that path too. The table is replaced in one transaction and removed
//! whenever the fastpath runs without encryption or not at all.

use crate::nft_table::IpTable;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField};
use nftables::schema::{Chain, NfListObject, Nftables, Rule};
use nftables::stmt::{Counter, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use std::borrow::Cow;

/// The table (family `ip`).
pub const TABLE: &str = "weft-vxlan-guard";
const CHAIN: &str = "input";
const OWNED: IpTable = IpTable(TABLE);

/// The whole table for VXLAN on UDP `port`.
pub fn ruleset(port: u16) -> Nftables<'static> {
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
    b.add(NfListObject::Rule(Rule {
        family: NfFamily::IP,
        table: Cow::Borrowed(TABLE),
        chain: Cow::Borrowed(CHAIN),
        expr: Cow::Owned(vec![
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
                    PayloadField {
                        protocol: Cow::Borrowed("udp"),
                        field: Cow::Borrowed("dport"),
                    },
                ))),
                right: Expression::Number(u32::from(port)),
                op: Operator::EQ,
            }),
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::Meta(Meta {
                    key: MetaKey::Secpath,
                })),
                right: Expression::Boolean(false),
                op: Operator::EQ,
            }),
            Statement::Counter(Counter::Anonymous(None)),
            Statement::Drop(None),
        ]),
        comment: Some(Cow::Borrowed(
            "weft: encrypted mesh, VXLAN only through ESP",
        )),
        ..Default::default()
    }));
    b.to_nftables()
}

/// Installs (or replaces) the guard in the current network namespace.
pub fn apply(port: u16) -> anyhow::Result<()> {
    OWNED.apply(&ruleset(port))
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
        let r = ruleset(6785);
        let json = serde_json::to_string(&r).unwrap();
        eprintln!("{json}");
        // add, delete, add table; chain; rule.
        assert_eq!(r.objects.len(), 5);
        assert!(json.contains("\"dport\""), "{json}");
        assert!(json.contains("6785"), "{json}");
        assert!(json.contains("\"drop\""), "{json}");
    }
}
