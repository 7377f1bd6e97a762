//! The driver: hands rulesets to `nft` and reads the counters back.
//!
//! Every change is one `nft -f -` run, which the kernel applies as one transaction: all of it
//! or, on any error, none of it. So a failed apply leaves the previous rules in force; the
//! [`Enforcer`] keeps what it last applied and reports the error for status.
//!
//! Why the text form through the `nft` binary (and not JSON, nor the `nftables` crate, which
//! writes JSON): the table needs concatenated interval sets (`addr . l4proto . dport` ranges)
//! and verdict maps with `jump`; the text form is what operators read back with `nft list
//! table`; one script carries a whole replacement or an element-only difference as a single
//! batch; and JSON is not faster for these tables. `bench/policy.sh` loads the dense
//! benchmark table both ways (the JSON being nft's own listing of it): the times are the same,
//! because the kernel's work on sets and chains dominates, not parsing. (nft's JSON reader is
//! faster on long element lists alone, 10–30% on 50,000 elements, which these tables do not
//! have.) The router's masquerade table stays on the crate; both end up in the same kernel API.

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

use crate::model::Direction;
use crate::render::Ruleset;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// What went wrong talking to nft.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("nft refused the {what}: {stderr}")]
    Nft { what: &'static str, stderr: String },
    #[error("cannot open the network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse nft's answer: {0}")]
    Parse(String),
}

/// Named counters of a table: name → (packets, bytes).
pub type Counters = BTreeMap<String, (u64, u64)>;

/// How to run `nft`: which binary, in which network namespace (default: the caller's).
#[derive(Clone, Debug)]
pub struct Nft {
    program: PathBuf,
    netns: Option<PathBuf>,
}

impl Default for Nft {
    fn default() -> Self {
        Nft {
            program: PathBuf::from("nft"),
            netns: None,
        }
    }
}

impl Nft {
    /// `nft` from `PATH`, in the caller's network namespace.
    pub fn new() -> Self {
        Self::default()
    }

    /// `nft` run inside the network namespace at `path` (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub fn in_netns(path: impl AsRef<Path>) -> Self {
        Nft {
            program: PathBuf::from("nft"),
            netns: Some(path.as_ref().to_path_buf()),
        }
    }

    fn run(
        &self,
        args: &[&str],
        stdin: Option<&str>,
        what: &'static str,
    ) -> Result<String, ApplyError> {
        let mut cmd = Command::new(&self.program);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let ns_file = match &self.netns {
            Some(p) => Some(std::fs::File::open(p).map_err(|source| ApplyError::Netns {
                path: p.clone(),
                source,
            })?),
            None => None,
        };
        if let Some(f) = &ns_file {
            let fd = f.as_raw_fd();
            // SAFETY: setns(2) is async-signal-safe; it only changes the child's namespace
            // between fork and exec, and the fd stays open until exec (it is CLOEXEC).
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let spawn_err = |source| ApplyError::Spawn {
            program: self.program.display().to_string(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("piped stdin");
            // A write error means nft exited early; its status and stderr tell why.
            let _ = pipe.write_all(input.as_bytes());
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if !out.status.success() {
            let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if stderr.len() > 2000 {
                stderr.truncate(2000);
                stderr.push_str("...");
            }
            return Err(ApplyError::Nft { what, stderr });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs one script as one transaction.
    pub fn apply_script(&self, script: &str) -> Result<(), ApplyError> {
        self.run(&["-f", "-"], Some(script), "ruleset").map(|_| ())
    }

    /// Checks one script without applying it (`nft --check`): nft parses it and the kernel
    /// validates the transaction, then discards it.
    pub fn check_script(&self, script: &str) -> Result<(), ApplyError> {
        self.run(&["--check", "-f", "-"], Some(script), "ruleset (check)")
            .map(|_| ())
    }

    /// Named counters of a table (`inet` family): name → (packets, bytes). A missing table has
    /// no counters.
    pub fn counters(&self, table: &str) -> Result<Counters, ApplyError> {
        Ok(self.counters_of("inet", table)?.unwrap_or_default())
    }

    /// Named counters of table `table` of `family`: name → (packets, bytes); `None` when the
    /// table does not exist.
    pub fn counters_of(&self, family: &str, table: &str) -> Result<Option<Counters>, ApplyError> {
        match self.run(
            &["-j", "list", "counters", "table", family, table],
            None,
            "counter listing",
        ) {
            Ok(o) => parse_counters(&o).map(Some),
            Err(ApplyError::Nft { stderr, .. }) if stderr.contains("No such file") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes a table (`inet` family); a missing one is fine.
    pub fn delete_table(&self, table: &str) -> Result<(), ApplyError> {
        self.apply_script(&format!("table inet {table}\ndelete table inet {table}\n"))
    }
}

/// Makes bridged IPv4/IPv6 traffic traverse the `inet` hooks (`br_netfilter`) in the calling
/// thread's network namespace, which the policy table needs to see pod↔pod traffic on one
/// node and traffic arriving from the overlay. Returns whether anything was changed.
pub fn ensure_br_netfilter() -> std::io::Result<bool> {
    let mut changed = false;
    for f in ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"] {
        let path = format!("/proc/sys/net/bridge/{f}");
        let now = std::fs::read_to_string(&path).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("{path}: {e} (is br_netfilter available?)"),
            )
        })?;
        if now.trim() != "1" {
            std::fs::write(&path, "1")?;
            changed = true;
        }
    }
    Ok(changed)
}

/// Parses `nft -j list counters` output.
pub fn parse_counters(json: &str) -> Result<BTreeMap<String, (u64, u64)>, ApplyError> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| ApplyError::Parse(e.to_string()))?;
    let mut out = BTreeMap::new();
    for item in v["nftables"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        if let Some(c) = item.get("counter") {
            let name = c["name"]
                .as_str()
                .ok_or_else(|| ApplyError::Parse("counter without a name".into()))?;
            out.insert(
                name.to_string(),
                (
                    c["packets"].as_u64().unwrap_or(0),
                    c["bytes"].as_u64().unwrap_or(0),
                ),
            );
        }
    }
    Ok(out)
}

