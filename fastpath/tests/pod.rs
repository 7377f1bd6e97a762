//! Pod attachments end to end: a "host" namespace with the bridge, pod namespaces attached to
//! it, real traffic between them. Needs root.

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{require_root, TestNs};
use weft_fastpath::garp::parse_announcement;
use weft_fastpath::{
    add_pod_interface, announce_pod_interface, check_pod_interface, del_pod_interface,
    host_ifname_for, reset, set_gateway, setup_node, Error, NodeConfig, NodeState, PodIface,
    PodIfaceRequest,
};

const BRIDGE: &str = "wtest-br";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 32, 0, 1);

fn node_cfg() -> NodeConfig {
    NodeConfig {
        bridge: BRIDGE.into(),
        tap: "wtest-tap".into(),
        mtu: 1376,
        bridge_mac: None,
    }
}

/// A host namespace with the node set up and its gateway address.
async fn host_node() -> (TestNs, NodeState) {
    let host = TestNs::new("host");
    let state = host
        .open()
        .run(|_| async {
            let st = setup_node(&node_cfg()).await?;
            set_gateway(BRIDGE, "10.32.0.1/12".parse().unwrap()).await?;
            Ok(st)
        })
        .await
        .unwrap();
    (host, state)
}

fn request(pod: &TestNs, container: &str, ip: &str, mtu: u32) -> PodIfaceRequest {
    PodIfaceRequest {
        netns: pod.path(),
        ifname: "eth0".into(),
        host_ifname: host_ifname_for(container, "eth0"),
        bridge: BRIDGE.into(),
        addr: format!("{ip}/12").parse().unwrap(),
        gateway: GATEWAY,
        mtu,
    }
}

async fn add(host: &TestNs, req: &PodIfaceRequest) -> Result<PodIface, Error> {
    let req = req.clone();
    host.open()
        .run(move |_| async move { add_pod_interface(&req).await })
        .await
}

/// What the router does once the pod's port is guarded: the gratuitous ARP.
async fn announce(host: &TestNs, req: &PodIfaceRequest) -> Result<(), Error> {
    let req = req.clone();
    host.open()
        .run(move |_| async move { announce_pod_interface(&req).await })
        .await
}

async fn check(host: &TestNs, req: &PodIfaceRequest) -> Result<(), Error> {
    let req = req.clone();
    host.open()
        .run(move |_| async move { check_pod_interface(&req).await })
        .await
}

async fn del(host: &TestNs, netns: Option<PathBuf>, host_ifname: &str) -> Result<(), Error> {
    let h = host_ifname.to_string();
    host.open()
        .run(move |_| async move { del_pod_interface(netns.as_deref(), &h, "eth0").await })
        .await
}

fn host_veths(host: &TestNs) -> Vec<String> {
    host.link_names()
        .into_iter()
        .filter(|n| n.starts_with("vethwe") || n.starts_with("weftp"))
        .collect()
}

/// A packet socket on `ifname` in `ns` that receives ARP frames.
fn arp_listener(ns: &TestNs, ifname: &str) -> OwnedFd {
    let ifname = std::ffi::CString::new(ifname).unwrap();
    ns.open()
        .run_blocking(move || {
            // SAFETY: plain syscalls on values we own; results checked.
            unsafe {
                let proto = (libc::ETH_P_ARP as u16).to_be();
                let fd = libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    i32::from(proto),
                );
                assert!(
                    fd >= 0,
                    "packet socket: {}",
                    std::io::Error::last_os_error()
                );
                let fd = OwnedFd::from_raw_fd(fd);
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = proto;
                sll.sll_ifindex = libc::if_nametoindex(ifname.as_ptr()) as i32;
                assert!(sll.sll_ifindex > 0);
                let rc = libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
                let tv = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 200_000,
                };
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                );
                fd
            }
        })
        .unwrap()
}

