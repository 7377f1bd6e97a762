//! Masquerade for pod traffic leaving the cluster range: one nftables table `ip weft`, replaced
//! in one atomic transaction (add + delete + re-create in a single `nft -j -f` batch, so there
//! is never a moment without the rule, and a table left by an earlier run is replaced whole).

use nftables::batch::Batch;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use std::borrow::Cow;
use std::net::Ipv4Addr;

/// The nftables table weft owns (family `ip`).
pub const TABLE: &str = "weft";
const CHAIN: &str = "postrouting";
/// `srcnat` priority.
const SRCNAT: i32 = 100;

fn table() -> Table<'static> {
    Table {
        family: NfFamily::IP,
        name: Cow::Borrowed(TABLE),
        handle: None,
    }
}

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
    let mut b = Batch::new();
    // Create-if-missing, then delete, then build: one transaction that works whether or not
    // an earlier table exists.
    b.add(NfListObject::Table(table()));
    b.delete(NfListObject::Table(table()));
    b.add(NfListObject::Table(table()));
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
    nftables::helper::apply_ruleset(&ruleset(net, len))
        .map_err(|e| anyhow::anyhow!("applying the nftables table {TABLE}: {}", nft_error(&e)))
}

/// An `nftables` helper error with what `nft` said (its Display form leaves stderr out).
pub(crate) fn nft_error(e: &nftables::helper::NftablesError) -> String {
    match e {
        nftables::helper::NftablesError::NftFailed { stderr, .. } if !stderr.trim().is_empty() => {
            format!("{e}: {}", stderr.trim())
        }
        _ => e.to_string(),
    }
}

/// Removes the table; nothing to remove is fine.
pub fn remove() -> anyhow::Result<()> {
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));
    b.delete(NfListObject::Table(table()));
    nftables::helper::apply_ruleset(&b.to_nftables())
        .map_err(|e| anyhow::anyhow!("removing the nftables table {TABLE}: {}", nft_error(&e)))
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
