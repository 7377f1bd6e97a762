//! This node's identity and its peer addresses, from flags and the host.

use anyhow::{bail, Context};
use std::net::{IpAddr, SocketAddr};
use weft_gossip::{Identity, PeerName, PeerUid};

/// Default control port (UDP, QUIC).
pub const CONTROL_PORT: u16 = 6783;

/// The stable name: `--name` if given, else derived from the machine id, else the hostname.
pub fn peer_name(flag: Option<&str>) -> anyhow::Result<PeerName> {
    if let Some(s) = flag {
        let name: PeerName = s.parse().with_context(|| {
            format!("--name {s:?}: expected six hex octets like 02:00:00:00:00:07")
        })?;
        let first = (name.as_u64() >> 40) as u8;
        if first & 1 == 1 || name.as_u64() == 0 {
            bail!(
                "--name {s}: the peer name is also the node bridge's MAC address, so it must be a                  unicast address (an even first octet, e.g. 02:...) and not all zeros"
            );
        }
        return Ok(name);
    }
    for f in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        if let Ok(id) = std::fs::read_to_string(f) {
            if !id.trim().is_empty() {
                return Ok(PeerName::derive(&id));
            }
        }
    }
    let host = hostname();
    if host.is_empty() {
        bail!("cannot derive a peer name: no /etc/machine-id and no hostname; pass --name");
    }
    Ok(PeerName::derive(&host))
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Builds this run's identity with a fresh random uid.
pub fn identity(name: Option<&str>, nickname: Option<&str>) -> anyhow::Result<Identity> {
    let name = peer_name(name)?;
    let nickname = match nickname {
        Some(n) => n.to_string(),
        None => {
            let h = hostname();
            if h.is_empty() {
                name.to_string()
            } else {
                h
            }
        }
    };
    if nickname.len() > weft_gossip::peer::MAX_NICKNAME {
        bail!(
            "--nickname is longer than {} bytes",
            weft_gossip::peer::MAX_NICKNAME
        );
    }
    Ok(Identity {
        name,
        nickname,
        uid: PeerUid(os_random_u64()),
    })
}

/// 64 random bits from the OS entropy source (per-start uid, mesh RNG seed).
pub fn os_random_u64() -> u64 {
    use rand::{rngs::StdRng, RngCore, SeedableRng};
    StdRng::from_os_rng().next_u64()
}

/// A `--peer` value split into host and port, not yet resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub host: String,
    pub port: u16,
}

impl PeerSpec {
    /// Parses `HOST`, `HOST:PORT`, `IP`, `IPv4:PORT`, `[IPv6]:PORT` or a bare IPv6 address.
    pub fn parse(s: &str) -> anyhow::Result<PeerSpec> {
        let s = s.trim();
        if s.is_empty() {
            bail!("empty --peer");
        }
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(PeerSpec {
                host: sa.ip().to_string(),
                port: sa.port(),
            });
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(PeerSpec {
                host: ip.to_string(),
                port: CONTROL_PORT,
            });
        }
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => {
                let port = p
                    .parse::<u16>()
                    .with_context(|| format!("bad port in --peer {s:?}"))?;
                if h.is_empty() {
                    bail!("missing host in --peer {s:?}");
                }
                Ok(PeerSpec {
                    host: h.to_string(),
                    port,
                })
            }
            Some(_) => bail!("cannot parse --peer {s:?}: write IPv6 addresses as [ADDR]:PORT"),
            None => Ok(PeerSpec {
                host: s.to_string(),
                port: CONTROL_PORT,
            }),
        }
    }

    /// Resolves the host (DNS for names). Returns every address found.
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        Ok(tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_specs() {
        let p = |s| PeerSpec::parse(s).unwrap();
        assert_eq!(p("10.0.0.1").port, 6783);
        assert_eq!(p("10.0.0.1:7000").port, 7000);
        assert_eq!(p("node-a").host, "node-a");
        assert_eq!(p("node-a:7").port, 7);
        assert_eq!(p("[fd00::1]:9").host, "fd00::1");
        assert_eq!(p("fd00::1").port, 6783);
        assert!(PeerSpec::parse("").is_err());
        assert!(PeerSpec::parse("host:notaport").is_err());
        assert!(PeerSpec::parse(":80").is_err());
    }

    #[test]
    fn names() {
        let n = peer_name(Some("02:00:00:00:00:01")).unwrap();
        assert_eq!(n.to_string(), "02:00:00:00:00:01");
        assert!(peer_name(Some("nonsense")).is_err());
        // Not a unicast MAC (it becomes the bridge's address): refused with the reason.
        for bad in [
            "ff:ff:ff:ff:ff:ff",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
        ] {
            let e = format!("{:#}", peer_name(Some(bad)).unwrap_err());
            assert!(e.contains("unicast"), "{bad}: {e}");
        }
        let id = identity(Some("02:00:00:00:00:01"), Some("n1")).unwrap();
        let id2 = identity(Some("02:00:00:00:00:01"), Some("n1")).unwrap();
        assert_ne!(id.uid, id2.uid, "every start gets a new uid");
        assert!(identity(None, Some(&"x".repeat(65))).is_err());
    }
}
