//! The protocol layer on its own: `CNI_ARGS`, environment, configuration, result and error JSON.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::*;

fn args(s: &str) -> Result<CniArgs, CniError> {
    CniArgs::parse(s)
}

#[test]
fn cni_args_known_keys_and_ignore_unknown() {
    assert_eq!(args("").unwrap(), CniArgs::default());
    let a = args(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-5d78c9869d-abcde;\
         K8S_POD_INFRA_CONTAINER_ID=0123abc;K8S_POD_UID=8d1f-42;FOO=bar;",
    )
    .unwrap();
    assert!(a.ignore_unknown);
    assert_eq!(a.pod_namespace.as_deref(), Some("kube-system"));
    assert_eq!(a.pod_name.as_deref(), Some("coredns-5d78c9869d-abcde"));
    assert_eq!(a.pod_infra_container_id.as_deref(), Some("0123abc"));
    assert_eq!(a.pod_uid.as_deref(), Some("8d1f-42"));
    assert_eq!(a.unknown, vec![("FOO".to_string(), "bar".to_string())]);
    // IgnoreUnknown may come after the unknown key, and be spelled true/True.
    for s in ["FOO=bar;IgnoreUnknown=true", "IgnoreUnknown=True;FOO=bar"] {
        assert!(args(s).unwrap().ignore_unknown, "{s}");
    }
    // Values may contain '='; empty K8S values mean absent.
    let a = args("IgnoreUnknown=1;X=a=b;K8S_POD_NAME=").unwrap();
    assert_eq!(a.unknown, vec![("X".to_string(), "a=b".to_string())]);
    assert_eq!(a.pod_name, None);
    // Only known keys: no IgnoreUnknown needed.
    let a = args("K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0").unwrap();
    assert!(!a.ignore_unknown);
    assert_eq!(a.pod_name.as_deref(), Some("web-0"));
}

#[test]
fn cni_args_errors_are_code_4_and_name_the_culprit() {
    for (s, needle) in [
        ("FOO=bar", "FOO=bar"),
        ("IgnoreUnknown=0;FOO=bar", "FOO=bar"),
        ("K8S_POD_NAME=x;IP=10.32.0.9", "IP=10.32.0.9"),
        ("IgnoreUnknown=1;novalue", "novalue"),
        ("=x", "empty key"),
        ("IgnoreUnknown=maybe", "IgnoreUnknown"),
    ] {
        let e = args(s).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV, "{s}");
        assert!(e.msg.contains("CNI_ARGS"), "{s}: {}", e.msg);
        assert!(e.msg.contains(needle), "{s}: {}", e.msg);
    }
}

fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| m.get(k).cloned()
}

#[test]
fn env_requirements_per_command() {
    let e = Env::from_lookup(lookup(&[])).unwrap_err();
    assert_eq!(e.code, code::INVALID_ENV);
    assert!(e.msg.contains("CNI_COMMAND"));
    let e = Env::from_lookup(lookup(&[("CNI_COMMAND", "FROB")])).unwrap_err();
    assert_eq!(e.code, code::INVALID_ENV);
    assert!(e.msg.contains("FROB"));

    for cmd in ["VERSION", "STATUS", "GC"] {
        let env = Env::from_lookup(lookup(&[("CNI_COMMAND", cmd)])).unwrap();
        assert_eq!(env.command.as_str(), cmd);
    }
    for cmd in ["ADD", "CHECK"] {
        let e = Env::from_lookup(lookup(&[("CNI_COMMAND", cmd)])).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        for v in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            assert!(e.msg.contains(v), "{cmd}: {}", e.msg);
        }
        let e = Env::from_lookup(lookup(&[
            ("CNI_COMMAND", cmd),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("CNI_CONTAINERID"), "{}", e.msg);
        assert!(!e.msg.contains("CNI_IFNAME"), "{}", e.msg);
    }
    // DEL: the namespace is optional (it may be gone already).
    let env = Env::from_lookup(lookup(&[
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "abc"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", ""),
    ]))
    .unwrap();
    assert_eq!(env.netns, None);
    let e =
        Env::from_lookup(lookup(&[("CNI_COMMAND", "DEL"), ("CNI_IFNAME", "eth0")])).unwrap_err();
    assert!(e.msg.contains("CNI_CONTAINERID") && !e.msg.contains("CNI_NETNS"));
}

#[test]
fn env_values_are_validated() {
    let base = |id: &str, ifname: &str| {
        Env::from_lookup(lookup(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", ifname),
            ("CNI_ARGS", "K8S_POD_NAME=p"),
        ]))
    };
    let env = base("a1b2_c.d-e", "eth0").unwrap();
    assert_eq!(env.container_id, "a1b2_c.d-e");
    assert_eq!(env.args.pod_name.as_deref(), Some("p"));
    for (id, ifname, culprit) in [
        ("-abc", "eth0", "CNI_CONTAINERID"),
        ("a/b", "eth0", "CNI_CONTAINERID"),
        ("abc", "0123456789abcdef", "CNI_IFNAME"),
        ("abc", "eth 0", "CNI_IFNAME"),
        ("abc", "a/b", "CNI_IFNAME"),
        ("abc", "..", "CNI_IFNAME"),
    ] {
        let e = base(id, ifname).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains(culprit), "{id} {ifname}: {}", e.msg);
    }
    let e = Env::from_lookup(lookup(&[
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "abc"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "FOO=1"),
    ]))
    .unwrap_err();
    assert_eq!(e.code, code::INVALID_ENV);
}

