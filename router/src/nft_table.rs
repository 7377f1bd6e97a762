//! An nftables table of family `ip` that weft owns whole (`ip weft`, `ip weft-vxlan-guard`):
//! always replaced in one transaction (create-if-missing, delete, build again in a single
//! `nft -j -f` batch, so there is never a moment without the rules and a table left by an
//! earlier run is replaced whole) and removed whole.

use nftables::batch::Batch;
use nftables::schema::{NfListObject, Nftables, Table};
use nftables::types::NfFamily;
use std::borrow::Cow;

/// One table, by name.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IpTable(pub &'static str);

impl IpTable {
    pub(crate) fn table(self) -> Table<'static> {
        Table {
            family: NfFamily::IP,
            name: Cow::Borrowed(self.0),
            handle: None,
        }
    }

    /// A batch that starts by replacing the table with an empty one; the caller adds the
    /// chains and rules.
    pub(crate) fn replacing(self) -> Batch<'static> {
        let mut b = Batch::new();
        b.add(NfListObject::Table(self.table()));
        b.delete(NfListObject::Table(self.table()));
        b.add(NfListObject::Table(self.table()));
        b
    }

    /// Applies a ruleset built from [`IpTable::replacing`] in the current network namespace.
    pub(crate) fn apply(self, ruleset: &Nftables) -> anyhow::Result<()> {
        nftables::helper::apply_ruleset(ruleset).map_err(|e| {
            anyhow::anyhow!("applying the nftables table {}: {}", self.0, nft_error(&e))
        })
    }

    /// Removes the table; nothing to remove is fine.
    pub(crate) fn remove(self) -> anyhow::Result<()> {
        let mut b = Batch::new();
        b.add(NfListObject::Table(self.table()));
        b.delete(NfListObject::Table(self.table()));
        nftables::helper::apply_ruleset(&b.to_nftables()).map_err(|e| {
            anyhow::anyhow!("removing the nftables table {}: {}", self.0, nft_error(&e))
        })
    }
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
