//! Sysctls through `/proc/sys`.
//!
//! Keys are written in path form (`net/ipv4/ip_forward`, `net/ipv4/conf/weft/rp_filter`), not
//! the dotted form, because interface names may contain dots. `/proc/sys/net` shows the
//! namespace of the thread that opens the file, so these calls act on the caller's namespace.
//!
//! [`ensure`] reads first and writes only on a difference: on a host where the value is already
//! right but `/proc/sys` is read-only (some container setups) nothing fails.

use std::io::Write;

use crate::error::{Error, Result};
use crate::netns::current_netns_label;

fn path_of(key: &str) -> String {
    format!("/proc/sys/{}", key.trim_start_matches('/'))
}

/// Read a sysctl (trimmed).
pub fn read(key: &str) -> Result<String> {
    std::fs::read_to_string(path_of(key))
        .map(|s| s.trim().to_string())
        .map_err(|source| Error::Sysctl {
            key: key.to_string(),
            ns: current_netns_label(),
            op: "read",
            source,
        })
}

/// Set a sysctl to `value` unless it already has it. Returns whether it was written.
pub fn ensure(key: &str, value: &str) -> Result<bool> {
    if read(key)? == value {
        return Ok(false);
    }
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).open(path_of(key))?;
        f.write_all(value.as_bytes())
    };
    write().map_err(|source| Error::Sysctl {
        key: key.to_string(),
        ns: current_netns_label(),
        op: "write",
        source,
    })?;
    Ok(true)
}