fn parse(v: Value, cmd: Command) -> Result<NetConf, CniError> {
    NetConf::parse(v.to_string().as_bytes(), cmd)
}

fn minimal(version: &str) -> Value {
    json!({"cniVersion": version, "name": "weft", "type": "weft-net"})
}

#[test]
fn netconf_minimal_and_defaults() {
    let c = parse(minimal("1.0.0"), Command::Add).unwrap();
    assert_eq!(c.cni_version, CniVersion::V1_0_0);
    assert_eq!(c.name, "weft");
    assert_eq!(c.plugin_type, "weft-net");
    assert_eq!(c.socket, DEFAULT_SOCKET);
    assert!(c.dns.is_empty() && c.prev_result.is_none() && c.valid_attachments.is_none());
    let mut v = minimal("1.1.0");
    v["socket"] = json!("/tmp/w.sock");
    v["args"] = json!({"cni": {"labels": {"a": "b"}}});
    v["runtimeConfig"] = json!({"portMappings": []});
    v["ipam"] = json!({});
    assert_eq!(parse(v, Command::Add).unwrap().socket, "/tmp/w.sock");
}

#[test]
fn netconf_errors_and_their_codes() {
    let raw = |s: &str| NetConf::parse(s.as_bytes(), Command::Add).unwrap_err().code;
    assert_eq!(raw(""), code::DECODE);
    assert_eq!(raw("  \n"), code::DECODE);
    assert_eq!(raw("{\"cniVersion\":"), code::DECODE);
    assert_eq!(raw("[1,2]"), code::DECODE);
    assert_eq!(raw("not json"), code::DECODE);

    let err = |v: Value, cmd: Command| parse(v, cmd).unwrap_err();
    let e = err(json!({"name": "weft", "type": "weft-net"}), Command::Add);
    assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
    for v in ["0.1.0", "0.2.0", "1.2.0", "2.0.0", "banana"] {
        let e = err(minimal(v), Command::Add);
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION, "{v}");
        assert!(e.msg.contains(v) && e.details.contains("1.1.0"), "{e}");
    }
    assert_eq!(
        err(
            json!({"cniVersion": 1, "name": "weft", "type": "weft-net"}),
            Command::Add
        )
        .code,
        code::DECODE
    );
    for (cmd, version) in [
        (Command::Check, "0.3.1"),
        (Command::Status, "1.0.0"),
        (Command::Gc, "0.4.0"),
    ] {
        assert_eq!(
            err(minimal(version), cmd).code,
            code::INCOMPATIBLE_VERSION,
            "{cmd}"
        );
    }
    for (key, value) in [
        ("name", json!("-weft")),
        ("name", json!("")),
        ("name", json!(7)),
        ("type", json!("")),
        ("socket", json!("run/weft.sock")),
        ("socket", json!(true)),
        ("dns", json!(["10.0.0.1"])),
    ] {
        let mut v = minimal("1.0.0");
        v[key] = value.clone();
        assert_eq!(
            err(v, Command::Add).code,
            code::INVALID_CONFIG,
            "{key}={value}"
        );
    }
    let mut v = minimal("1.0.0");
    v["ipam"] = json!({"type": "host-local", "subnet": "10.1.0.0/16"});
    let e = err(v, Command::Add);
    assert_eq!(e.code, code::UNSUPPORTED_FIELD);
    assert!(
        e.msg.contains("ipam.type") && e.msg.contains("host-local"),
        "{e}"
    );
    let mut v = minimal("1.0.0");
    v["prevResult"] = json!({"interfaces": "eth0"});
    assert_eq!(err(v, Command::Add).code, code::DECODE);
}

