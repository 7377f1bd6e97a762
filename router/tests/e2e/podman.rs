//! A real container runtime: podman + runc with podman's CNI network backend (Debian 12:
//! podman 4.3) start two containers on one node, attached by `weft-net` through the deployed
//! `deploy/10-weft.conflist` (weft-net, then the reference portmap and bandwidth plugins).
//! The containers get addresses from the router's range, ping each other and the gateway,
//! talk TCP, one is reachable through a podman port mapping (`-p`, the portmap plugin); the
//! router lists both endpoints; `podman rm -f` (CNI DEL) releases everything.
//!
//! Isolation: podman gets its own `containers.conf` (`CONTAINERS_CONF`: CNI backend,
//! plugin and network config dirs, file locks, tmp dir, events log, `pull_policy = "never"`),
//! its own `storage.conf`, `registries.conf` and signature policy, its own storage (`--root`,
//! `--runroot`, `--tmpdir`, driver vfs) in a temporary directory and its own cgroup parent:
//! the host's containers.conf, storage.conf, policy and CNI network configs are not used, and
//! no configuration of the host is written. The image is a busybox-static root file system
//! imported with `podman import` (no registry is reached).
//! podman runs under `nsenter --net` into the router's namespace, so the veth host ends and
//! the bridge are there. Not `ip netns exec`: it remounts /sys, which hides the cgroup
//! mounts that runc needs. What podman still writes outside the temporary directory are
//! its usual per-container entries (`/run/netns/netns-*`, `/run/runc/<id>`,
//! `/var/lib/cni/results/weft-<id>-eth0`), all removed by `podman rm` (checked), and the
//! image copy cache `/var/lib/containers/cache/blob-info-cache-v1.boltdb`, which podman
//! offers no way to move.
//!
//! Needs root and the Debian packages podman, runc, busybox-static,
//! containernetworking-plugins and iptables (`scripts/test.sh` installs them). As root a
//! missing piece is a failure, not a skip; `WEFT_SKIP_PODMAN=1` skips the test explicitly.

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use weft::lab::{self, Lab, LabGuard, LabOptions, LabPassword};
use weft::status::Status;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const CONFLIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/10-weft.conflist");
/// Where Debian's containernetworking-plugins puts portmap and bandwidth.
const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";
const PACKAGES: &str = "podman runc busybox-static containernetworking-plugins iptables";
const IMAGE: &str = "localhost/weft-busybox:test";
/// The CNI network name (`name` in the conflist): `podman run --network weft`.
const NETWORK: &str = "weft";
const HOST_PORT: u16 = 18080;
const CONTAINER_PORT: u16 = 8080;
/// Limit for every podman invocation (`timeout`), so that a hung runtime fails the test.
const PODMAN_TIMEOUT_SECS: &str = "90";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Straight to fd 2, not eprintln!: the test harness would swallow that for a passing test.
fn loud(msg: &str) {
    let bar = "#".repeat(78);
    let _ = writeln!(std::io::stderr(), "\n{bar}\n# {msg}\n{bar}\n");
}

fn busybox_path() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// True for an ELF executable without a program interpreter (statically linked).
fn is_static_elf(path: &Path) -> bool {
    let Ok(b) = std::fs::read(path) else {
        return false;
    };
    if b.len() < 64 || &b[..4] != b"\x7fELF" {
        return false;
    }
    let le = b[5] == 1;
    let num = |at: usize, len: usize| -> Option<usize> {
        let s = b.get(at..at + len)?;
        let mut v: u64 = 0;
        for k in 0..len {
            let byte = if le { s[len - 1 - k] } else { s[k] };
            v = (v << 8) | u64::from(byte);
        }
        usize::try_from(v).ok()
    };
    let (phoff, phentsize, phnum) = match b[4] {
        1 => (num(0x1c, 4), num(0x2a, 2), num(0x2c, 2)),
        2 => (num(0x20, 8), num(0x36, 2), num(0x38, 2)),
        _ => return false,
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return false;
    };
    const PT_INTERP: usize = 3;
    (0..phnum).all(|i| num(phoff + i * phentsize, 4).is_some_and(|t| t != PT_INTERP))
}

