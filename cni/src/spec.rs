//! The CNI protocol as `weft-net` speaks it: versions, commands, the environment, `CNI_ARGS`,
//! the network configuration on stdin (with `prevResult` and GC's valid attachments), and the
//! result and error JSON on stdout. Pure: no I/O; the plugin feeds it strings.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The router API socket used when the network configuration names none.
pub const DEFAULT_SOCKET: &str = "/run/weft/weft.sock";

/// Spec versions this plugin implements, oldest first.
pub const SUPPORTED_VERSIONS: [CniVersion; 5] = [
    CniVersion::V0_3_0,
    CniVersion::V0_3_1,
    CniVersion::V0_4_0,
    CniVersion::V1_0_0,
    CniVersion::V1_1_0,
];

/// The newest spec version implemented.
pub const LATEST: CniVersion = CniVersion::V1_1_0;
/// The most weft-net reads from stdin: a network configuration (with a previous result or
/// GC's attachment list) is kilobytes; a runtime that sends more is broken or hostile.
pub const MAX_STDIN: usize = 4 << 20;

pub use weft_api::code;

/// A version of the CNI spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    /// A supported version from its string, `None` for any other.
    pub fn parse(s: &str) -> Option<CniVersion> {
        SUPPORTED_VERSIONS.into_iter().find(|v| v.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Results before 1.0.0 carry `"version": "4"|"6"` in each `ips` entry.
    pub fn ips_carry_version(self) -> bool {
        self < CniVersion::V1_0_0
    }

    /// `mtu` in result interfaces appeared in 1.1.0.
    pub fn interface_mtu(self) -> bool {
        self >= CniVersion::V1_1_0
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }

    /// The oldest configuration version in which the command exists.
    pub fn since(self) -> CniVersion {
        match self {
            Command::Add | Command::Del | Command::Version => CniVersion::V0_3_0,
            Command::Check => CniVersion::V0_4_0,
            Command::Status | Command::Gc => CniVersion::V1_1_0,
        }
    }

    /// Commands that name one attachment (container, interface).
    pub fn is_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A CNI error: printed as JSON on stdout, with exit status 1.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}{}", if .details.is_empty() { String::new() } else { format!(" ({})", .details) })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The error JSON of the spec: `{"cniVersion","code","msg","details"}`.
    pub fn to_json(&self, version: CniVersion) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            details: &'a str,
        }
        serde_json::to_string(&Out {
            cni_version: version.as_str(),
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        })
        .expect("error JSON serializes")
    }
}

/// The output of VERSION: echoes the caller's version when it is one of ours, else the latest.
pub fn version_json(requested: Option<CniVersion>) -> String {
    #[derive(Serialize)]
    struct Out {
        #[serde(rename = "cniVersion")]
        cni_version: &'static str,
        #[serde(rename = "supportedVersions")]
        supported_versions: Vec<&'static str>,
    }
    serde_json::to_string(&Out {
        cni_version: requested.unwrap_or(LATEST).as_str(),
        supported_versions: SUPPORTED_VERSIONS.iter().map(|v| v.as_str()).collect(),
    })
    .expect("version JSON serializes")
}

// ---------------------------------------------------------------------------------------------
// CNI_ARGS

/// `CNI_ARGS`: `KEY=VALUE;KEY=VALUE`. Known keys are the Kubernetes pod identity ones; any
/// other key is an error unless `IgnoreUnknown=1` (or `true`) is among them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub ignore_unknown: bool,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_infra_container_id: Option<String>,
    pub pod_uid: Option<String>,
    /// Keys this plugin does not know (only when `ignore_unknown`), in order.
    pub unknown: Vec<(String, String)>,
}