#[test]
fn netconf_gc_attachments() {
    assert_eq!(
        parse(minimal("1.1.0"), Command::Gc).unwrap_err().code,
        code::INVALID_CONFIG
    );
    let want = vec![
        Attachment {
            container_id: "a1".into(),
            ifname: "eth0".into(),
        },
        Attachment {
            container_id: "b2".into(),
            ifname: "net1".into(),
        },
    ];
    let list =
        json!([{"containerID": "a1", "ifname": "eth0"}, {"containerID": "b2", "ifname": "net1"}]);
    for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
        let mut v = minimal("1.1.0");
        v[key] = list.clone();
        let c = parse(v, Command::Gc).unwrap();
        assert_eq!(c.valid_attachments.as_ref(), Some(&want), "{key}");
    }
    let mut v = minimal("1.1.0");
    v["cni.dev/valid-attachments"] = json!([]);
    assert_eq!(
        parse(v, Command::Gc).unwrap().valid_attachments,
        Some(vec![])
    );
    let mut v = minimal("1.1.0");
    v["cni.dev/valid-attachments"] = json!([{"containerID": "a1"}]);
    assert_eq!(
        parse(v, Command::Gc).unwrap_err().code,
        code::INVALID_CONFIG
    );
}

fn attachment() -> PodAttachment {
    PodAttachment {
        host_ifname: "vethwe0a1b2c3d".into(),
        host_mac: "5a:00:00:00:00:01".into(),
        pod_ifname: "eth0".into(),
        pod_mac: "5a:00:00:00:00:02".into(),
        netns: "/var/run/netns/pod".into(),
        ip: "10.32.0.7/12".into(),
        gateway: "10.32.0.1".into(),
        mtu: 1376,
    }
}

#[test]
fn result_json_1_0_0() {
    let r = pod_result(&attachment(), Map::new());
    let v: Value = serde_json::from_str(&r.to_json(CniVersion::V1_0_0)).unwrap();
    assert_eq!(
        v,
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "vethwe0a1b2c3d", "mac": "5a:00:00:00:00:01"},
                {"name": "eth0", "mac": "5a:00:00:00:00:02", "sandbox": "/var/run/netns/pod"}
            ],
            "ips": [{"address": "10.32.0.7/12", "gateway": "10.32.0.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.32.0.1"}],
            "dns": {}
        })
    );
}

#[test]
fn result_json_1_1_0_and_0_4_0() {
    let dns: Map<String, Value> =
        serde_json::from_value(json!({"nameservers": ["10.96.0.10"]})).unwrap();
    let r = pod_result(&attachment(), dns);
    let v: Value = serde_json::from_str(&r.to_json(CniVersion::V1_1_0)).unwrap();
    assert_eq!(v["cniVersion"], "1.1.0");
    assert_eq!(v["interfaces"][0]["mtu"], 1376);
    assert_eq!(v["interfaces"][1]["mtu"], 1376);
    assert!(v["ips"][0].get("version").is_none());
    assert_eq!(v["dns"]["nameservers"][0], "10.96.0.10");
    for old in [CniVersion::V0_3_0, CniVersion::V0_3_1, CniVersion::V0_4_0] {
        let v: Value = serde_json::from_str(&r.to_json(old)).unwrap();
        assert_eq!(v["cniVersion"], old.as_str());
        assert_eq!(
            v["ips"][0],
            json!({"version": "4", "address": "10.32.0.7/12", "gateway": "10.32.0.1", "interface": 1})
        );
        assert!(v["interfaces"][1].get("mtu").is_none());
    }
}

