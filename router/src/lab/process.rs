//! Starting detached routers in namespaces and stopping processes by pid.

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// True while `pid` runs (a zombie does not count). Reaps it first if it is our child.
pub fn alive(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: waitpid with WNOHANG on a specific pid never blocks; for a pid that is not our
    // child it fails with ECHILD and changes nothing.
    unsafe {
        libc::waitpid(p, std::ptr::null_mut(), libc::WNOHANG);
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Sends `sig` to `pid`; false if there is no such process.
pub fn signal(pid: u32, sig: libc::c_int) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if p <= 0 {
        return false;
    }
    // SAFETY: kill has no memory-safety preconditions; p > 0 names a single process.
    unsafe { libc::kill(p, sig) == 0 }
}

/// Stops `pids`: SIGTERM, then SIGKILL for those still running after `grace`. Returns how
/// many were running.
pub fn terminate(pids: &[u32], grace: Duration) -> usize {
    let me = std::process::id();
    let running: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|&p| p != me && alive(p))
        .collect();
    for &p in &running {
        signal(p, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while running.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stubborn: Vec<u32> = running.iter().copied().filter(|&p| alive(p)).collect();
    for &p in &stubborn {
        signal(p, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while stubborn.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    running.len()
}

/// True if `pid`'s command line contains `needle` (to check a recorded pid before killing it).
pub fn cmdline_contains(pid: u32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .any(|arg| String::from_utf8_lossy(arg).contains(needle))
        })
        .unwrap_or(false)
}

/// Starts `ip netns exec NS ARGV...` in a new session (so it outlives us and our terminal),
/// stdin from /dev/null, stdout and stderr appended to `log`. Returns the pid, which is the
/// command's own (`ip netns exec` execs it).
pub fn spawn_in_netns(ns: &str, argv: &[String], log: &Path) -> anyhow::Result<u32> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening log file {}", log.display()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    writeln!(
        file,
        "=== weft lab: starting at unix time {now}: ip netns exec {ns} {}",
        argv.join(" ")
    )?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .args(argv)
        .env_remove("WEFT_PASSWORD")
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    // SAFETY: the closure only calls setsid, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!(
                "the `ip` command was not found: weft lab needs iproute2 \
                 (install it, e.g. `apt-get install iproute2`)"
            )
        } else {
            anyhow::anyhow!("starting the router in {ns}: {e}")
        }
    })?;
    // Dropping the handle neither waits nor kills; `alive` reaps the child once it exits.
    Ok(child.id())
}

/// The last `n` lines of a file ("" if it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
