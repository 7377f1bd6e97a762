//! Running netlink work inside another network namespace.
//!
//! A network namespace is a property of a *thread* (`setns(2)` changes only the caller), and a
//! netlink or packet socket belongs to the namespace its creating thread was in at creation.
//! So the safe way to work inside a pod's namespace from an async daemon is: open the namespace
//! file, start a dedicated OS thread, `setns` there, and run a single-threaded tokio runtime on
//! that thread with its own rtnetlink connection. A tokio worker thread is never moved: the
//! rest of the process stays where it was, whatever the closure does or however it fails.
//!
//! CNI hands us a path (`/var/run/netns/NAME`, `/proc/PID/ns/net`); [`Netns::open`] opens it
//! once and checks that it really is a network namespace (`NS_GET_NSTYPE`), so later steps act
//! on that namespace even if the path is replaced meanwhile.

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::nl::Netlink;

/// An opened network namespace.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    path: PathBuf,
}

impl Netns {
    /// Open `path` and check that it is a network namespace.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
            Error::NotANetns {
                path: path.clone(),
                detail: "path contains a NUL byte".into(),
            }
        })?;
        // SAFETY: c_path is a valid NUL-terminated string; the result is checked.
        let raw = unsafe { libc::open(c_path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(Error::NetnsOpen {
                path,
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: raw is a freshly opened descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: NS_GET_NSTYPE takes no argument; fd is valid for the call.
        let kind = unsafe { libc::ioctl(fd.as_raw_fd(), libc::NS_GET_NSTYPE) };
        if kind < 0 {
            let e = io::Error::last_os_error();
            let detail = if e.raw_os_error() == Some(libc::ENOTTY) {
                "not a namespace file".to_string()
            } else {
                format!("NS_GET_NSTYPE: {e}")
            };
            return Err(Error::NotANetns { path, detail });
        }
        if kind != libc::CLONE_NEWNET {
            return Err(Error::NotANetns {
                path,
                detail: format!("namespace of another kind (type {kind:#x})"),
            });
        }
        Ok(Netns { fd, path })
    }

    /// The path this namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn label(&self) -> String {
        self.path.display().to_string()
    }

    pub(crate) fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    fn enter(&self) -> Result<()> {
        let label = self.label();
        // SAFETY: setns on our own valid fd; affects only the calling thread, which is one of
        // our dedicated threads.
        if unsafe { libc::setns(self.fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(Error::NetnsEnter {
                path: self.path.clone(),
                source: io::Error::last_os_error(),
            });
        }
        THREAD_NETNS.with(|l| *l.borrow_mut() = Some(label));
        Ok(())
    }

    /// Run `f` on a dedicated thread inside this namespace, with a netlink connection opened
    /// there. Anything `f` creates (sockets, TAP devices, `/proc/sys/net` writes) happens in
    /// the namespace; the caller's thread never changes namespace. The returned future does
    /// not borrow `self` (the namespace descriptor is duplicated up front).
    pub fn run<F, Fut, T>(&self, f: F) -> impl Future<Output = Result<T>> + Send + 'static
    where
        F: FnOnce(Netlink) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + 'static,
        T: Send + 'static,
    {
        let ns = self.try_clone();
        let label = self.label();
        async move {
            let ns = ns?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            let spawned = std::thread::Builder::new()
                .name("weft-netns".into())
                .spawn(move || {
                    let out = ns.enter().and_then(|()| {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .map_err(|e| Error::Worker {
                                ns: ns.label(),
                                detail: format!("cannot build runtime: {e}"),
                            })?;
                        rt.block_on(async move { f(Netlink::connect(ns.label())?).await })
                    });
                    let _ = tx.send(out);
                });
            if let Err(e) = spawned {
                return Err(Error::Worker {
                    ns: label,
                    detail: format!("cannot spawn thread: {e}"),
                });
            }
            rx.await.unwrap_or_else(|_| {
                Err(Error::Worker {
                    ns: label,
                    detail: "thread panicked".into(),
                })
            })
        }
    }

    /// Run a blocking closure on a dedicated thread inside this namespace (for sockets and
    /// other non-netlink work). Blocks the caller until `f` returns.
    pub fn run_blocking<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        std::thread::scope(|s| {
            let h = std::thread::Builder::new()
                .name("weft-netns".into())
                .spawn_scoped(s, || self.enter().map(|()| f()))
                .map_err(|e| Error::Worker {
                    ns: self.label(),
                    detail: format!("cannot spawn thread: {e}"),
                })?;
            h.join().unwrap_or_else(|_| {
                Err(Error::Worker {
                    ns: self.label(),
                    detail: "thread panicked".into(),
                })
            })
        })
    }

    fn try_clone(&self) -> Result<Netns> {
        let fd = self.fd.try_clone().map_err(|e| Error::Worker {
            ns: self.label(),
            detail: format!("dup of the namespace fd: {e}"),
        })?;
        Ok(Netns {
            fd,
            path: self.path.clone(),
        })
    }
}

/// Open the namespace at `path` and [`Netns::run`] `f` in it.
pub async fn run_in_netns<F, Fut, T>(path: impl AsRef<Path>, f: F) -> Result<T>
where
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>> + 'static,
    T: Send + 'static,
{
    Netns::open(path)?.run(f).await
}

thread_local! {
    /// The path of the namespace this thread entered through [`Netns`], if it did.
    static THREAD_NETNS: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// The calling thread's network namespace, for error messages and logs: the path it was
/// entered by (on our namespace threads), else the kernel's name for it (`net:[4026531840]`).
pub fn current_netns_label() -> String {
    if let Some(label) = THREAD_NETNS.with(|l| l.borrow().clone()) {
        return label;
    }
    match std::fs::read_link("/proc/thread-self/ns/net") {
        Ok(p) => p.display().to_string(),
        Err(_) => "the current netns".to_string(),
    }
}
