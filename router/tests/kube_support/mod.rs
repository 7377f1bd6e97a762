//! An in-process fake Kubernetes API server for the kube tests (no real API server can be
//! installed on the build machines).
//!
//! It keeps objects of four kinds (nodes, pods, namespaces, networkpolicies) as JSON with one
//! global resourceVersion counter, like etcd, and a history of change events. It serves:
//! - `GET /api/v1/nodes` (and the other collections): a list with `metadata.resourceVersion`;
//! - `GET ...?watch=true&resourceVersion=N`: the events after N from history, then live
//!   events, as a chunked stream of JSON lines; `410 Gone` (an ERROR event, as the real
//!   server sends it) when N is older than the compacted history; `BOOKMARK` events on demand
//!   when the client asked for `allowWatchBookmarks`;
//! - `PATCH /api/v1/nodes/{name}/status` with a strategic merge patch (conditions merged by
//!   `type`) or a JSON merge patch (lists replaced), emitting a MODIFIED event.
//!
//! Test controls: change objects, compact history, end or break open watches, answer 503
//! ("down"), stop listening and start again on the same port; every request is logged.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Nodes,
    Pods,
    Namespaces,
    NetworkPolicies,
}

pub const KINDS: [Kind; 4] = [
    Kind::Nodes,
    Kind::Pods,
    Kind::Namespaces,
    Kind::NetworkPolicies,
];

impl Kind {
    pub fn path(self) -> &'static str {
        match self {
            Kind::Nodes => "/api/v1/nodes",
            Kind::Pods => "/api/v1/pods",
            Kind::Namespaces => "/api/v1/namespaces",
            Kind::NetworkPolicies => "/apis/networking.k8s.io/v1/networkpolicies",
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Kind::Nodes => "Node",
            Kind::Pods => "Pod",
            Kind::Namespaces => "Namespace",
            Kind::NetworkPolicies => "NetworkPolicy",
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Kind::NetworkPolicies => "networking.k8s.io/v1",
            _ => "v1",
        }
    }
    fn from_path(p: &str) -> Option<Kind> {
        KINDS.into_iter().find(|k| k.path() == p)
    }
}

/// One logged request.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    pub authorization: Option<String>,
    pub body: Option<Value>,
}

impl Request {
    pub fn is_watch(&self) -> bool {
        matches!(
            self.query.get("watch").map(String::as_str),
            Some("true" | "1")
        )
    }
}

enum Msg {
    Data(Bytes),
    /// Break the connection mid-stream (no clean end of the chunked body).
    Abort,
}

struct WatchConn {
    kind: Kind,
    /// The client sent `allowWatchBookmarks=true`.
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Msg>,
}

