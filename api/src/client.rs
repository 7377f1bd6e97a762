//! A small HTTP/1 client for the router's API, over TCP or a unix socket: one request per
//! connection, bounded in time, with errors that say where the router was looked for.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header;
use hyper_util::rt::TokioIo;

/// Default time limit of one request, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Default status API address (the router of the current network namespace).
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:6784";

/// Where the API is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `host:port`, as given (a name or an IP; IPv6 in brackets).
    Tcp(String),
    Unix(PathBuf),
}

impl Endpoint {
    /// Parses `http://HOST[:PORT]`, `HOST:PORT`, `unix:/path`, `unix:///path` or `/path`.
    /// The port defaults to 6784, the status API port.
    pub fn parse(addr: &str) -> anyhow::Result<Endpoint> {
        let addr = addr.trim();
        if let Some(rest) = addr.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                bail!("invalid address {addr:?}: expected unix:/path/to/socket");
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if addr.starts_with('/') {
            return Ok(Endpoint::Unix(PathBuf::from(addr)));
        }
        if addr.starts_with("https://") {
            bail!("invalid address {addr:?}: the weft status API speaks plain http (it is local only)");
        }
        let rest = addr.strip_prefix("http://").unwrap_or(addr);
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() || rest.contains("://") {
            bail!(
                "invalid address {addr:?}: expected http://HOST:PORT, HOST:PORT, unix:/path or /path"
            );
        }
        let has_port = match authority.rfind(']') {
            Some(close) => authority[close..].contains(':'),
            None => authority.contains(':'),
        };
        Ok(Endpoint::Tcp(if has_port {
            authority.to_string()
        } else {
            format!("{authority}:6784")
        }))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "http://{a}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// `GET path` from the status API at `addr`; returns the HTTP status code and the body.
/// Fails (with advice) when the router cannot be reached within 5 s.
pub async fn get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    get_timeout(addr, path, DEFAULT_TIMEOUT).await
}

/// [`get`] with another time limit.
pub async fn get_timeout(
    addr: &str,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    call(addr, hyper::Method::GET, path, None, timeout).await
}

/// One request to the API at `addr`, connection included, within `timeout`.
async fn call(
    addr: &str,
    method: hyper::Method,
    path: &str,
    json: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let ep = Endpoint::parse(addr)?;
    let body = json.map(|j| Bytes::from(j.to_string()));
    match tokio::time::timeout(timeout, request(&ep, method, path, body)).await {
        Ok(r) => r,
        Err(_) => Err(unreachable_error(
            &ep,
            &format!("no answer within {:.1} s", timeout.as_secs_f64()),
        )),
    }
}

fn unreachable_error(ep: &Endpoint, why: &str) -> anyhow::Error {
    match ep {
        Endpoint::Tcp(_) => anyhow!(
            "cannot reach the weft router at {ep} ({why}): is `weft router` running in this \
             network namespace?"
        ),
        Endpoint::Unix(p) => anyhow!(
            "cannot reach the weft router at {ep} ({why}): is `weft router` running with \
             --api-socket {}?",
            p.display()
        ),
    }
}

fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        NotFound => "no such socket".into(),
        PermissionDenied => "permission denied".into(),
        TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

/// Connects to `ep` and runs one exchange; `body` is sent as JSON.
async fn request(
    ep: &Endpoint,
    method: hyper::Method,
    path: &str,
    body: Option<Bytes>,
) -> anyhow::Result<(u16, String)> {
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    match ep {
        Endpoint::Tcp(hostport) => {
            let stream = tokio::net::TcpStream::connect(hostport.as_str())
                .await
                .map_err(|e| unreachable_error(ep, &io_reason(&e)))?;
            exchange(TokioIo::new(stream), ep, hostport, method, &path, body).await
        }
        Endpoint::Unix(p) => {
            let stream = tokio::net::UnixStream::connect(p)
                .await
                .map_err(|e| unreachable_error(ep, &io_reason(&e)))?;
            exchange(TokioIo::new(stream), ep, "localhost", method, &path, body).await
        }
    }
}

async fn exchange<T>(
    io: T,
    ep: &Endpoint,
    host: &str,
    method: hyper::Method,
    path: &str,
    body: Option<Bytes>,
) -> anyhow::Result<(u16, String)>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io)
        .await
        .with_context(|| format!("HTTP handshake with the weft router at {ep}"))?;
    let driver = tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method.clone())
        .uri(path)
        .header(header::HOST, host)
        .header(
            header::USER_AGENT,
            concat!("weft/", env!("CARGO_PKG_VERSION")),
        );
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(body.unwrap_or_default()))
        .with_context(|| format!("invalid request path {path:?}"))?;
    let resp = sender
        .send_request(req)
        .await
        .with_context(|| format!("request {method} {path} to the weft router at {ep}"))?;
    let code = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading the answer to {method} {path} from {ep}"))?
        .to_bytes();
    driver.abort();
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

/// `POST path` with the JSON text `json` to the API at `addr` (as for [`get`]), within
/// `timeout`, connection included; returns the HTTP status code and the body. Fails (naming
/// the address) only when no HTTP answer came: refused, no socket, timeout, broken exchange.
pub async fn post_json(
    addr: &str,
    path: &str,
    json: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    call(addr, hyper::Method::POST, path, Some(json), timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_endpoints() {
        let tcp = |s: &str| Endpoint::Tcp(s.to_string());
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:6784").unwrap(),
            tcp("127.0.0.1:6784")
        );
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:6784/").unwrap(),
            tcp("127.0.0.1:6784")
        );
        assert_eq!(Endpoint::parse("127.0.0.1:9").unwrap(), tcp("127.0.0.1:9"));
        assert_eq!(Endpoint::parse("localhost").unwrap(), tcp("localhost:6784"));
        assert_eq!(Endpoint::parse("http://[::1]").unwrap(), tcp("[::1]:6784"));
        assert_eq!(Endpoint::parse("[::1]:80").unwrap(), tcp("[::1]:80"));
        let unix = |s: &str| Endpoint::Unix(PathBuf::from(s));
        assert_eq!(
            Endpoint::parse("unix:/run/weft/weft.sock").unwrap(),
            unix("/run/weft/weft.sock")
        );
        assert_eq!(
            Endpoint::parse("unix:///run/w.sock").unwrap(),
            unix("/run/w.sock")
        );
        assert_eq!(Endpoint::parse("/run/w.sock").unwrap(), unix("/run/w.sock"));
        assert!(Endpoint::parse("https://x:1").is_err());
        assert!(Endpoint::parse("unix:").is_err());
        assert!(Endpoint::parse("ftp://x").is_err());
    }
}
