//! Masquerade for pod traffic leaving the cluster range: one nftables table `ip weft`, replaced
//! in one atomic transaction (see [`crate::nft_table`]).

use crate::nft_table::IpTable;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{Chain, NfListObject, Nftables, Rule};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use std::borrow::Cow;
use std::net::Ipv4Addr;

/// The nftables table weft owns (family `ip`).
pub const TABLE: &str = "weft";
const OWNED: IpTable = IpTable(TABLE);
const CHAIN: &str = "postrouting";
/// `srcnat` priority.
const SRCNAT: i32 = 100;

fn addr_field(field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed("ip"),
            field: Cow::Borrowed(field),
        },
    )))
}

fn prefix(net: Ipv4Addr, len: u8) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(Cow::Owned(net.to_string()))),
        len: u32::from(len),
    }))
}

/// The whole `weft` table for a cluster range `net/len`: traffic from the range to anywhere
/// outside it leaves with the node's address.
pub fn ruleset(net: Ipv4Addr, len: u8) -> Nftables<'static> {
    let mut b = OWNED.replacing();
    b.add(NfListObject::Chain(Chain {
        family: NfFamily::IP,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(CHAIN),
        _type: Some(NfChainType::NAT),
        hook: Some(NfHook::Postrouting),
        prio: Some(SRCNAT),
        policy: Some(NfChainPolicy::Accept),
        ..Default::default()
    }));
    b.add(NfListObject::Rule(Rule {
        family: NfFamily::IP,
        table: Cow::Borrowed(TABLE),
        chain: Cow::Borrowed(CHAIN),
        expr: Cow::Owned(vec![
            Statement::Match(Match {
                left: addr_field("saddr"),
                right: prefix(net, len),
                op: Operator::EQ,
            }),
            Statement::Match(Match {
                left: addr_field("daddr"),
                right: prefix(net, len),
                op: Operator::NEQ,
            }),
            Statement::Masquerade(None),
        ]),
        comment: Some(Cow::Borrowed("weft: pods leaving the cluster range")),
        ..Default::default()
    }));
    b.to_nftables()
}

/// Installs (or replaces) the masquerade table in the current network namespace.
pub fn apply(net: Ipv4Addr, len: u8) -> anyhow::Result<()> {
    OWNED.apply(&ruleset(net, len))
}

/// Removes the table; nothing to remove is fine.
pub fn remove() -> anyhow::Result<()> {
    OWNED.remove()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_is_one_atomic_batch_with_the_range() {
        let r = ruleset(Ipv4Addr::new(10, 32, 0, 0), 12);
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"masquerade\""), "{json}");
        assert!(json.contains("10.32.0.0"), "{json}");
        assert!(json.contains("\"!=\""), "{json}");
        // add, delete, add table, chain, rule: one batch
        assert_eq!(r.objects.len(), 5);
    }
}