#[derive(Default)]
struct Objects {
    objects: BTreeMap<String, Value>,
    /// (resourceVersion, event type, object) since the last compaction.
    history: Vec<(u64, &'static str, Value)>,
}

#[derive(Default)]
struct St {
    rv: u64,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    kinds: BTreeMap<Kind, Objects>,
    watches: Vec<WatchConn>,
    requests: Vec<Request>,
    down: bool,
}

struct Inner {
    st: Mutex<St>,
    addr: SocketAddr,
    server: Mutex<Option<JoinHandle<()>>>,
}

/// The fake server. Cloning shares it.
#[derive(Clone)]
pub struct FakeApi {
    inner: Arc<Inner>,
}

fn key_of(obj: &Value) -> String {
    let name = obj["metadata"]["name"].as_str().expect("object has a name");
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

fn event_line(ty: &str, obj: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({ "type": ty, "object": obj })).unwrap();
    v.push(b'\n');
    Bytes::from(v)
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

fn status_response(code: u16, reason: &str, message: &str) -> Response {
    let mut r = (
        StatusCode::from_u16(code).unwrap(),
        axum::Json(status_body(code, reason, message)),
    )
        .into_response();
    if code == 503 {
        r.headers_mut()
            .insert(header::CONNECTION, "close".parse().unwrap());
    }
    r
}

impl FakeApi {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> FakeApi {
        FakeApi::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on `addr` (a port picked earlier: "the API server comes up later").
    pub async fn start_on(addr: SocketAddr) -> FakeApi {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let api = FakeApi {
            inner: Arc::new(Inner {
                st: Mutex::new(St::default()),
                addr,
                server: Mutex::new(None),
            }),
        };
        api.serve(listener);
        api
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = self.router();
        let h = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        *self.inner.server.lock().unwrap() = Some(h);
    }

    /// Also serves on `listener` (e.g. one bound inside a network namespace: the same
    /// objects, watches and controls). Runs until the test's runtime ends.
    pub fn serve_also(&self, listener: tokio::net::TcpListener) {
        let app = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
    }

    /// The HTTP routes, to serve on another listener (TLS).
    pub fn router(&self) -> Router {
        Router::new()
            .fallback(handle)
            .with_state(self.inner.clone())
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// A kube client for this server, built the way the router builds its own.
    pub fn client(&self) -> kube::Client {
        client_for(&self.url())
    }

    fn with<T>(&self, f: impl FnOnce(&mut St) -> T) -> T {
        f(&mut self.inner.st.lock().unwrap())
    }

    /// Creates or replaces an object; returns its new resourceVersion.
    pub fn apply(&self, kind: Kind, obj: impl serde::Serialize) -> u64 {
        let mut obj = serde_json::to_value(obj).unwrap();
        obj["apiVersion"] = kind.api_version().into();
        obj["kind"] = kind.kind().into();
        self.with(|st| {
            st.rv += 1;
            let rv = st.rv;
            obj["metadata"]["resourceVersion"] = rv.to_string().into();
            let key = key_of(&obj);
            let objs = st.kinds.entry(kind).or_default();
            let ty = if objs.objects.contains_key(&key) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            objs.objects.insert(key, obj.clone());
            objs.history.push((rv, ty, obj.clone()));
            broadcast(st, kind, event_line(ty, &obj));
            rv
        })
    }

    /// Deletes an object (`name` or `namespace/name`); false if there was none.
    pub fn delete(&self, kind: Kind, key: &str) -> bool {
        self.with(|st| {
            let Some(mut obj) = st.kinds.entry(kind).or_default().objects.remove(key) else {
                return false;
            };
            st.rv += 1;
            obj["metadata"]["resourceVersion"] = st.rv.to_string().into();
            let rv = st.rv;
            st.kinds
                .get_mut(&kind)
                .unwrap()
                .history
                .push((rv, "DELETED", obj.clone()));
            broadcast(st, kind, event_line("DELETED", &obj));
            true
        })
    }

    pub fn object(&self, kind: Kind, key: &str) -> Option<Value> {
        self.with(|st| st.kinds.get(&kind)?.objects.get(key).cloned())
    }

    pub fn resource_version(&self) -> u64 {
        self.with(|st| st.rv)
    }

    /// Forgets all history: a watch from any earlier resourceVersion gets 410 Gone.
    pub fn compact(&self) {
        self.with(|st| {
            st.compacted = st.rv;
            for o in st.kinds.values_mut() {
                o.history.clear();
            }
        })
    }

    /// Ends every open watch cleanly (as the server does at its timeout).
    pub fn end_watches(&self) {
        self.with(|st| st.watches.clear())
    }

    /// Breaks every open watch mid-stream (a dropped connection).
    pub fn break_watches(&self) {
        self.with(|st| {
            for w in st.watches.drain(..) {
                let _ = w.tx.send(Msg::Abort);
            }
        })
    }

    /// Sends a BOOKMARK with the current resourceVersion on every open watch of `kind`
    /// that asked for bookmarks; returns how many got one.
    pub fn bookmark(&self, kind: Kind) -> usize {
        self.with(|st| {
            let obj = json!({
                "kind": kind.kind(), "apiVersion": kind.api_version(),
                "metadata": { "resourceVersion": st.rv.to_string() },
            });
            let line = event_line("BOOKMARK", &obj);
            st.watches.retain(|w| w.kind != kind || !w.tx.is_closed());
            st.watches
                .iter()
                .filter(|w| w.kind == kind && w.bookmarks)
                .filter(|w| w.tx.send(Msg::Data(line.clone())).is_ok())
                .count()
        })
    }

    /// Open watches of `kind`.
    pub fn open_watches(&self, kind: Kind) -> usize {
        self.with(|st| {
            st.watches.retain(|w| !w.tx.is_closed());
            st.watches.iter().filter(|w| w.kind == kind).count()
        })
    }

    /// While down, every request gets `503 Service Unavailable`; going down breaks open
    /// watches.
    pub fn set_down(&self, down: bool) {
        self.with(|st| {
            st.down = down;
            if down {
                for w in st.watches.drain(..) {
                    let _ = w.tx.send(Msg::Abort);
                }
            }
        })
    }

    /// Stops listening (connections are refused) and breaks open watches.
    pub fn stop(&self) {
        self.set_down(true);
        if let Some(h) = self.inner.server.lock().unwrap().take() {
            h.abort();
        }
    }

    /// Listens again on the same address.
    pub async fn restart(&self) {
        let listener = tokio::net::TcpListener::bind(self.inner.addr)
            .await
            .unwrap();
        self.set_down(false);
        self.serve(listener);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.with(|st| st.requests.clone())
    }

    /// Lists (not watches) of `kind` served so far.
    pub fn lists(&self, kind: Kind) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == kind.path() && !r.is_watch())
            .count()
    }

    /// Watch requests of `kind` so far, in order.
    pub fn watches(&self, kind: Kind) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path == kind.path() && r.is_watch())
            .collect()
    }

