//! The namespace runner: errors for bad paths, and the caller never changes namespace.

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

mod common;

use common::{require_root, TestNs};
use weft_fastpath::netns::current_netns_label;
use weft_fastpath::{run_in_netns, Error, Netns};

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn runs_inside_and_leaves_the_caller_where_it_was() {
    require_root!();
    let ns = TestNs::new("ns");
    let before = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let (label, inode, links) = run_in_netns(ns.path(), |nl| async move {
        let links = nl.links().await?;
        let inode = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        Ok((current_netns_label(), inode, links))
    })
    .await
    .unwrap();
    assert_eq!(label, ns.path().display().to_string());
    assert_ne!(inode, before, "closure did not run in the namespace");
    // A fresh namespace has only lo.
    assert_eq!(
        links.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        ["lo"]
    );
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
        before
    );

    // The blocking variant too, and it can borrow.
    let name = String::from("lo");
    let opened = ns.open();
    let idx = opened
        .run_blocking(|| {
            let c = std::ffi::CString::new(name.as_str()).unwrap();
            // SAFETY: valid C string.
            unsafe { libc::if_nametoindex(c.as_ptr()) }
        })
        .unwrap();
    assert_eq!(idx, 1);

    // Errors from the closure come back as they are.
    let err = run_in_netns(
        ns.path(),
        |nl| async move { nl.require_link("nosuch0").await },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::LinkNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains(&ns.name), "{err}");
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn bad_paths_are_refused_clearly() {
    require_root!();
    let err = Netns::open("/var/run/netns/wfp-no-such-ns").unwrap_err();
    assert!(matches!(err, Error::NetnsOpen { .. }), "{err:?}");
    assert_eq!(err.errno(), Some(libc::ENOENT));
    assert!(err.to_string().contains("/var/run/netns/wfp-no-such-ns"));

    let err = Netns::open("/etc/hostname").unwrap_err();
    assert!(matches!(err, Error::NotANetns { .. }), "{err:?}");
    let err = Netns::open("/proc/self/ns/uts").unwrap_err();
    assert!(err.to_string().contains("another kind"), "{err}");
    assert!(Netns::open("/proc/self/ns/net").is_ok());
}