/// How a ruleset went in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyMode {
    /// Delete and re-create the table, in one transaction.
    Full,
    /// Only element additions and deletions, in one transaction.
    Diff,
    /// Nothing changed; nft was not run.
    Unchanged,
}

/// The outcome of one apply, for logs and status.
#[derive(Clone, Debug, Serialize)]
pub struct ApplyReport {
    pub mode: ApplyMode,
    /// Elements in the ruleset now in force.
    pub elements: usize,
    pub groups: usize,
    pub added: usize,
    pub deleted: usize,
    pub micros: u64,
    /// Set when this apply failed (the previous ruleset is still in force).
    pub error: Option<String>,
}

/// Blocked packets of one (direction, namespace) since the enforcer started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DropCount {
    pub direction: Direction,
    pub namespace: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Keeps the policy table in force: applies rulesets (whole or as differences), remembers the
/// one in force, and keeps drop counters monotonic across whole-table replacements.
#[derive(Debug)]
pub struct Enforcer {
    nft: Nft,
    applied: Option<Ruleset>,
    carried: BTreeMap<String, (u64, u64)>,
    last: Option<ApplyReport>,
}

impl Enforcer {
    pub fn new(nft: Nft) -> Self {
        Enforcer {
            nft,
            applied: None,
            carried: BTreeMap::new(),
            last: None,
        }
    }

    /// The ruleset in force (as far as this enforcer knows).
    pub fn applied(&self) -> Option<&Ruleset> {
        self.applied.as_ref()
    }

    /// The outcome of the last apply (successful or not).
    pub fn last_report(&self) -> Option<&ApplyReport> {
        self.last.as_ref()
    }

