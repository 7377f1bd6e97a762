//! # weft-api: what the CNI plugin and the router say to each other
//!
//! The plugin (`weft-net`, crate `weft-cni`) asks the router for addresses and reports the
//! interfaces it made, over HTTP/1.1 JSON on the router's unix socket (`/cni/v1/*`, see
//! docs/pods.md). Both sides use the types here, so the wire format is written down once:
//! the requests and replies, the CNI error codes, the rules a request must satisfy, and a
//! small HTTP client for the router's socket (also used by `weft status`). Nothing here
//! serves: the router's handlers live in the router.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use std::time::Duration;

pub mod client;

/// Well-known CNI error codes (0-99 are the spec's, 100+ are weft's).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration (message names key and value).
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist (the runtime needs no cleanup).
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid or missing environment variables (message names them).
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure (reading stdin).
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content (malformed JSON).
    pub const DECODE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later (transient: router unreachable, IPAM not ready).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS (1.1.0): the plugin cannot service ADD requests.
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS (1.1.0): not available, and existing containers may have limited connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// weft: the address range is exhausted (from the router).
    pub const RANGE_EXHAUSTED: u32 = 100;
    /// weft: the router failed or answered something unexpected.
    pub const ROUTER_ERROR: u32 = 101;
    /// weft: creating, configuring or deleting the pod interface failed (netlink).
    pub const INTERFACE: u32 = 102;
    /// weft: CHECK found the attachment not as ADD left it.
    pub const CHECK_FAILED: u32 = 103;
}

/// How long an ADD may wait for address space to become available.
pub const ADD_DEADLINE: Duration = Duration::from_secs(20);

/// Longest container ID accepted (runtimes use 64 hex digits).
pub const MAX_CONTAINER_ID: usize = 255;

/// A Kubernetes namespace name: a DNS-1123 label (at most 63 of `a-z`, `0-9`, `-`, starting
/// and ending with a letter or digit). Empty means "not given".
pub fn check_pod_namespace(s: &str) -> Result<(), String> {
    if s.is_empty() || (s.len() <= 63 && dns_label(s)) {
        return Ok(());
    }
    Err(format!(
        "K8S_POD_NAMESPACE {:?} is not a Kubernetes namespace name (a DNS-1123 label: at most 63 lowercase letters, digits or '-')",
        shorten(s)
    ))
}

/// A Kubernetes pod name: a DNS-1123 subdomain (at most 253 bytes of dot-separated labels).
/// Empty means "not given".
pub fn check_pod_name(s: &str) -> Result<(), String> {
    if s.is_empty() || (s.len() <= 253 && s.split('.').all(dns_label)) {
        return Ok(());
    }
    Err(format!(
        "K8S_POD_NAME {:?} is not a Kubernetes pod name (a DNS-1123 subdomain: at most 253 lowercase letters, digits, '-' or '.')",
        shorten(s)
    ))
}

fn dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A value for an error message: at most 80 characters, control characters escaped (by
/// `{:?}`), so that no input forges log lines or floods them.
fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}

impl AddRequest {
    /// What the router checks of an ADD before allocating anything: the same rules as the
    /// plugin's (which reports them as code 4), for any other client of the socket.
    pub fn validate(&self) -> Result<(), ApiError> {
        let bad = |m: String| Err(ApiError::new(code::INVALID_ENV, m));
        if !valid_container_id(&self.container_id) {
            return bad(format!(
                "invalid container ID {:?} (at most {MAX_CONTAINER_ID} letters, digits, '_', '.', '-')",
                shorten(&self.container_id)
            ));
        }
        if !valid_ifname(&self.ifname) {
            return bad(format!(
                "invalid interface name {:?}",
                shorten(&self.ifname)
            ));
        }
        if !self.netns.starts_with('/') || self.netns.len() > 4096 || self.netns.contains('\0') {
            return bad(format!("invalid netns path {:?}", shorten(&self.netns)));
        }
        if let Some(ns) = &self.pod_namespace {
            check_pod_namespace(ns).map_err(|e| ApiError::new(code::INVALID_ENV, e))?;
        }
        if let Some(n) = &self.pod_name {
            check_pod_name(n).map_err(|e| ApiError::new(code::INVALID_ENV, e))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddRequest {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    #[serde(default)]
    pub pod_namespace: Option<String>,
    #[serde(default)]
    pub pod_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddReply {
    /// `10.32.0.7/12`
    pub ip: String,
    pub gateway: String,
    pub mtu: u32,
    pub bridge: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttachedRequest {
    pub container_id: String,
    pub ifname: String,
    /// `aa:bb:cc:dd:ee:ff`
    pub mac: String,
    pub host_ifname: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GcRequest {
    pub valid: Vec<Attachment>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GcReply {
    pub released: usize,
}

/// A failure with the CNI code the plugin should report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    pub code: u32,
}

impl ApiError {
    pub fn new(code: u32, error: impl Into<String>) -> Self {
        ApiError {
            error: error.into(),
            code,
        }
    }

    /// The HTTP status the router answers this error with: 503 for "try again later", 507
    /// for an exhausted range, 500 otherwise (a handler may choose another, e.g. 400).
    pub fn http_status(&self) -> u16 {
        match self.code {
            code::TRY_AGAIN_LATER => 503,
            code::RANGE_EXHAUSTED => 507,
            _ => 500,
        }
    }
}

/// The spec's container ID: an alphanumeric first character, then alphanumerics, `_`, `.`, `-`;
/// at most [`MAX_CONTAINER_ID`] bytes.
pub fn valid_container_id(id: &str) -> bool {
    if id.len() > MAX_CONTAINER_ID {
        return false;
    }
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// What the kernel accepts as an interface name.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}