/// Wait up to 3 s for an ARP announcement on `sock`; return the (MAC, IP) ones seen.
fn announcements(sock: &OwnedFd, want_ip: Ipv4Addr) -> Vec<([u8; 6], Ipv4Addr)> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let mut buf = [0u8; 1600];
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        if let Some(a) = parse_announcement(&buf[..n as usize]) {
            seen.push(a);
            if a.1 == want_ip {
                break;
            }
        }
    }
    seen
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn two_pods_reach_each_other_and_the_gateway() {
    require_root!();
    let (host, state) = host_node().await;
    let pod1 = TestNs::new("pod1");
    let pod2 = TestNs::new("pod2");
    let r1 = request(&pod1, "container-one", "10.32.0.7", 1376);
    let r2 = request(&pod2, "container-two", "10.32.0.8", 1376);

    let i1 = add(&host, &r1).await.unwrap();
    // Listen on the bridge before the second ADD: its announcement must arrive there.
    let sock = arp_listener(&host, BRIDGE);
    let i2 = add(&host, &r2).await.unwrap();
    announce(&host, &r2).await.unwrap();
    let seen = announcements(&sock, Ipv4Addr::new(10, 32, 0, 8));
    assert!(
        seen.contains(&(i2.mac, Ipv4Addr::new(10, 32, 0, 8))),
        "no gratuitous ARP for 10.32.0.8 from {:02x?} on the bridge; saw {seen:02x?}",
        i2.mac
    );

    // What ADD reported is what the kernel has.
    assert_eq!(i1.mac, common::mac_of(&pod1, "eth0"));
    assert_eq!(i2.mac, common::mac_of(&pod2, "eth0"));
    assert_eq!(i1.host_ifname, r1.host_ifname);
    let idx = pod1.ip(&["-o", "link", "show", "eth0"]);
    assert!(
        idx.starts_with(&format!("{}: eth0", i1.ifindex_in_pod)),
        "{idx}"
    );

    // MTU, address, route, lo, host side on the bridge.
    let l = pod1.ip(&["-o", "link", "show", "eth0"]);
    assert!(l.contains("mtu 1376") && l.contains("UP"), "{l}");
    let a = pod1.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(a.contains("10.32.0.7/12"), "{a}");
    let r = pod1.ip(&["route", "show", "default"]);
    assert!(r.contains("default via 10.32.0.1 dev eth0"), "{r}");
    let lo = pod1.ip(&["-o", "link", "show", "lo"]);
    assert!(lo.contains(",UP"), "{lo}");
    let h = host.ip(&["-o", "link", "show", &r1.host_ifname]);
    assert!(
        h.contains(&format!("master {BRIDGE}")) && h.contains("mtu 1376"),
        "{h}"
    );
    let alias = host.ip(&["-d", "link", "show", &r1.host_ifname]);
    assert!(alias.contains("alias weft:eth0@/var/run/netns/"), "{alias}");

    // Traffic: pod to pod both ways, pods to the gateway.
    common::udp_echo(&pod1, &pod2, "10.32.0.8").unwrap();
    common::udp_echo(&pod2, &pod1, "10.32.0.7").unwrap();
    common::udp_echo(&pod1, &host, "10.32.0.1").unwrap();
    common::udp_echo(&pod2, &host, "10.32.0.1").unwrap();
    match common::ping(&pod1, "10.32.0.8") {
        Some(ok) => assert!(ok, "ping pod1 -> pod2 failed"),
        None => eprintln!("ping not installed; UDP echo covered connectivity"),
    }

    // Ports came and went; the bridge kept its MAC (pods cache it as the gateway's).
    assert_eq!(common::mac_of(&host, BRIDGE), state.bridge_mac);

    check(&host, &r1).await.unwrap();
    check(&host, &r2).await.unwrap();
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn mtu_is_as_requested() {
    require_root!();
    let (host, _) = host_node().await;
    let pod = TestNs::new("pod");
    let r = request(&pod, "c-mtu", "10.32.0.9", 1280);
    add(&host, &r).await.unwrap();
    assert!(pod.ip(&["-o", "link", "show", "eth0"]).contains("mtu 1280"));
    assert!(host
        .ip(&["-o", "link", "show", &r.host_ifname])
        .contains("mtu 1280"));
    check(&host, &r).await.unwrap();
    // A request for another MTU is a mismatch CHECK reports.
    let other = PodIfaceRequest { mtu: 1300, ..r };
    let err = check(&host, &other).await.unwrap_err().to_string();
    assert!(err.contains("MTU") && err.contains("1300"), "{err}");
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn add_retried_is_idempotent_and_a_conflict_is_refused() {
    require_root!();
    let (host, _) = host_node().await;
    let pod = TestNs::new("pod");
    let r = request(&pod, "c-retry", "10.32.0.10", 1376);
    let first = add(&host, &r).await.unwrap();
    let again = add(&host, &r).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(host_veths(&host), vec![r.host_ifname.clone()]);

    // Same interface name, another address: refused, and nothing new left behind.
    let other = PodIfaceRequest {
        addr: "10.32.0.11/12".parse().unwrap(),
        host_ifname: host_ifname_for("c-other", "eth0"),
        ..r.clone()
    };
    let err = add(&host, &other).await.unwrap_err();
    assert!(matches!(err, Error::PodIfaceConflict { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("eth0") && msg.contains("10.32.0.10/12") && msg.contains("10.32.0.11/12"),
        "{msg}"
    );
    assert_eq!(host_veths(&host), vec![r.host_ifname.clone()]);
    check(&host, &r).await.unwrap();

    // A leftover of an interrupted ADD (host end with our label, pod end never moved) is
    // replaced.
    let pod3 = TestNs::new("pod3");
    let r3 = request(&pod3, "c-leftover", "10.32.0.13", 1376);
    host.ip(&[
        "link",
        "add",
        &r3.host_ifname,
        "type",
        "veth",
        "peer",
        "name",
        "leftover1",
    ]);
    let label = format!("weft:eth0@{}", pod3.path().display());
    host.ip(&["link", "set", &r3.host_ifname, "alias", &label]);
    add(&host, &r3).await.unwrap();
    check(&host, &r3).await.unwrap();
    assert!(!host.link_names().contains(&"leftover1".to_string()));

    // A host name held by a foreign interface is refused, not deleted.
    let pod2 = TestNs::new("pod2");
    let r2 = request(&pod2, "c-foreign", "10.32.0.12", 1376);
    host.ip(&[
        "link",
        "add",
        &r2.host_ifname,
        "type",
        "veth",
        "peer",
        "name",
        "foreign1",
    ]);
    let err = add(&host, &r2).await.unwrap_err();
    assert!(matches!(err, Error::HostIfnameTaken { .. }), "{err:?}");
    assert!(host.link_names().contains(&"foreign1".to_string()));
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn a_failed_add_leaves_nothing_behind() {
    require_root!();
    let (host, _) = host_node().await;
    let pod = TestNs::new("pod");

    // Pod namespace that does not exist: fails before anything is made.
    let mut r = request(&pod, "c-fail", "10.32.0.20", 1376);
    r.netns = PathBuf::from("/var/run/netns/wfp-does-not-exist");
    let err = add(&host, &r).await.unwrap_err();
    assert!(matches!(err, Error::NetnsOpen { .. }), "{err:?}");
    assert_eq!(err.errno(), Some(libc::ENOENT));
    assert!(err.to_string().contains("wfp-does-not-exist"), "{err}");

    // A path that is not a network namespace.
    r.netns = PathBuf::from("/proc/self/ns/mnt");
    let err = add(&host, &r).await.unwrap_err();
    assert!(matches!(err, Error::NotANetns { .. }), "{err:?}");

    // A missing bridge.
    let r2 = PodIfaceRequest {
        bridge: "nosuch-br".into(),
        ..request(&pod, "c-fail", "10.32.0.20", 1376)
    };
    let err = add(&host, &r2).await.unwrap_err();
    assert!(err.to_string().contains("nosuch-br"), "{err}");

    // Failure late, inside the pod (gateway not on the pod's subnet, so the default route
    // cannot be added), after the pair was made, moved, renamed and addressed.
    let r3 = PodIfaceRequest {
        gateway: Ipv4Addr::new(10, 99, 0, 1),
        ..request(&pod, "c-fail", "10.32.0.20", 1376)
    };
    let err = add(&host, &r3).await.unwrap_err();
    assert!(matches!(err, Error::Netlink { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("default route") && msg.contains("10.99.0.1"),
        "{msg}"
    );
    assert_eq!(err.errno(), Some(libc::ENETUNREACH));

    assert!(
        host_veths(&host).is_empty(),
        "left in host: {:?}",
        host.link_names()
    );
    assert_eq!(pod.link_names(), vec!["lo".to_string()], "left in pod");

    // And the same pod can then be attached properly.
    let ok = request(&pod, "c-fail", "10.32.0.20", 1376);
    add(&host, &ok).await.unwrap();
    check(&host, &ok).await.unwrap();
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn del_is_idempotent_and_tolerates_a_deleted_netns() {
    require_root!();
    let (host, _) = host_node().await;
    let pod = TestNs::new("pod");
    let r = request(&pod, "c-del", "10.32.0.30", 1376);
    add(&host, &r).await.unwrap();

    del(&host, Some(pod.path()), &r.host_ifname).await.unwrap();
    assert!(host_veths(&host).is_empty());
    assert_eq!(pod.link_names(), vec!["lo".to_string()]);
    del(&host, Some(pod.path()), &r.host_ifname).await.unwrap();
    del(&host, None, &r.host_ifname).await.unwrap();

    // Attach again, then the runtime deletes the namespace before DEL.
    add(&host, &r).await.unwrap();
    let path = pod.path();
    pod.delete();
    del(&host, Some(path.clone()), &r.host_ifname)
        .await
        .unwrap();
    assert!(host_veths(&host).is_empty());
    del(&host, Some(path), &r.host_ifname).await.unwrap();

    // DEL leaves a pod interface that is not ours alone.
    let pod2 = TestNs::new("pod2");
    pod2.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    del(&host, Some(pod2.path()), &host_ifname_for("c-x", "eth0"))
        .await
        .unwrap();
    assert!(pod2.link_names().contains(&"eth0".to_string()));
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn check_detects_a_removed_address() {
    require_root!();
    let (host, _) = host_node().await;
    let pod = TestNs::new("pod");
    let r = request(&pod, "c-check", "10.32.0.40", 1376);
    add(&host, &r).await.unwrap();
    check(&host, &r).await.unwrap();

    pod.ip(&["addr", "del", "10.32.0.40/12", "dev", "eth0"]);
    let err = check(&host, &r).await.unwrap_err();
    assert!(matches!(err, Error::CheckFailed { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("lacks address 10.32.0.40/12"), "{msg}");
    assert!(msg.contains(&r.host_ifname), "{msg}");

    // Host side detached from the bridge: reported too.
    host.ip(&["link", "set", &r.host_ifname, "nomaster"]);
    let msg = check(&host, &r).await.unwrap_err().to_string();
    assert!(msg.contains("not attached to bridge"), "{msg}");

    // ADD repairs what it can recognise as its own: the address is gone, so the interface
    // no longer matches and ADD refuses rather than guess.
    let err = add(&host, &r).await.unwrap_err();
    assert!(matches!(err, Error::PodIfaceConflict { .. }), "{err:?}");
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn reset_removes_pods_bridge_and_tap() {
    require_root!();
    let (host, _) = host_node().await;
    let pod1 = TestNs::new("pod1");
    let pod2 = TestNs::new("pod2");
    add(&host, &request(&pod1, "c-r1", "10.32.0.50", 1376))
        .await
        .unwrap();
    add(&host, &request(&pod2, "c-r2", "10.32.0.51", 1376))
        .await
        .unwrap();
    assert_eq!(host_veths(&host).len(), 2);

    let removed = host
        .open()
        .run(|_| async { reset(&node_cfg()).await })
        .await
        .unwrap();
    assert_eq!(removed.len(), 4, "{removed:?}");
    assert_eq!(host.link_names(), vec!["lo".to_string()]);
    assert_eq!(pod1.link_names(), vec!["lo".to_string()]);
    let again = host
        .open()
        .run(|_| async { reset(&node_cfg()).await })
        .await
        .unwrap();
    assert!(again.is_empty());
}

/// Connect from `pod` to `target` and exchange one message with `listener` (a socket of the
/// pod's, set non-blocking). Returns the peer address the listener saw.
fn tcp_echo(
    pod: &TestNs,
    listener: &TcpListener,
    target: SocketAddr,
    timeout: Duration,
) -> Result<SocketAddr, String> {
    let srv = listener.try_clone().map_err(|e| e.to_string())?;
    let server = std::thread::spawn(move || -> Result<SocketAddr, String> {
        let deadline = Instant::now() + timeout + Duration::from_millis(500);
        let (mut conn, peer) = loop {
            match srv.accept() {
                Ok(c) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err("listener: no connection arrived".into());
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        conn.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 64];
        let n = conn
            .read(&mut buf)
            .map_err(|e| format!("server read: {e}"))?;
        conn.write_all(&buf[..n])
            .map_err(|e| format!("server write: {e}"))?;
        Ok(peer)
    });
    let client = pod
        .open()
        .run_blocking(move || TcpStream::connect_timeout(&target, timeout))
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| format!("connect {target}: {e}")))
        .and_then(|mut c| {
            c.set_read_timeout(Some(timeout)).unwrap();
            c.write_all(b"weft-hairpin")
                .map_err(|e| format!("client write: {e}"))?;
            let mut buf = [0u8; 64];
            let n = c.read(&mut buf).map_err(|e| format!("client read: {e}"))?;
            if &buf[..n] != b"weft-hairpin" {
                return Err(format!("echo mismatch: {:?}", &buf[..n]));
            }
            Ok(())
        });
    let server = server.join().unwrap();
    client?;
    server
}

/// Set `bridge-nf-call-iptables` in `ns` (per namespace since Linux 5.3). `false` when
/// `br_netfilter` is not loaded (the file is absent).
fn set_bridge_nf(ns: &TestNs, on: bool) -> bool {
    let v = if on { "1" } else { "0" };
    ns.open()
        .run_blocking(move || {
            weft_fastpath::sysctl::ensure("net/bridge/bridge-nf-call-iptables", v).is_ok()
        })
        .unwrap()
}

fn have_nft() -> bool {
    std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Hairpin: a pod reaching itself through a service address that the node DNATs back to it.
///
/// The host namespace gets what kube-proxy would install for a service 10.96.0.10:80 whose
/// only endpoint is the pod's 10.32.0.60:8080: a DNAT at `ip nat prerouting`, and a masquerade
/// of the connections whose source is the endpoint itself. The service address is off-link
/// for the pod, so it sends to its gateway's MAC: the frame enters the bridge on the pod's
/// port, addressed to the bridge.
///
/// What each piece is for (each verified by leaving it out):
/// - The masquerade (SNAT to the gateway address). Without it the pod gets a SYN from its own
///   address; its answer to its own address stays inside the pod (loopback) and never reaches
///   the node's conntrack to be translated back, so the client never sees a reply from
///   10.96.0.10:80. (It still fails with `accept_local=1` in the pod.) With it, the pod answers
///   the gateway, and the node translates both ways.
/// - Hairpin, with `br_netfilter` (`bridge-nf-call-iptables=1`, which kube-proxy requires and
///   which is the default wherever the module is loaded). The IPv4 prerouting hooks run while
///   the frame is being bridged; after the DNAT its destination lies behind the bridge itself,
///   so `br_netfilter` hands it back to the bridge as if it had arrived on the pod's port, and
///   the bridge must send it out of that same port. Without hairpin the bridge drops it (the
///   connection times out). Replies take the same path (they are translated at prerouting).
/// - Without `br_netfilter` (`bridge-nf-call-iptables=0`) the frame goes up to the node's IP
///   stack, is routed, and is sent by the bridge device itself: no port is re-entered, and it
///   works with hairpin off. Asserted below too, so this comment stays true.
#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn a_pod_reaches_itself_through_a_service_address() {
    require_root!();
    if !have_nft() {
        eprintln!("skipped: needs nft (apt-get install nftables)");
        return;
    }
    let (host, _) = host_node().await;
    let pod = TestNs::new("pod");
    let r = request(&pod, "c-hairpin", "10.32.0.60", 1376);
    add(&host, &r).await.unwrap();

    // ADD turned hairpin on, and CHECK agrees.
    let d = host.ip(&["-d", "link", "show", &r.host_ifname]);
    assert!(d.contains("hairpin on"), "{d}");
    check(&host, &r).await.unwrap();

    let rules = "table ip svc { \
        chain pre { type nat hook prerouting priority dstnat; \
            ip daddr 10.96.0.10 tcp dport 80 dnat to 10.32.0.60:8080; }; \
        chain post { type nat hook postrouting priority srcnat; \
            ct status dnat ip saddr 10.32.0.60 ip daddr 10.32.0.60 masquerade; }; }";
    common::run("ip", &["netns", "exec", &host.name, "nft", rules]);
    let listener = pod
        .open()
        .run_blocking(|| TcpListener::bind("0.0.0.0:8080"))
        .unwrap()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let service: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let ok = Duration::from_secs(3);
    let short = Duration::from_millis(1500);

    let hairpin_off = || {
        host.ip(&[
            "link",
            "set",
            "dev",
            &r.host_ifname,
            "type",
            "bridge_slave",
            "hairpin",
            "off",
        ]);
        let d = host.ip(&["-d", "link", "show", &r.host_ifname]);
        assert!(d.contains("hairpin off"), "{d}");
    };

    let br_netfilter = set_bridge_nf(&host, true);
    if br_netfilter {
        // Bridged DNAT: works with hairpin on; the pod saw the gateway (masquerade).
        let peer = tcp_echo(&pod, &listener, service, ok).unwrap();
        assert_eq!(peer.ip(), GATEWAY, "{peer}");

        // Hairpin off: the same connection times out.
        hairpin_off();
        let err = tcp_echo(&pod, &listener, service, short).unwrap_err();
        assert!(
            err.contains("connect 10.96.0.10:80") && err.contains("timed out"),
            "{err}"
        );
        // CHECK reports it.
        let msg = check(&host, &r).await.unwrap_err().to_string();
        assert!(msg.contains("hairpin mode is off"), "{msg}");
    } else {
        eprintln!("br_netfilter not loaded: only the routed case is tested");
    }

    // Routed (no br_netfilter): no port is re-entered, so it works with hairpin off.
    if br_netfilter {
        assert!(set_bridge_nf(&host, false));
    }
    hairpin_off();
    let peer = tcp_echo(&pod, &listener, service, ok).unwrap();
    assert_eq!(peer.ip(), GATEWAY, "{peer}");

    // A repeated ADD turns hairpin back on; CHECK is clean again and the bridged case works.
    add(&host, &r).await.unwrap();
    let d = host.ip(&["-d", "link", "show", &r.host_ifname]);
    assert!(d.contains("hairpin on"), "{d}");
    check(&host, &r).await.unwrap();
    if br_netfilter {
        assert!(set_bridge_nf(&host, true));
        let peer = tcp_echo(&pod, &listener, service, ok).unwrap();
        assert_eq!(peer.ip(), GATEWAY, "{peer}");
    }
}