#[test]
fn prev_result_round_trip_keeps_foreign_fields() {
    let prev = json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "net0", "socketPath": "/run/vhost.sock", "pciID": "0000:00:1f.6"}],
        "ips": [{"address": "fd00::5/64", "interface": 0}],
        "routes": [{"dst": "fd00:1::/64", "gw": "fd00::1", "table": 100, "scope": 0}],
        "dns": {"domain": "example"}
    });
    let r = CniResult::from_value(&prev).unwrap();
    let v: Value = serde_json::from_str(&r.to_json(CniVersion::V1_1_0)).unwrap();
    assert_eq!(v, prev);
    let v: Value = serde_json::from_str(&r.to_json(CniVersion::V0_4_0)).unwrap();
    assert_eq!(v["ips"][0]["version"], "6");
    // A 0.4.0 prevResult read and written as 1.0.0 loses the per-address version.
    let old = json!({"ips": [{"version": "4", "address": "10.0.0.5/24"}]});
    let r = CniResult::from_value(&old).unwrap();
    let v: Value = serde_json::from_str(&r.to_json(CniVersion::V1_0_0)).unwrap();
    assert_eq!(v["ips"][0], json!({"address": "10.0.0.5/24"}));
}

#[test]
fn merge_shifts_our_indices_after_prev() {
    let prev = CniResult::from_value(&json!({
        "interfaces": [{"name": "a"}, {"name": "b", "sandbox": "/x"}],
        "ips": [{"address": "192.0.2.1/24", "interface": 1}],
        "dns": {}
    }))
    .unwrap();
    let merged = prev.merged_with(pod_result(&attachment(), Map::new()));
    assert_eq!(merged.interfaces.len(), 4);
    assert_eq!(merged.ips[0].interface, Some(1));
    assert_eq!(merged.ips[1].interface, Some(3));
    assert_eq!(merged.interfaces[3].name, "eth0");
    assert_eq!(
        merged.find_sandbox_interface("eth0", "/var/run/netns/pod"),
        Some(3)
    );
    assert_eq!(merged.find_sandbox_interface("eth0", "/elsewhere"), None);
}

#[test]
fn error_and_version_json() {
    let e = CniError::new(
        code::TRY_AGAIN_LATER,
        "cannot reach the weft router at /x.sock",
    )
    .with_details("connection refused");
    let v: Value = serde_json::from_str(&e.to_json(CniVersion::V1_0_0)).unwrap();
    assert_eq!(
        v,
        json!({"cniVersion": "1.0.0", "code": 11,
               "msg": "cannot reach the weft router at /x.sock", "details": "connection refused"})
    );
    let v: Value = serde_json::from_str(&version_json(None)).unwrap();
    assert_eq!(
        v,
        json!({"cniVersion": "1.1.0",
               "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
    let v: Value = serde_json::from_str(&version_json(Some(CniVersion::V0_4_0))).unwrap();
    assert_eq!(v["cniVersion"], "0.4.0");
    assert_eq!(
        reply_version(br#"{"cniVersion":"0.4.0"}"#),
        CniVersion::V0_4_0
    );
    assert_eq!(reply_version(br#"{"cniVersion":"9.9.9"}"#), LATEST);
    assert_eq!(reply_version(b"{oops"), LATEST);
}

#[test]
fn interface_names_and_ids() {
    assert!(valid_ifname("eth0") && valid_ifname("net1") && valid_ifname("a".repeat(15).as_str()));
    for bad in ["", ".", "..", "a/b", "a:b", "a b", "a\tb", &"a".repeat(16)] {
        assert!(!valid_ifname(bad), "{bad:?}");
    }
    assert!(valid_container_id("0123abcdef") && valid_container_id("a_b.c-d"));
    for bad in ["", "_a", ".a", "a b", "a/b", "ä"] {
        assert!(!valid_container_id(bad), "{bad:?}");
    }
}