impl CniArgs {
    /// Parses the value of `CNI_ARGS`; errors are code 4 (invalid environment variable) and
    /// name `CNI_ARGS` and the offending pair.
    pub fn parse(s: &str) -> Result<CniArgs, CniError> {
        let mut args = CniArgs::default();
        let mut ignore_unknown = None;
        for pair in s.split(';') {
            if pair.trim().is_empty() {
                continue;
            }
            let Some((key, value)) = pair.split_once('=') else {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("invalid CNI_ARGS: {pair:?} is not KEY=VALUE"),
                ));
            };
            let key = key.trim();
            if key.is_empty() {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("invalid CNI_ARGS: {pair:?} has an empty key"),
                ));
            }
            let opt = |v: &str| (!v.is_empty()).then(|| v.to_string());
            match key {
                "IgnoreUnknown" => {
                    ignore_unknown = Some(parse_bool(value).ok_or_else(|| {
                        CniError::new(
                            code::INVALID_ENV,
                            format!(
                                "invalid CNI_ARGS: IgnoreUnknown={value:?} is not a boolean \
                                 (1, 0, true, false)"
                            ),
                        )
                    })?)
                }
                "K8S_POD_NAMESPACE" => {
                    weft_api::check_pod_namespace(value).map_err(|e| {
                        CniError::new(code::INVALID_ENV, format!("invalid CNI_ARGS: {e}"))
                    })?;
                    args.pod_namespace = opt(value)
                }
                "K8S_POD_NAME" => {
                    weft_api::check_pod_name(value).map_err(|e| {
                        CniError::new(code::INVALID_ENV, format!("invalid CNI_ARGS: {e}"))
                    })?;
                    args.pod_name = opt(value)
                }
                "K8S_POD_INFRA_CONTAINER_ID" => args.pod_infra_container_id = opt(value),
                "K8S_POD_UID" => args.pod_uid = opt(value),
                _ => args.unknown.push((key.to_string(), value.to_string())),
            }
        }
        args.ignore_unknown = ignore_unknown.unwrap_or(false);
        if !args.ignore_unknown {
            if let Some((k, v)) = args.unknown.first() {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("invalid CNI_ARGS: unknown argument {k}={v}"),
                )
                .with_details(
                    "weft-net knows K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_INFRA_CONTAINER_ID \
                     and K8S_POD_UID; add IgnoreUnknown=1 to CNI_ARGS to pass others",
                ));
            }
        }
        Ok(args)
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Environment

/// The `CNI_*` environment, checked for the command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    /// Empty for VERSION, STATUS and GC.
    pub container_id: String,
    /// `None` when absent or empty (allowed for DEL only among ADD/DEL/CHECK).
    pub netns: Option<String>,
    /// Empty for VERSION, STATUS and GC.
    pub ifname: String,
    pub args: CniArgs,
    pub path: Option<String>,
}

impl Env {
    /// Reads the environment through `get` (e.g. `std::env::var`). Errors are code 4 and name
    /// every missing or invalid variable.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let var = |name: &str| get(name).filter(|v| !v.is_empty());
        let command = match var("CNI_COMMAND") {
            None => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    "missing environment variable CNI_COMMAND",
                )
                .with_details("expected one of ADD, DEL, CHECK, VERSION, STATUS, GC"))
            }
            Some(c) => Command::parse(&c).ok_or_else(|| {
                CniError::new(
                    code::INVALID_ENV,
                    format!(
                        "invalid CNI_COMMAND={c:?}: expected one of ADD, DEL, CHECK, VERSION, \
                         STATUS, GC"
                    ),
                )
            })?,
        };
        let mut env = Env {
            command,
            container_id: String::new(),
            netns: None,
            ifname: String::new(),
            args: CniArgs::default(),
            path: var("CNI_PATH"),
        };
        if !command.is_attachment() {
            return Ok(env);
        }
        let mut missing = Vec::new();
        let mut invalid = Vec::new();
        match var("CNI_CONTAINERID") {
            None => missing.push("CNI_CONTAINERID"),
            Some(id) if !valid_container_id(&id) => invalid.push(format!(
                "CNI_CONTAINERID={id:?} (must start with a letter or digit, followed by letters, \
                 digits, '_', '.' or '-')"
            )),
            Some(id) => env.container_id = id,
        }
        env.netns = var("CNI_NETNS");
        if env.netns.is_none() && command != Command::Del {
            missing.push("CNI_NETNS");
        }
        match var("CNI_IFNAME") {
            None => missing.push("CNI_IFNAME"),
            Some(name) if !valid_ifname(&name) => invalid.push(format!(
                "CNI_IFNAME={name:?} (not a valid Linux interface name: 1-15 bytes, no '/', ':' \
                 or whitespace)"
            )),
            Some(name) => env.ifname = name,
        }
        if !missing.is_empty() || !invalid.is_empty() {
            let mut parts = Vec::new();
            if !missing.is_empty() {
                parts.push(format!(
                    "missing environment variable{} {}",
                    if missing.len() > 1 { "s" } else { "" },
                    missing.join(", ")
                ));
            }
            if !invalid.is_empty() {
                parts.push(format!("invalid {}", invalid.join(", ")));
            }
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("{} for CNI_COMMAND={command}", parts.join("; ")),
            ));
        }
        env.args = CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?;
        Ok(env)
    }
}

pub use weft_api::{valid_container_id, valid_ifname};

// ---------------------------------------------------------------------------------------------
// Results

/// An interface in a result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// 1.1.0 and later only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for an interface inside the container; empty for host interfaces.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    /// Fields of other plugins' results (`socketPath`, `pciID`, ...), passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An `ips` entry in a result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// `"4"` or `"6"`: present before 1.0.0 only (set on output by [`CniResult::to_json`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Address with prefix length, e.g. `10.32.0.7/12`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A `routes` entry in a result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    /// `mtu`, `advmss`, `priority`, `table`, `scope` (1.1.0) of other plugins, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A CNI result (ADD output, `prevResult`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Map<String, Value>,
}