    pub fn patches(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "PATCH")
            .collect()
    }
}

fn broadcast(st: &mut St, kind: Kind, line: Bytes) {
    st.watches
        .retain(|w| w.kind != kind || w.tx.send(Msg::Data(line.clone())).is_ok());
}

/// A kube client for `url`, through the router's own constructor.
pub fn client_for(url: &str) -> kube::Client {
    let cfg = kube::Config::new(url.parse().unwrap());
    weft::kube::client_from_config(cfg).unwrap()
}

fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = parse_query(uri.query());
    let hdr = |h| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let path = uri.path().to_string();
    let mut st = inner.st.lock().unwrap();
    st.requests.push(Request {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        content_type: hdr(header::CONTENT_TYPE),
        authorization: hdr(header::AUTHORIZATION),
        body: serde_json::from_slice(&body).ok(),
    });
    if st.down {
        return status_response(503, "ServiceUnavailable", "the fake API server is down");
    }
    if method == Method::GET {
        let Some(kind) = Kind::from_path(&path) else {
            return status_response(404, "NotFound", "no such path");
        };
        let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
        return if watch {
            start_watch(&mut st, kind, &query)
        } else {
            list(&st, kind)
        };
    }
    if method == Method::PATCH {
        if let Some(name) = path
            .strip_prefix("/api/v1/nodes/")
            .and_then(|r| r.strip_suffix("/status"))
        {
            let ct = hdr(header::CONTENT_TYPE).unwrap_or_default();
            let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                return status_response(400, "BadRequest", "patch is not JSON");
            };
            return patch_node_status(&mut st, name, &ct, &patch);
        }
    }
    status_response(405, "MethodNotAllowed", "not implemented by the fake")
}

fn list(st: &St, kind: Kind) -> Response {
    let items: Vec<Value> = st
        .kinds
        .get(&kind)
        .map(|o| o.objects.values().cloned().collect())
        .unwrap_or_default();
    axum::Json(json!({
        "apiVersion": kind.api_version(),
        "kind": format!("{}List", kind.kind()),
        "metadata": { "resourceVersion": st.rv.to_string() },
        "items": items,
    }))
    .into_response()
}

