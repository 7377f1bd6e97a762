//! Persistent router state in `--state-dir`: the IPAM snapshot and the local endpoints.
//! Files are replaced atomically (write a temporary file, fsync, rename), so a crash leaves
//! either the old or the new version, never a torn one.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::api::Attachment;

pub const IPAM_FILE: &str = "ipam.bin";
pub const ENDPOINTS_FILE: &str = "endpoints.json";

/// A local endpoint (pod interface) as the router remembers it across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalEndpoint {
    pub mac: String,
    pub ip: String,
    pub host_ifname: String,
    pub pod: Option<String>,
}

/// Writes `bytes` to `dir/name` atomically and durably: a temporary file (mode 0600: the state
/// names every pod and address of the node), fsync, rename, fsync of the directory. An error
/// at any step (a full disk among them) is returned, and a temporary file left by it removed:
/// the caller must not act as if the state were written.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", tmp.display()));
    }
    if let Err(e) = std::fs::rename(&tmp, &path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("replacing {}", path.display()));
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

/// Removes temporary files an interrupted [`write_atomic`] left in `dir` (`.NAME.tmp`), and
/// makes the state files readable by root only (earlier builds wrote them 0644). Returns
/// the names removed.
pub fn tidy(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return removed;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".tmp") {
            if std::fs::remove_file(e.path()).is_ok() {
                removed.push(name);
            }
        } else if [IPAM_FILE, ENDPOINTS_FILE].contains(&name.as_str()) {
            let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o600));
        }
    }
    removed
}

/// Reads `dir/name`; a missing file is `None`.
pub fn read(dir: &Path, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let path: PathBuf = dir.join(name);
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Local endpoints keyed by attachment, as stored in [`ENDPOINTS_FILE`].
pub type Endpoints = BTreeMap<Attachment, LocalEndpoint>;

pub fn save_endpoints(dir: &Path, eps: &Endpoints) -> anyhow::Result<()> {
    let list: Vec<(&Attachment, &LocalEndpoint)> = eps.iter().collect();
    write_atomic(dir, ENDPOINTS_FILE, &serde_json::to_vec_pretty(&list)?)
}

pub fn load_endpoints(dir: &Path) -> anyhow::Result<Endpoints> {
    let Some(bytes) = read(dir, ENDPOINTS_FILE)? else {
        return Ok(Endpoints::new());
    };
    let list: Vec<(Attachment, LocalEndpoint)> = serde_json::from_slice(&bytes)
        .with_context(|| format!("parsing {}", dir.join(ENDPOINTS_FILE).display()))?;
    Ok(list.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_roundtrip_and_atomic_replace() {
        let dir = std::env::temp_dir().join(format!("weft-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(load_endpoints(&dir).unwrap().is_empty());
        let mut eps = Endpoints::new();
        eps.insert(
            Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into(),
            },
            LocalEndpoint {
                mac: "02:00:00:00:00:01".into(),
                ip: "10.32.0.2".into(),
                host_ifname: "vethwe00000001".into(),
                pod: Some("default/p".into()),
            },
        );
        save_endpoints(&dir, &eps).unwrap();
        save_endpoints(&dir, &eps).unwrap();
        assert_eq!(load_endpoints(&dir).unwrap(), eps);
        assert!(!dir.join(format!(".{ENDPOINTS_FILE}.tmp")).exists());
        std::fs::write(dir.join(ENDPOINTS_FILE), b"{not json").unwrap();
        assert!(load_endpoints(&dir).is_err(), "corrupt state is an error");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
