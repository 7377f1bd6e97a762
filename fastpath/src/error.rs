//! The crate's error type.
//!
//! Every variant names what was being done, to which interface, in which network namespace, and
//! carries the underlying `io::Error` (so the errno is there: [`Error::errno`]). Namespaces are
//! named by the path the caller gave (`/var/run/netns/x`, `/proc/123/ns/net`) or, for the
//! namespace the calling thread is in, by its kernel identity (`net:[4026531840]`).

use std::io;
use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while plumbing the node or a pod.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An interface name that the kernel would refuse (empty, too long, `/`, whitespace, ...).
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    /// A request that cannot be carried out as given (MTU out of range, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// The namespace path could not be opened (most often: it does not exist).
    #[error("network namespace {path}: cannot open: {source}")]
    NetnsOpen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The path exists but is not a network namespace (not an nsfs file, or another kind).
    #[error("{path} is not a network namespace ({detail})")]
    NotANetns { path: PathBuf, detail: String },

    /// `setns(2)` into the namespace failed.
    #[error("network namespace {path}: setns failed: {source}")]
    NetnsEnter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The dedicated namespace thread (or its runtime) could not be started, or it died.
    #[error("namespace worker for {ns}: {detail}")]
    Worker { ns: String, detail: String },

    /// Opening the rtnetlink socket failed.
    #[error("netlink socket in {ns}: {source}")]
    NetlinkSocket {
        ns: String,
        #[source]
        source: io::Error,
    },

    /// A netlink request was refused by the kernel (or failed in transit).
    #[error("{op} {target} in {ns}: {source}")]
    Netlink {
        op: &'static str,
        target: String,
        ns: String,
        #[source]
        source: io::Error,
    },

    /// A link that must exist does not.
    #[error("link {name} not found in {ns}")]
    LinkNotFound { name: String, ns: String },

    /// A link with the wanted name exists but is of another type.
    #[error("{name} in {ns} is a {found} link, expected a {expected}")]
    WrongLinkType {
        name: String,
        ns: String,
        found: String,
        expected: &'static str,
    },

    /// Creating or configuring the TAP device through `/dev/net/tun` failed.
    #[error("TAP {name} in {ns}: {op}: {source}")]
    Tap {
        name: String,
        ns: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// A TAP with the wanted name exists but not in the form the sleeve expects.
    #[error("TAP {name} in {ns} exists but {detail}; delete it (a node reset does) and retry")]
    TapMismatch {
        name: String,
        ns: String,
        detail: String,
    },

    /// Reading or writing a sysctl under `/proc/sys` failed.
    #[error("sysctl {key} in {ns}: {op}: {source}")]
    Sysctl {
        key: String,
        ns: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// ADD found the pod's interface name already taken by something that is not this
    /// attachment (another address, another link type).
    #[error("{ifname} in {netns} already exists with a different configuration: {detail}")]
    PodIfaceConflict {
        ifname: String,
        netns: PathBuf,
        detail: String,
    },

    /// The host-side veth name is in use by another attachment (a hash collision or a foreign
    /// interface): we refuse to delete what is not ours.
    #[error("host interface {host_ifname} in {ns} belongs to {owner:?}, not {wanted:?}")]
    HostIfnameTaken {
        host_ifname: String,
        ns: String,
        owner: String,
        wanted: String,
    },

    /// The kernel lacks a feature weft needs for this (a link type it cannot create, ...).
    #[error("kernel lacks {what} in {ns}: {source}")]
    Unsupported {
        what: &'static str,
        ns: String,
        #[source]
        source: io::Error,
    },

    /// Installing or removing IPsec (XFRM) state or policy failed.
    #[error("{op} {target}: {detail}")]
    Xfrm {
        op: &'static str,
        target: String,
        detail: String,
        errno: Option<i32>,
    },

    /// CHECK found the attachment not as requested; `detail` lists every mismatch.
    #[error("check of {ifname} in {netns} (host side {host_ifname}): {detail}")]
    CheckFailed {
        ifname: String,
        host_ifname: String,
        netns: PathBuf,
        detail: String,
    },
}

impl Error {
    /// The errno behind this error, when it came from the kernel.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::NetnsOpen { source, .. }
            | Error::NetnsEnter { source, .. }
            | Error::NetlinkSocket { source, .. }
            | Error::Netlink { source, .. }
            | Error::Tap { source, .. }
            | Error::Sysctl { source, .. }
            | Error::Unsupported { source, .. } => source.raw_os_error(),
            Error::Xfrm { errno, .. } => *errno,
            _ => None,
        }
    }
}

/// Turn an rtnetlink error into an `io::Error`, keeping the errno when the kernel sent one.
pub(crate) fn nl_to_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(msg) if msg.raw_code() != 0 => msg.to_io(),
        other => io::Error::other(other.to_string()),
    }
}