impl CniResult {
    /// Reads a result of any supported version (`prevResult`); the `cniVersion` inside, if
    /// any, is ignored (the runtime converts it to the configuration's).
    pub fn from_value(v: &Value) -> Result<CniResult, String> {
        let mut r: CniResult = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        for ip in &mut r.ips {
            ip.version = None;
        }
        Ok(r)
    }

    /// The result JSON in the format of `version`.
    pub fn to_json(&self, version: CniVersion) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            interfaces: &'a [Interface],
            ips: &'a [IpConfig],
            routes: &'a [Route],
            dns: &'a Map<String, Value>,
        }
        let mut r = self.clone();
        for iface in &mut r.interfaces {
            if !version.interface_mtu() {
                iface.mtu = None;
            }
        }
        for ip in &mut r.ips {
            ip.version = version
                .ips_carry_version()
                .then(|| if ip.address.contains(':') { "6" } else { "4" }.to_string());
        }
        serde_json::to_string(&Out {
            cni_version: version.as_str(),
            interfaces: &r.interfaces,
            ips: &r.ips,
            routes: &r.routes,
            dns: &r.dns,
        })
        .expect("result JSON serializes")
    }

    /// Appends `ours` (a result whose interface indices count from 0) after `self` (a
    /// `prevResult`), shifting our indices; DNS settings of `self` win when present.
    pub fn merged_with(mut self, ours: CniResult) -> CniResult {
        let offset = self.interfaces.len();
        self.interfaces.extend(ours.interfaces);
        self.ips.extend(ours.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        self.routes.extend(ours.routes);
        if self.dns.is_empty() {
            self.dns = ours.dns;
        }
        self
    }

    /// Index of the interface `name` inside `sandbox`.
    pub fn find_sandbox_interface(&self, name: &str, sandbox: &str) -> Option<usize> {
        self.interfaces
            .iter()
            .position(|i| i.name == name && i.sandbox == sandbox)
    }
}

/// What the router allocated for a pod, with what the interface setup reported: the input
/// of [`pod_result`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodAttachment {
    pub host_ifname: String,
    pub host_mac: String,
    pub pod_ifname: String,
    pub pod_mac: String,
    pub netns: String,
    /// Address with prefix, e.g. `10.32.0.7/12`.
    pub ip: String,
    pub gateway: String,
    pub mtu: u32,
}

/// The result of ADD for one pod: host side at index 0, pod side at index 1, one address on
/// the pod side, a default route via the gateway, and `dns` from the configuration.
pub fn pod_result(a: &PodAttachment, dns: Map<String, Value>) -> CniResult {
    let default_dst = if a.ip.contains(':') {
        "::/0"
    } else {
        "0.0.0.0/0"
    };
    CniResult {
        interfaces: vec![
            Interface {
                name: a.host_ifname.clone(),
                mac: a.host_mac.clone(),
                mtu: Some(a.mtu),
                ..Default::default()
            },
            Interface {
                name: a.pod_ifname.clone(),
                mac: a.pod_mac.clone(),
                mtu: Some(a.mtu),
                sandbox: a.netns.clone(),
                ..Default::default()
            },
        ],
        ips: vec![IpConfig {
            address: a.ip.clone(),
            gateway: Some(a.gateway.clone()),
            interface: Some(1),
            ..Default::default()
        }],
        routes: vec![Route {
            dst: default_dst.to_string(),
            gw: Some(a.gateway.clone()),
            ..Default::default()
        }],
        dns,
    }
}

// ---------------------------------------------------------------------------------------------
// Network configuration

/// One still-valid attachment named by GC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The network configuration on stdin (one plugin's entry of a conflist, as the runtime
/// passes it).
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: CniVersion,
    pub name: String,
    pub plugin_type: String,
    /// Router API socket (`socket`, default [`DEFAULT_SOCKET`]).
    pub socket: String,
    /// `dns` of the configuration, copied into ADD results.
    pub dns: Map<String, Value>,
    /// `prevResult`, when the runtime passed one.
    pub prev_result: Option<CniResult>,
    /// `cni.dev/valid-attachments` (or the older `cni.dev/attachments`), GC only.
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The whole configuration as given.
    pub raw: Map<String, Value>,
}

/// The version to answer an error in: the configuration's when `stdin` parses far enough
/// and names a supported version, else [`LATEST`].
pub fn reply_version(stdin: &[u8]) -> CniVersion {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .and_then(CniVersion::parse)
        })
        .unwrap_or(LATEST)
}

