//! The manifests source (`weft router --manifests DIR`): a thread that looks at the
//! directory every [`POLL`] and, when anything changed, reads it again and publishes a new
//! [`PolicyInput`].
//!
//! Why polling rather than inotify: a stat of each file every 250 ms costs next to nothing,
//! needs no extra dependency, and sees every way a directory can change — editors that
//! rename over a file, a ConfigMap volume swapping its `..data` symlink, the directory being
//! removed and created again — with a bounded delay well inside the 1 s target. A change is
//! seen when a file appears or disappears, or its size, modification time, change time or
//! inode changes (metadata of the target, following symlinks).

use super::input::PolicyInput;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};
use weft_policy::manifests::LastGood;

/// How often the directory is checked.
pub const POLL: Duration = Duration::from_millis(250);

/// What a file looks like without reading it.
type FileStamp = (String, Option<(u64, i64, i64, i64, i64, u64)>);

/// Whether `p` is a file the manifests reader reads (`*.yaml`, `*.yml`, `*.json`).
fn is_manifest(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// The stamps of the directory's manifest files, sorted. An error: the directory itself
/// cannot be listed.
pub fn fingerprint(dir: &Path) -> std::io::Result<Vec<FileStamp>> {
    use std::os::unix::fs::MetadataExt;
    let mut out: Vec<FileStamp> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| is_manifest(p))
        .map(|p| {
            let stamp = std::fs::metadata(&p).ok().map(|m| {
                (
                    m.len(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                    m.ino(),
                )
            });
            (p.to_string_lossy().into_owned(), stamp)
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Reads the directory into an input (the I/O half of [`weft_policy::manifests`]); `memory`
/// holds each file's last good content, so a bad edit keeps what was in force.
pub fn read(dir: &Path, memory: &mut LastGood) -> std::io::Result<PolicyInput> {
    let m = memory.read_dir(dir)?;
    Ok(PolicyInput::from_manifests(
        format!("manifests {}", dir.display()),
        m,
    ))
}

/// Starts the watcher thread: publishes the directory's content now and after every
/// change. When the directory cannot be read, the last good content stays published with
/// the error. The thread ends when every receiver is gone.
pub fn start(
    dir: PathBuf,
    tx: watch::Sender<Option<Arc<PolicyInput>>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("weft-manifests".into())
        .spawn(move || run(&dir, &tx))
}

fn run(dir: &Path, tx: &watch::Sender<Option<Arc<PolicyInput>>>) {
    let source = format!("manifests {}", dir.display());
    let mut last_stamp: Option<Vec<FileStamp>> = None;
    let mut last_good = PolicyInput {
        source: source.clone(),
        ..Default::default()
    };
    let mut last_error: Option<String> = None;
    let mut memory = LastGood::default();
    while !tx.is_closed() {
        let mut read_once = || -> std::io::Result<(Vec<FileStamp>, Option<PolicyInput>)> {
            let stamp = fingerprint(dir)?;
            if last_stamp.as_ref() == Some(&stamp) {
                return Ok((stamp, None));
            }
            Ok((stamp, Some(read(dir, &mut memory)?)))
        };
        match read_once() {
            Ok((_, None)) => {}
            Ok((stamp, Some(input))) => {
                if last_error.take().is_some() {
                    info!(dir = %dir.display(), "manifests directory readable again");
                }
                info!(
                    dir = %dir.display(),
                    policies = input.cluster.policies.len(),
                    pods = input.cluster.pods.len(),
                    namespaces = input.cluster.namespaces.len(),
                    rejected = input.rejected.len(),
                    "manifests read"
                );
                last_stamp = Some(stamp);
                last_good = input.clone();
                tx.send_replace(Some(Arc::new(input)));
            }
            Err(e) => {
                let msg = format!("cannot read {}: {e}", dir.display());
                if last_error.as_ref() != Some(&msg) {
                    warn!(error = %msg, "manifests directory unreadable; the rules in force stay");
                    last_error = Some(msg.clone());
                    last_stamp = None;
                    tx.send_replace(Some(Arc::new(PolicyInput {
                        error: Some(msg),
                        ..last_good.clone()
                    })));
                }
            }
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: shop}
spec: {podSelector: {}}
"#;

    #[test]
    fn watcher_publishes_changes_and_keeps_the_last_good_view_on_errors() {
        let dir = std::env::temp_dir().join(format!("weft-manifests-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), POLICY).unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let (tx, mut rx) = watch::channel(None);
        let handle = start(dir.clone(), tx).unwrap();
        let wait = |rx: &mut watch::Receiver<Option<Arc<PolicyInput>>>, what: &str| {
            let t = std::time::Instant::now();
            loop {
                if rx.has_changed().unwrap() {
                    return rx.borrow_and_update().clone().unwrap();
                }
                assert!(t.elapsed() < Duration::from_secs(3), "{what}");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        let first = wait(&mut rx, "first read");
        assert_eq!(first.cluster.policies.len(), 1);
        assert!(first.source.starts_with("manifests "));

        // A second file, and a broken one: the valid policies stay, the broken is rejected.
        std::fs::write(dir.join("b.yaml"), POLICY.replace("deny", "deny2")).unwrap();
        std::fs::write(dir.join("c.yml"), "kind: [unclosed").unwrap();
        let mut got = wait(&mut rx, "change seen");
        let t = std::time::Instant::now();
        while got.rejected.is_empty() && t.elapsed() < Duration::from_secs(3) {
            got = wait(&mut rx, "both files seen");
        }
        assert_eq!(got.cluster.policies.len(), 2);
        assert_eq!(got.rejected.len(), 1, "{:?}", got.rejected);
        assert!(got.error.is_none());

        // A text file changing is not a change.
        std::fs::write(dir.join("notes.txt"), "still ignored").unwrap();
        std::thread::sleep(POLL * 3);
        assert!(!rx.has_changed().unwrap());

        // The directory disappears: the last view stays, with the error.
        std::fs::remove_dir_all(&dir).unwrap();
        let gone = wait(&mut rx, "error seen");
        assert_eq!(gone.cluster.policies.len(), 2);
        assert!(gone.error.as_deref().unwrap().contains("cannot read"));

        // It comes back.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), POLICY).unwrap();
        let back = wait(&mut rx, "recovered");
        assert!(back.error.is_none());
        assert_eq!(back.cluster.policies.len(), 1);

        drop(rx);
        handle.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