fn runs(argv: &[&str]) -> bool {
    Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// True when the test can run: `WEFT_SKIP_PODMAN=1` is a (loud) skip; anything missing, root
/// included, is a failure (the test is `#[ignore]`d: it runs only when asked for).
fn prerequisites() -> bool {
    if std::env::var("WEFT_SKIP_PODMAN").is_ok_and(|v| v == "1") {
        loud("SKIPPED: podman test (WEFT_SKIP_PODMAN=1)");
        return false;
    }
    if !is_root() {
        panic!("the podman test needs root (podman, network namespaces)");
    }
    let mut missing = Vec::new();
    if let Err(e) = lab::check_prerequisites() {
        missing.push(format!("{e:#}"));
    }
    for (argv, what) in [
        (&["podman", "--version"][..], "podman (package podman)"),
        (&["runc", "--version"][..], "runc (package runc)"),
        (
            &["iptables", "--version"][..],
            "iptables (package iptables)",
        ),
        (
            &["nsenter", "--version"][..],
            "nsenter (package util-linux)",
        ),
        (&["tar", "--version"][..], "tar (package tar)"),
        (&["timeout", "--version"][..], "timeout (package coreutils)"),
    ] {
        if !runs(argv) {
            missing.push(what.to_string());
        }
    }
    match busybox_path() {
        Some(p) if is_static_elf(&p) => {}
        Some(p) => missing.push(format!(
            "a statically linked busybox ({} is dynamic: package busybox-static)",
            p.display()
        )),
        None => missing.push("busybox (package busybox-static)".into()),
    }
    for p in ["portmap", "bandwidth"] {
        if !Path::new(DEBIAN_CNI_DIR).join(p).is_file() {
            missing.push(format!(
                "{DEBIAN_CNI_DIR}/{p} (package containernetworking-plugins)"
            ));
        }
    }
    if !missing.is_empty() {
        panic!(
            "podman test cannot run: missing {}\n  install (Debian, as root): apt-get install \
             --no-install-recommends {PACKAGES}\n  (scripts/test.sh installs them; set \
             WEFT_SKIP_PODMAN=1 to skip this test on purpose)",
            missing.join("; ")
        );
    }
    true
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Runs `argv` in namespace `ns` (`ip netns exec`: fine for tools that need no cgroups).
fn in_ns(ns: &str, argv: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(argv)
        .output()
        .unwrap()
}

/// One container as `podman inspect` describes it.
#[derive(Clone, Debug)]
struct Ctr {
    name: String,
    id: String,
    hostname: String,
    ip: Ipv4Addr,
    prefix_len: u8,
    gateway: Ipv4Addr,
    mac: String,
    sandbox: String,
}

/// An isolated podman: configuration, storage and state in `dir`, containers in the cgroup
/// `cgroup_parent`, run in network namespace `netns`. Dropping it removes every container
/// and everything it created (also after a failure).
struct Podman {
    dir: PathBuf,
    netns: String,
    cgroup_parent: String,
    /// Containers and network namespaces seen, for the forced cleanup.
    seen: Mutex<Vec<Ctr>>,
    cleaned: bool,
}

impl Podman {
    /// Writes the configuration: plugin dir with weft-net, the deployed conflist pointed at
    /// `socket`, containers.conf, storage.conf, registries.conf, signature policy.
    fn new(id: &str, netns: &str, socket: &Path) -> Podman {
        let dir = std::env::temp_dir().join(format!("weft-podman-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        let pm = Podman {
            dir: dir.clone(),
            netns: netns.to_string(),
            cgroup_parent: format!("/weft-podman-{id}"),
            seen: Mutex::new(Vec::new()),
            cleaned: false,
        };
        for d in [
            "bin",
            "net.d",
            "root",
            "runroot",
            "tmp",
            "home/.config/containers",
        ] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::copy(crate::common::weft_net(), dir.join("bin/weft-net")).unwrap();
        let mut conf: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(CONFLIST).unwrap()).unwrap();
        assert_eq!(conf["name"], NETWORK, "{conf}");
        assert_eq!(conf["plugins"][0]["type"], "weft-net", "{conf}");
        conf["plugins"][0]["socket"] = socket.to_str().unwrap().into();
        std::fs::write(
            dir.join("net.d/10-weft.conflist"),
            serde_json::to_vec_pretty(&conf).unwrap(),
        )
        .unwrap();
        let d = |p: &str| dir.join(p).display().to_string();
        // Ulimits: podman raises nofile/nproc to 1048576 by default, which needs
        // CAP_SYS_RESOURCE (some sandboxes drop it); lowering them never does.
        let containers_conf = format!(
            r#"[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin}", "{DEBIAN_CNI_DIR}"]
network_config_dir = "{netd}"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{tmp}/events.log"
lock_type = "file"
tmp_dir = "{tmp}"
static_dir = "{root}/libpod"
volume_path = "{root}/volumes"
runtime = "runc"
pull_policy = "never"
"#,
            bin = d("bin"),
            netd = d("net.d"),
            tmp = d("tmp"),
            root = d("root"),
        );
        std::fs::write(dir.join("containers.conf"), containers_conf).unwrap();
        let storage_conf = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            d("root"),
            d("runroot")
        );
        std::fs::write(dir.join("storage.conf"), storage_conf).unwrap();
        std::fs::write(
            dir.join("registries.conf"),
            "unqualified-search-registries = []\n",
        )
        .unwrap();
        // Read instead of /etc/containers/policy.json because HOME points here.
        std::fs::write(
            dir.join("home/.config/containers/policy.json"),
            r#"{"default": [{"type": "insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        pm
    }

    fn path(&self, p: &str) -> String {
        self.dir.join(p).display().to_string()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("timeout");
        c.args(["-k", "5", PODMAN_TIMEOUT_SECS, "nsenter"])
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("podman")
            .args(["--root", &self.path("root")])
            .args(["--runroot", &self.path("runroot")])
            .args(["--tmpdir", &self.path("tmp")])
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", self.path("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.path("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", self.path("registries.conf"))
            .env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("home/.config"))
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("CONTAINER_HOST")
            .env_remove("CONTAINER_CONNECTION")
            .env_remove("CONTAINERS_STORAGE_CONF_OVERRIDE");
        c
    }

    fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running podman")
    }

    /// Runs podman; fails the test unless it succeeds. Returns stdout, trimmed.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "podman {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A root file system of busybox-static and its applet links, imported as `IMAGE`.
    fn import_busybox(&self) {
        let busybox = busybox_path().unwrap();
        let rootfs = self.dir.join("image/rootfs");
        for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy(&busybox, rootfs.join("bin/busybox")).unwrap();
        let list = Command::new(&busybox).arg("--list").output().unwrap();
        assert!(list.status.success(), "busybox --list: {}", text(&list));
        for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
            if applet != "busybox" {
                std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
            }
        }
        let tar = self.dir.join("image/busybox.tar");
        let out = Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .unwrap();
        assert!(out.status.success(), "tar: {}", text(&out));
        self.ok(&[
            "import",
            "--quiet",
            "--change",
            "ENV PATH=/bin",
            tar.to_str().unwrap(),
            IMAGE,
        ]);
    }

    /// `podman run -d` on the weft network; returns the container as inspected.
    fn run(&self, name: &str, extra: &[&str], cmd: &[&str]) -> Ctr {
        let mut args = vec![
            "run",
            "-d",
            "--pull=never",
            "--name",
            name,
            "--network",
            NETWORK,
            "--cgroup-parent",
            &self.cgroup_parent,
            "--cap-add",
            "NET_RAW",
        ];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.extend_from_slice(cmd);
        let id = self.ok(&args);
        let ctr = self.inspect(name);
        assert_eq!(ctr.id, id);
        self.seen.lock().unwrap().push(ctr.clone());
        ctr
    }

    fn inspect(&self, name: &str) -> Ctr {
        let out = self.ok(&["inspect", "--type", "container", name]);
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        let c = &v[0];
        let net = &c["NetworkSettings"]["Networks"][NETWORK];
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        Ctr {
            name: name.to_string(),
            id: s(&c["Id"]),
            hostname: s(&c["Config"]["Hostname"]),
            ip: s(&net["IPAddress"])
                .parse()
                .unwrap_or_else(|e| panic!("{name}: IPAddress: {e}: {net}")),
            prefix_len: net["IPPrefixLen"].as_u64().unwrap_or_default() as u8,
            gateway: s(&net["Gateway"])
                .parse()
                .unwrap_or_else(|e| panic!("{name}: Gateway: {e}: {net}")),
            mac: s(&net["MacAddress"]),
            sandbox: s(&c["NetworkSettings"]["SandboxKey"]),
        }
    }

    /// `podman exec`; returns (success, stdout + stderr).
    fn exec(&self, ctr: &str, argv: &[&str]) -> (bool, String) {
        let mut args = vec!["exec", ctr];
        args.extend_from_slice(argv);
        let out = self.output(&args);
        (out.status.success(), text(&out))
    }

    /// The cgroup directories of `cgroup_parent` (one per v1 hierarchy, or the v2 one).
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let name = self.cgroup_parent.trim_start_matches('/');
        let root = Path::new("/sys/fs/cgroup");
        let mut dirs = vec![root.join(name)];
        if let Ok(rd) = std::fs::read_dir(root) {
            dirs.extend(rd.flatten().map(|e| e.path().join(name)));
        }
        dirs.retain(|d| d.is_dir());
        dirs
    }

    /// Every directory under `d`, deepest first, then `d`.
    fn subdirs_deepest_first(d: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    Self::subdirs_deepest_first(&e.path(), out);
                }
            }
        }
        out.push(d.to_path_buf());
    }

    /// Processes in our cgroups: conmon, the containers, conmon's exit command.
    fn processes(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for d in self.cgroup_dirs() {
            let mut all = Vec::new();
            Self::subdirs_deepest_first(&d, &mut all);
            for c in all {
                if let Ok(t) = std::fs::read_to_string(c.join("cgroup.procs")) {
                    pids.extend(t.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
                }
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Waits until no process is left in our cgroups (conmon runs podman's exit command
    /// after a container ends); true if none is left.
    fn wait_no_processes(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        while !self.processes().is_empty() {
            if start.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }

    /// Mount points under our directory (container shm mounts), deepest first.
    fn mounts(&self) -> Vec<String> {
        let prefix = self.dir.display().to_string();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut v: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| *m == prefix || m.starts_with(&format!("{prefix}/")))
            .map(str::to_string)
            .collect();
        v.sort_by_key(|m| std::cmp::Reverse(m.len()));
        v
    }

    /// What podman leaves outside its storage for the containers seen, if anything:
    /// processes, mounts, network namespaces, runc state, CNI cache entries.
    fn leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = Vec::new();
        let procs = self.processes();
        if !procs.is_empty() {
            left.push(format!("processes {procs:?} in {}", self.cgroup_parent));
        }
        left.extend(self.mounts().into_iter().map(|m| format!("mount {m}")));
        for c in self.seen.lock().unwrap().iter() {
            for p in [
                c.sandbox.clone(),
                format!("/run/runc/{}", c.id),
                format!("/var/lib/cni/results/{NETWORK}-{}-eth0", c.id),
            ] {
                if !p.is_empty() && Path::new(&p).exists() {
                    left.push(p);
                }
            }
        }
        left
    }

    /// Removes every container (CNI DEL through the router while it still runs), then by
    /// force whatever is left, the cgroups and the directory. Idempotent.
    fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        if self.dir.join("containers.conf").is_file() {
            let _ = self.output(&["rm", "--force", "--time", "0", "--all"]);
        }
        if !self.wait_no_processes(Duration::from_secs(10)) {
            for pid in self.processes() {
                // SAFETY: plain kill(2) on processes of our own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            self.wait_no_processes(Duration::from_secs(5));
        }
        for c in self.seen.lock().unwrap().iter() {
            if !c.sandbox.is_empty() && Path::new(&c.sandbox).exists() {
                umount(&c.sandbox);
                let _ = std::fs::remove_file(&c.sandbox);
            }
            if Path::new(&format!("/run/runc/{}", c.id)).exists() {
                let _ = Command::new("runc")
                    .args(["delete", "--force", &c.id])
                    .output();
            }
            let _ = std::fs::remove_file(format!("/var/lib/cni/results/{NETWORK}-{}-eth0", c.id));
        }
        for m in self.mounts() {
            umount(&m);
        }
        for d in self.cgroup_dirs() {
            let mut all = Vec::new();
            Self::subdirs_deepest_first(&d, &mut all);
            for c in all {
                for _ in 0..20 {
                    if std::fs::remove_dir(&c).is_ok() || !c.exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if self.dir.exists() {
                eprintln!("podman test: removing {}: {e}", self.dir.display());
            }
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn umount(path: &str) {
    let Ok(c) = std::ffi::CString::new(path) else {
        return;
    };
    // SAFETY: umount2 with a valid NUL-terminated path; failure is ignored (not mounted).
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

/// `GET path` over HTTP/1.0 from network namespace `ns`; returns the body.
fn http_get(ns: &str, addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let req = format!("GET {path} HTTP/1.0\r\n\r\n");
    lab::run_in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(req.as_bytes())?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok(buf
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or(buf))
    })
    .unwrap()
}

/// Host-side pod interfaces (`vethwe*`) in namespace `ns`.
fn host_veths(ns: &str) -> Vec<String> {
    let out = in_ns(ns, &["ip", "-o", "link", "show"]);
    text(&out)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_string())
        .filter(|n| n.starts_with("vethwe"))
        .collect()
}

fn step(t0: Instant, what: &str) {
    eprintln!("[{:6.2} s] {what}", t0.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn podman_containers_on_one_node_talk_through_weft_net() {
    if !prerequisites() {
        return;
    }
    let t0 = Instant::now();
    let id = format!("pm{}", lab::random_alnum(5));
    let _lab_guard = LabGuard::new(&id);
    let mut opts = LabOptions::new(&id, 1, WEFT);
    opts.password = LabPassword::Random;
    opts.timeout = Duration::from_secs(20);
    let lab = Lab::up(opts).await.expect("lab up");
    let ns = lab.namespace(1);
    step(t0, &format!("router up in namespace {ns}"));

    // Declared after the lab guard, so dropped (containers removed) while the router runs.
    let mut pm = Podman::new(&id, &ns, &lab.node_socket(1));
    let backend = pm.ok(&["info", "--format", "{{.Host.NetworkBackend}}"]);
    assert_eq!(
        backend,
        "cni",
        "podman must use its CNI backend (podman 5 has none): {}",
        pm.ok(&["--version"])
    );
    let networks = pm.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(networks.lines().any(|n| n == NETWORK), "{networks}");
    pm.import_busybox();
    step(t0, &format!("podman ready, {IMAGE} imported"));

    // The router's gateway is allocated before the first pod (an ADD would wait for it).
    let (_, st) = lab
        .wait_until(Duration::from_secs(20), "the node's gateway", |s| {
            s[0].as_ref().is_some_and(|st| st.ipam.gateway.is_some())
        })
        .await
        .unwrap();
    let st0: Status = st[0].clone().unwrap();
    let range: ipnet::Ipv4Net = st0.ipam.range.parse().unwrap();
    let gateway: ipnet::Ipv4Net = st0.ipam.gateway.as_deref().unwrap().parse().unwrap();
    let used0 = st0.ipam.used;
    step(
        t0,
        &format!("range {range}, gateway {gateway}, {used0} address(es) used"),
    );

    // Container a serves HTTP (busybox httpd) and publishes a port; b just sleeps.
    let port = format!("{HOST_PORT}:{CONTAINER_PORT}");
    let cport = CONTAINER_PORT.to_string();
    let t = Instant::now();
    let a = pm.run(
        "weft-a",
        &["--publish", &port],
        &["httpd", "-f", "-p", &cport, "-h", "/"],
    );
    let b = pm.run("weft-b", &[], &["sleep", "600"]);
    step(t0, &format!("two containers started in {:?}", t.elapsed()));
    eprintln!("  a: {a:?}\n  b: {b:?}");

    for c in [&a, &b] {
        assert!(range.contains(&c.ip), "{}: {} not in {range}", c.name, c.ip);
        assert_eq!(c.prefix_len, range.prefix_len(), "{c:?}");
        assert_eq!(c.gateway, gateway.addr(), "{c:?}");
        assert!(c.sandbox.starts_with("/run/netns/"), "{c:?}");
        // The container's own view of eth0 and its default route.
        let (ok, addr) = pm.exec(&c.name, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
        let cidr = format!("inet {}/{}", c.ip, c.prefix_len);
        assert!(ok && addr.contains(&cidr), "{}: {addr}", c.name);
        let (ok, mac) = pm.exec(&c.name, &["cat", "/sys/class/net/eth0/address"]);
        assert!(ok && mac.trim() == c.mac, "{}: {mac} vs {}", c.name, c.mac);
        let (ok, routes) = pm.exec(&c.name, &["ip", "route"]);
        let default = format!("default via {}", c.gateway);
        assert!(ok && routes.contains(&default), "{}: {routes}", c.name);
    }
    assert_ne!(a.ip, b.ip);

    // Traffic: ping both ways and to the gateway, TCP from b to a, and a's published port
    // from the node (portmap's DNAT to a's address).
    let t = Instant::now();
    for (from, to) in [(&a, &b), (&b, &a)] {
        let (ok, out) = pm.exec(
            &from.name,
            &["ping", "-c", "1", "-W", "3", &to.ip.to_string()],
        );
        assert!(ok, "{} -> {} ({}): {out}", from.name, to.name, to.ip);
    }
    let gw = gateway.addr().to_string();
    let (ok, out) = pm.exec(&a.name, &["ping", "-c", "1", "-W", "3", &gw]);
    assert!(ok, "a -> gateway {gw}: {out}");
    let url = format!("http://{}:{CONTAINER_PORT}/etc/hostname", a.ip);
    let (ok, out) = pm.exec(&b.name, &["wget", "-q", "-O", "-", &url]);
    assert!(ok && out.trim() == a.hostname, "b -> {url}: {out}");
    let published = SocketAddr::from((lab.underlay_addr(1), HOST_PORT));
    let body = http_get(&ns, published, "/etc/hostname")
        .unwrap_or_else(|e| panic!("node -> {published} (a's published port): {e}"));
    assert_eq!(body.trim(), a.hostname, "via the published port");
    step(
        t0,
        &format!(
            "ping a<->b, gateway, TCP, published port: {:?}",
            t.elapsed()
        ),
    );

    // The host ends hang off the node bridge in the router's namespace.
    let veths = host_veths(&ns);
    assert_eq!(veths.len(), 2, "{veths:?}");
    for v in &veths {
        let link = text(&in_ns(&ns, &["ip", "-d", "link", "show", "dev", v]));
        assert!(link.contains("master weft"), "{link}");
    }

    // The router lists both endpoints. podman 4.3 passes `K8S_POD_NAME=<container name>`
    // without `K8S_POD_NAMESPACE` in CNI_ARGS, so weft names the endpoint by its container
    // ID (it takes a pod identity only as namespace/name).
    let name = st0.name.clone();
    let (_, st) = lab
        .wait_until(Duration::from_secs(5), "both endpoints in status", |s| {
            s[0].as_ref().is_some_and(|st| {
                st.ipam.used == used0 + 2
                    && [&a, &b].iter().all(|c| {
                        st.endpoints.iter().any(|e| {
                            e.mac == c.mac && e.owner == name && e.ips == vec![c.ip.to_string()]
                        })
                    })
            })
        })
        .await
        .unwrap();
    let st1 = st[0].clone().unwrap();
    for c in [&a, &b] {
        let e = st1.endpoints.iter().find(|e| e.mac == c.mac).unwrap();
        let pod = e.pod.as_deref().unwrap_or_default();
        assert!(
            pod == c.id || pod.ends_with(&format!("/{}", c.name)),
            "endpoint of {}: {e:?}",
            c.name
        );
    }
    step(t0, "router status lists both endpoints");

    // CNI DEL: podman rm releases the addresses and removes interfaces, port mapping and
    // podman's own per-container state.
    let t = Instant::now();
    pm.ok(&["rm", "--force", "--time", "0", &a.name, &b.name]);
    step(t0, &format!("podman rm -f took {:?}", t.elapsed()));
    lab.wait_until(Duration::from_secs(5), "addresses released", |s| {
        s[0].as_ref().is_some_and(|st| {
            st.ipam.used == used0
                && !st
                    .endpoints
                    .iter()
                    .any(|e| e.mac == a.mac || e.mac == b.mac)
        })
    })
    .await
    .unwrap();
    assert_eq!(host_veths(&ns), Vec::<String>::new());
    let nat = text(&in_ns(&ns, &["iptables-save", "-t", "nat"]));
    assert!(
        !nat.contains(&a.ip.to_string()) && !nat.contains(&HOST_PORT.to_string()),
        "port mapping left after rm: {nat}"
    );
    assert_eq!(pm.ok(&["ps", "--all", "--quiet"]), "");
    assert!(
        pm.wait_no_processes(Duration::from_secs(10)),
        "conmon still runs: {:?}",
        pm.processes()
    );
    assert_eq!(pm.leftovers(), Vec::<String>::new(), "left after podman rm");

    // Teardown: podman's directory and cgroups, then the router and its namespaces.
    pm.cleanup();
    assert!(!pm.dir.exists(), "{} left", pm.dir.display());
    assert_eq!(pm.cgroup_dirs(), Vec::<PathBuf>::new(), "cgroups left");
    lab.teardown().await.unwrap();
    let left = lab::list_namespaces(&format!("weft-{id}-")).unwrap();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    step(t0, "all removed");
}