fn supported_list() -> String {
    SUPPORTED_VERSIONS
        .iter()
        .map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The spec's network name: an alphanumeric first character, then alphanumerics, `_`, `.`, `-`.
pub fn valid_network_name(name: &str) -> bool {
    valid_container_id(name)
}

impl NetConf {
    /// Parses and checks the configuration for `command`: malformed JSON is code 6, an
    /// unsupported or absent `cniVersion` (or one too old for the command) code 1, an invalid
    /// field code 7, a delegated `ipam` code 2.
    pub fn parse(stdin: &[u8], command: Command) -> Result<NetConf, CniError> {
        if stdin.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(CniError::new(
                code::DECODE,
                "no network configuration on stdin",
            ));
        }
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE,
                "failed to decode the network configuration on stdin",
            )
            .with_details(e.to_string())
        })?;
        let Value::Object(raw) = value else {
            return Err(CniError::new(
                code::DECODE,
                "failed to decode the network configuration on stdin: not a JSON object",
            ));
        };
        let cni_version = match raw.get("cniVersion") {
            None | Some(Value::Null) => {
                return Err(CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    "incompatible CNI version: the network configuration has no cniVersion",
                )
                .with_details(format!(
                    "a configuration without cniVersion means 0.1.0; weft-net supports {}",
                    supported_list()
                )))
            }
            Some(Value::String(s)) => CniVersion::parse(s).ok_or_else(|| {
                CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!("incompatible CNI version {s:?}"),
                )
                .with_details(format!(
                    "the network configuration has cniVersion {s:?}; weft-net supports {}",
                    supported_list()
                ))
            })?,
            Some(other) => {
                return Err(CniError::new(
                    code::DECODE,
                    format!("failed to decode cniVersion {other}: not a string"),
                ))
            }
        };
        if cni_version < command.since() {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "CNI_COMMAND={command} is not part of CNI {cni_version} (it needs cniVersion \
                     {} or later)",
                    command.since()
                ),
            ));
        }
        let invalid = |msg: String| CniError::new(code::INVALID_CONFIG, msg);
        let string_field = |key: &str| -> Result<Option<String>, CniError> {
            match raw.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(invalid(format!(
                    "invalid network configuration: {key} must be a string, not {other}"
                ))),
            }
        };
        let name = string_field("name")?.unwrap_or_default();
        if !valid_network_name(&name) {
            return Err(invalid(format!(
                "invalid network configuration: name {name:?} (must start with a letter or \
                 digit, followed by letters, digits, '_', '.' or '-')"
            )));
        }
        let plugin_type = string_field("type")?.unwrap_or_default();
        if plugin_type.is_empty() {
            return Err(invalid(
                "invalid network configuration: no plugin type".to_string(),
            ));
        }
        let socket = string_field("socket")?.unwrap_or_else(|| DEFAULT_SOCKET.to_string());
        if !socket.starts_with('/') {
            return Err(invalid(format!(
                "invalid network configuration: socket {socket:?} is not an absolute path"
            )));
        }
        if let Some(ipam) = raw.get("ipam") {
            if let Some(t) = ipam.get("type").and_then(Value::as_str) {
                if !t.is_empty() {
                    return Err(CniError::new(
                        code::UNSUPPORTED_FIELD,
                        format!("unsupported field ipam.type={t:?}"),
                    )
                    .with_details(
                        "weft-net takes addresses from the weft router's IPAM; remove the ipam \
                         section",
                    ));
                }
            }
        }
        let dns = match raw.get("dns") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => {
                return Err(invalid(format!(
                    "invalid network configuration: dns must be an object, not {other}"
                )))
            }
        };
        let prev_result = match raw.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v) => Some(CniResult::from_value(v).map_err(|e| {
                CniError::new(code::DECODE, "failed to decode prevResult").with_details(e)
            })?),
        };
        let valid_attachments = ["cni.dev/valid-attachments", "cni.dev/attachments"]
            .into_iter()
            .find_map(|k| raw.get(k).filter(|v| !v.is_null()).map(|v| (k, v)))
            .map(|(k, v)| {
                serde_json::from_value::<Vec<Attachment>>(v.clone()).map_err(|e| {
                    invalid(format!(
                        "invalid network configuration: {k} must be a list of \
                         {{\"containerID\", \"ifname\"}}: {e}"
                    ))
                })
            })
            .transpose()?;
        if command == Command::Gc && valid_attachments.is_none() {
            return Err(invalid(
                "invalid network configuration: GC needs cni.dev/valid-attachments (the list \
                 of attachments to keep)"
                    .to_string(),
            ));
        }
        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            socket,
            dns,
            prev_result,
            valid_attachments,
            raw,
        })
    }
}

/// Helper for tests and logs: the `CNI_*` variables of a lookup as a sorted map.
pub fn env_snapshot(get: impl Fn(&str) -> Option<String>) -> BTreeMap<&'static str, String> {
    [
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_ARGS",
        "CNI_PATH",
    ]
    .into_iter()
    .filter_map(|k| get(k).map(|v| (k, v)))
    .collect()
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
