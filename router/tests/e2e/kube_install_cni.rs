//! deploy/install-cni.sh, the DaemonSet's init container, run against temporary directories
//! standing in for the node's /opt/cni/bin and /etc/cni/net.d.

use std::path::{Path, PathBuf};
use std::process::Command;

struct Dirs {
    root: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let root = std::env::temp_dir().join(format!("weft-install-cni-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["bin", "conf", "src", "ref"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        Dirs { root }
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/install-cni.sh")
}

fn run(d: &Dirs) -> (bool, String) {
    let out = Command::new("sh")
        .arg(script())
        .env("CNI_BIN_DIR", d.p("bin"))
        .env("CNI_CONF_DIR", d.p("conf"))
        .env("WEFT_NET_BINARY", d.p("src/weft-net"))
        .env("WEFT_CONFLIST", d.p("src/10-weft.conflist"))
        .env("REFERENCE_PLUGINS_DIR", d.p("ref"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn write_exec(p: &Path, content: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(p, content).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn installs_plugin_and_conflist_atomically_and_keeps_the_nodes_plugins() {
    let d = Dirs::new();
    let conflist = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/10-weft.conflist"),
    )
    .unwrap();
    std::fs::write(d.p("src/10-weft.conflist"), &conflist).unwrap();
    write_exec(&d.p("src/weft-net"), "plugin v1");
    for p in ["portmap", "bandwidth", "loopback"] {
        write_exec(&d.p(&format!("ref/{p}")), &format!("image's {p}"));
    }
    write_exec(&d.p("bin/portmap"), "node's own portmap");
    std::fs::write(d.p("conf/05-oldnet.conflist"), "{}").unwrap();
    std::fs::write(d.p("conf/99-later.conf"), "{}").unwrap();

    let (ok, log) = run(&d);
    assert!(ok, "{log}");
    assert_eq!(
        std::fs::read_to_string(d.p("bin/weft-net")).unwrap(),
        "plugin v1"
    );
    assert_eq!(mode(&d.p("bin/weft-net")), 0o755);
    assert_eq!(
        std::fs::read_to_string(d.p("conf/10-weft.conflist")).unwrap(),
        conflist
    );
    assert_eq!(mode(&d.p("conf/10-weft.conflist")), 0o644);
    assert_eq!(
        std::fs::read_to_string(d.p("bin/portmap")).unwrap(),
        "node's own portmap",
        "the node's plugin is kept"
    );
    assert_eq!(
        std::fs::read_to_string(d.p("bin/bandwidth")).unwrap(),
        "image's bandwidth"
    );
    assert!(d.p("bin/loopback").exists());
    assert!(
        log.contains("05-oldnet.conflist sorts before"),
        "warns about a config that wins: {log}"
    );
    assert!(!log.contains("99-later"), "{log}");
    // nothing temporary left behind (runtimes read every *.conf/*.conflist in the directory)
    for dir in ["bin", "conf"] {
        for e in std::fs::read_dir(d.p(dir)).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(!name.contains("weft-tmp"), "left {dir}/{name}");
        }
    }

    // an upgrade replaces the plugin
    write_exec(&d.p("src/weft-net"), "plugin v2");
    let (ok, log) = run(&d);
    assert!(ok, "{log}");
    assert_eq!(
        std::fs::read_to_string(d.p("bin/weft-net")).unwrap(),
        "plugin v2"
    );

    // a missing source is an error (the init container fails, the pod does not start)
    std::fs::remove_file(d.p("src/weft-net")).unwrap();
    let (ok, _) = run(&d);
    assert!(!ok);
}