fn start_watch(st: &mut St, kind: Kind, q: &BTreeMap<String, String>) -> Response {
    let (tx, rx) = mpsc::unbounded_channel();
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let from: Option<u64> = q
        .get("resourceVersion")
        .filter(|s| !s.is_empty() && *s != "0")
        .and_then(|s| s.parse().ok());
    match from {
        Some(rv) if rv < st.compacted => {
            let gone = status_body(
                410,
                "Expired",
                &format!("too old resource version: {rv} ({})", st.compacted),
            );
            let _ = tx.send(Msg::Data(event_line("ERROR", &gone)));
            drop(tx);
        }
        Some(rv) => {
            let objs = st.kinds.entry(kind).or_default();
            for (v, ty, obj) in &objs.history {
                if *v > rv {
                    let _ = tx.send(Msg::Data(event_line(ty, obj)));
                }
            }
            st.watches.push(WatchConn {
                kind,
                bookmarks,
                tx,
            });
        }
        None => {
            let objs = st.kinds.entry(kind).or_default();
            for obj in objs.objects.values() {
                let _ = tx.send(Msg::Data(event_line("ADDED", obj)));
            }
            st.watches.push(WatchConn {
                kind,
                bookmarks,
                tx,
            });
        }
    }
    let stream = futures::stream::unfold((rx, false), |(mut rx, aborted)| async move {
        if aborted {
            return None;
        }
        match rx.recv().await {
            Some(Msg::Data(b)) => Some((Ok::<Bytes, std::io::Error>(b), (rx, false))),
            Some(Msg::Abort) => Some((
                Err(std::io::Error::other("connection dropped on purpose")),
                (rx, true),
            )),
            None => None,
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn patch_node_status(st: &mut St, name: &str, ct: &str, patch: &Value) -> Response {
    let strategic = ct.starts_with("application/strategic-merge-patch+json");
    let merge = ct.starts_with("application/merge-patch+json");
    if !strategic && !merge {
        return status_response(
            415,
            "UnsupportedMediaType",
            "the fake takes strategic or merge patches",
        );
    }
    let Some(node) = st
        .kinds
        .entry(Kind::Nodes)
        .or_default()
        .objects
        .get(name)
        .cloned()
    else {
        return status_response(404, "NotFound", &format!("nodes \"{name}\" not found"));
    };
    let mut node = node;
    if let Some(ps) = patch.get("status").and_then(Value::as_object) {
        let status = node
            .as_object_mut()
            .unwrap()
            .entry("status")
            .or_insert_with(|| json!({}));
        for (k, v) in ps {
            if k == "conditions" && strategic {
                let list = status
                    .as_object_mut()
                    .unwrap()
                    .entry("conditions")
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .unwrap();
                for c in v.as_array().cloned().unwrap_or_default() {
                    match list.iter_mut().find(|e| e["type"] == c["type"]) {
                        Some(e) => {
                            for (ck, cv) in c.as_object().unwrap() {
                                e[ck] = cv.clone();
                            }
                        }
                        None => list.push(c),
                    }
                }
            } else {
                status[k] = v.clone();
            }
        }
    }
    st.rv += 1;
    node["metadata"]["resourceVersion"] = st.rv.to_string().into();
    let rv = st.rv;
    let objs = st.kinds.get_mut(&Kind::Nodes).unwrap();
    objs.objects.insert(name.to_string(), node.clone());
    objs.history.push((rv, "MODIFIED", node.clone()));
    broadcast(st, Kind::Nodes, event_line("MODIFIED", &node));
    axum::Json(node).into_response()
}

/// Polls `f` every 20 ms until it is true or `secs` pass; panics with `what` on timeout.
pub async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Builders for test objects.
pub mod obj {
    use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    /// A Node with `(type, address)` pairs and an optional pod CIDR, and a Ready condition.
    pub fn node(name: &str, addrs: &[(&str, &str)], pod_cidr: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: pod_cidr.map(str::to_string),
                pod_cidrs: pod_cidr.map(|c| vec![c.to_string()]),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(
                    addrs
                        .iter()
                        .map(|(t, a)| NodeAddress {
                            type_: t.to_string(),
                            address: a.to_string(),
                        })
                        .collect(),
                ),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    reason: Some("KubeletReady".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    pub fn internal(name: &str, ip: &str) -> Node {
        node(name, &[("InternalIP", ip)], None)
    }
}

/// Options for tests: this node's name, fast retries, no policy watches unless asked.
pub fn options(node: &str) -> weft::kube::KubeOptions {
    let mut o = weft::kube::KubeOptions::new(node);
    o.watch_policy = false;
    o.backoff = weft::kube::Backoff {
        min: Duration::from_millis(50),
        max: Duration::from_millis(200),
    };
    o
}

/// Waits until the peer view satisfies `pred`; returns it.
pub async fn wait_view(
    rx: &tokio::sync::watch::Receiver<weft::kube::PeerView>,
    what: &str,
    pred: impl Fn(&weft::kube::PeerView) -> bool,
) -> weft::kube::PeerView {
    eventually(10, what, || pred(&rx.borrow())).await;
    rx.borrow().clone()
}
