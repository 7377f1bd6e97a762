//! Configuration from the environment, as the DaemonSet gives it: `WEFT_*` variables for the
//! router flags, `NODE_NAME`, and the password file mounted from the Secret (missing, empty,
//! whitespace-only: clear errors). One test: it changes the process environment.

use clap::Parser;
use weft::cli::{Cli, Command, RouterArgs};

fn router_args(argv: &[&str]) -> Result<RouterArgs, clap::Error> {
    let cli = Cli::try_parse_from([&["weft", "router"], argv].concat())?;
    match cli.command {
        Command::Router(a) => Ok(*a),
        _ => unreachable!(),
    }
}

fn config_error(a: &RouterArgs) -> String {
    match weft::daemon::RouterConfig::from_args(a) {
        Ok(_) => panic!("accepted {a:?}"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn environment_configures_the_router() {
    let vars = [
        ("WEFT_IPALLOC_RANGE", "10.40.0.0/14"),
        ("WEFT_MTU", "1400"),
        ("WEFT_CONN_LIMIT", "50"),
        ("WEFT_NO_FASTPATH", "true"),
        ("WEFT_NO_DISCOVERY", "false"),
        ("WEFT_KUBE", "true"),
        ("WEFT_STATE_DIR", "/tmp/weft-state"),
        ("WEFT_NICKNAME", "node-a"),
        ("WEFT_METRICS_ADDR", "off"),
        ("WEFT_SLEEVE_PORT", "7784"),
        ("WEFT_STATUS_ADDR", "127.0.0.1:7784"),
        ("WEFT_LISTEN", "0.0.0.0:7783"),
        ("WEFT_API_SOCKET", "/run/weft-test/weft.sock"),
        ("WEFT_PASSWORD_FILE", "/etc/weft/password/password"),
    ];
    for (k, v) in vars {
        std::env::set_var(k, v);
    }
    let a = router_args(&[]).unwrap();
    assert_eq!(a.ipalloc_range, "10.40.0.0/14");
    assert_eq!(a.mtu, Some(1400));
    assert_eq!(a.conn_limit, 50);
    assert!(a.no_fastpath && !a.no_discovery && a.kube);
    assert_eq!(a.state_dir.to_str(), Some("/tmp/weft-state"));
    assert_eq!(a.nickname.as_deref(), Some("node-a"));
    assert_eq!(a.metrics_addr, "off");
    assert_eq!(a.sleeve_port, 7784);
    assert_eq!(a.status_addr.port(), 7784);
    assert_eq!(a.listen.port(), 7783);
    assert_eq!(a.api_socket.to_str(), Some("/run/weft-test/weft.sock"));
    assert_eq!(
        a.password_file.as_ref().and_then(|p| p.to_str()),
        Some("/etc/weft/password/password")
    );
    // a flag beats its variable
    let a = router_args(&["--mtu", "1300", "--conn-limit", "7"]).unwrap();
    assert_eq!((a.mtu, a.conn_limit), (Some(1300), 7));
    // booleans take true/false; anything else is an error naming the flag
    std::env::set_var("WEFT_NO_FASTPATH", "1");
    let e = router_args(&[]).unwrap_err().to_string();
    assert!(e.contains("--no-fastpath"), "{e}");
    std::env::set_var("WEFT_NO_FASTPATH", "false");
    assert!(!router_args(&[]).unwrap().no_fastpath);
    // a bad or empty value is an error naming the flag (leave a variable out to get the
    // default; the docs say so)
    for bad in ["big", ""] {
        std::env::set_var("WEFT_MTU", bad);
        let e = router_args(&[]).unwrap_err().to_string();
        assert!(e.contains("--mtu"), "{bad:?}: {e}");
    }
    for (k, _) in vars {
        std::env::remove_var(k);
    }
    let a = router_args(&[]).unwrap();
    assert_eq!(a.ipalloc_range, "10.32.0.0/12");
    assert!(!a.kube);

    // NODE_NAME
    assert!(weft::kube::node_name_from(None).is_err());
    let e = weft::kube::node_name_from(Some("  ".into())).unwrap_err();
    assert!(e.to_string().contains("NODE_NAME is not set"), "{e}");
    assert_eq!(
        weft::kube::node_name_from(Some("node-a\n".into())).unwrap(),
        "node-a"
    );

    // the password file from the Secret: missing, empty, whitespace-only
    std::env::remove_var("WEFT_PASSWORD");
    let dir = std::env::temp_dir().join(format!("weft-kube-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing");
    let e = config_error(&router_args(&["--password-file", missing.to_str().unwrap()]).unwrap());
    assert!(
        e.contains("cannot read password file") && e.contains("missing"),
        "{e}"
    );
    for (name, content) in [("empty", ""), ("blank", " \n\t\r\n")] {
        let f = dir.join(name);
        std::fs::write(&f, content).unwrap();
        let e = config_error(&router_args(&["--password-file", f.to_str().unwrap()]).unwrap());
        assert!(e.contains("is empty"), "{name}: {e}");
    }
    let good = dir.join("good");
    std::fs::write(&good, "a long random password\n").unwrap();
    std::env::set_var("WEFT_PASSWORD_FILE", good.to_str().unwrap());
    let a = router_args(&["--name", "02:00:00:00:00:01"]).unwrap();
    let cfg = weft::daemon::RouterConfig::from_args(&a).expect("valid password file");
    assert!(cfg.psk.is_some());
    std::env::set_var("WEFT_PASSWORD", "another");
    let e = config_error(&a);
    assert!(e.contains("both --password-file and WEFT_PASSWORD"), "{e}");
    std::env::remove_var("WEFT_PASSWORD");
    std::env::remove_var("WEFT_PASSWORD_FILE");
    let _ = std::fs::remove_dir_all(&dir);
}