    /// Puts `rs` in force: as an element difference when the structure is unchanged and the
    /// difference is small (at most a quarter of the elements, or 256), otherwise by replacing
    /// the table. Either is one transaction. On error the previous ruleset stays in force.
    pub fn apply(&mut self, rs: &Ruleset) -> Result<ApplyReport, ApplyError> {
        let start = Instant::now();
        let mut report = ApplyReport {
            mode: ApplyMode::Unchanged,
            elements: rs.elements(),
            groups: rs.groups.len(),
            added: 0,
            deleted: 0,
            micros: 0,
            error: None,
        };
        if let Some(old) = &self.applied {
            if old == rs {
                report.micros = start.elapsed().as_micros() as u64;
                self.last = Some(report.clone());
                return Ok(report);
            }
            if let Some(d) = rs.diff(old) {
                if d.added + d.deleted <= (rs.elements() / 4).max(256) {
                    match self.nft.apply_script(&d.script) {
                        Ok(()) => {
                            report.mode = ApplyMode::Diff;
                            report.added = d.added;
                            report.deleted = d.deleted;
                            report.micros = start.elapsed().as_micros() as u64;
                            self.applied = Some(rs.clone());
                            self.last = Some(report.clone());
                            return Ok(report);
                        }
                        Err(e) => tracing::warn!(
                            "policy: element update failed ({e}); replacing the table"
                        ),
                    }
                }
            }
        }
        // Counters die with the table: fold them into the carried totals once the new table
        // is in (packets counted between the read and the replacement are lost).
        let before = self.nft.counters(&rs.table).unwrap_or_default();
        match self.nft.apply_script(&rs.to_nft()) {
            Ok(()) => {
                for (k, (p, b)) in before {
                    let c = self.carried.entry(k).or_default();
                    c.0 += p;
                    c.1 += b;
                }
                report.mode = ApplyMode::Full;
                report.added = rs.elements();
                report.micros = start.elapsed().as_micros() as u64;
                self.applied = Some(rs.clone());
                self.last = Some(report.clone());
                Ok(report)
            }
            Err(e) => {
                report.mode = ApplyMode::Full;
                report.error = Some(e.to_string());
                report.micros = start.elapsed().as_micros() as u64;
                self.last = Some(report);
                Err(e)
            }
        }
    }

    /// Blocked packets per (direction, namespace), including those counted by tables this
    /// enforcer replaced.
    pub fn drop_counts(&self) -> Result<Vec<DropCount>, ApplyError> {
        let table = self
            .applied
            .as_ref()
            .map(|r| r.table.as_str())
            .unwrap_or(crate::render::TABLE);
        let mut now = self.nft.counters(table)?;
        for (k, (p, b)) in &self.carried {
            let c = now.entry(k.clone()).or_default();
            c.0 += p;
            c.1 += b;
        }
        Ok(now
            .into_iter()
            .filter_map(|(name, (packets, bytes))| {
                let (direction, namespace) = parse_counter_name(&name)?;
                Some(DropCount {
                    direction,
                    namespace,
                    packets,
                    bytes,
                })
            })
            .collect())
    }

    /// Removes the table.
    pub fn remove(&mut self) -> Result<(), ApplyError> {
        let table = self
            .applied
            .take()
            .map(|r| r.table)
            .unwrap_or_else(|| crate::render::TABLE.into());
        self.nft.delete_table(&table)
    }
}

/// Inverse of [`crate::render::counter_name`].
pub fn parse_counter_name(name: &str) -> Option<(Direction, String)> {
    let rest = name.strip_prefix("drop-")?;
    let (tag, ns) = rest.split_once('-')?;
    let d = match tag {
        "in" => Direction::Ingress,
        "eg" => Direction::Egress,
        _ => return None,
    };
    Some((d, ns.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_parse() {
        let j = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"counter": {"family": "inet", "name": "drop-in-shop", "table": "weft-policy", "handle": 3, "packets": 4, "bytes": 240}}]}"#;
        let c = parse_counters(j).unwrap();
        assert_eq!(c["drop-in-shop"], (4, 240));
        assert_eq!(
            parse_counter_name("drop-in-shop"),
            Some((Direction::Ingress, "shop".into()))
        );
        assert_eq!(
            parse_counter_name("drop-eg-a-b"),
            Some((Direction::Egress, "a-b".into()))
        );
        assert_eq!(parse_counter_name("other"), None);
        assert!(parse_counters("not json").is_err());
    }
}
