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

/// Writes `bytes` to `dir/name` atomically.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
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
