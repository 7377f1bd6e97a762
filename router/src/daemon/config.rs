//! `weft router`'s flags, checked and resolved into a [`RouterConfig`].

use super::*;

/// Everything `weft router` needs, resolved from flags and environment.
pub struct RouterConfig {
    pub identity: Identity,
    pub psk: Option<[u8; 32]>,
    pub listen: SocketAddr,
    pub status_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub api_socket: PathBuf,
    pub peers: Vec<PeerSpec>,
    pub mesh: weft_gossip::Config,
    pub mtu: u32,
    pub ipalloc_range: ipnet::Ipv4Net,
    pub state_dir: PathBuf,
    /// `--manifests DIR`: the policy enforcer's source.
    pub manifests: Option<PathBuf>,
    pub bridge: String,
    /// UDP port of the sleeve (the same on every node).
    pub sleeve_port: u16,
    /// Whether `--mtu` was given (then pods get exactly it).
    pub mtu_fixed: bool,
    /// `--no-fastpath`.
    pub no_fastpath: bool,
    /// UDP port of the VXLAN fastpath.
    pub vxlan_port: u16,
    /// `--kube`: this node's Node name.
    pub kube: Option<String>,
}

impl RouterConfig {
    /// Validates flags; reads the password (never logged). See [`crate::startup`] for the
    /// router's own start, which waits for a password file instead of failing on it.
    pub fn from_args(a: &RouterArgs) -> anyhow::Result<RouterConfig> {
        let mut cfg = Self::from_args_except_password(a)?;
        let password = transport::read_password(
            a.password_file.as_deref(),
            std::env::var(transport::PASSWORD_ENV).ok(),
        )
        .context("reading the network password")?;
        cfg.set_password(password.as_deref().map(Vec::as_slice), &a.cluster);
        Ok(cfg)
    }

    /// Sets the Noise PSK from the network password (`None`: no password, no encryption).
    pub fn set_password(&mut self, password: Option<&[u8]>, cluster: &str) {
        self.psk = password.map(|p| transport::derive_psk(p, cluster));
    }

    /// Validates every flag except the password; the result has no PSK yet.
    pub fn from_args_except_password(a: &RouterArgs) -> anyhow::Result<RouterConfig> {
        // --kube: the Node name gives the peer name and nickname unless flags say otherwise
        let kube = match (a.kube, &a.manifests) {
            (true, Some(_)) => bail!("--kube and --manifests both give NetworkPolicies: use one (--kube takes them from the API)"),
            (true, None) => Some(crate::kube::node_name_from_env()?),
            (false, _) => None,
        };
        let kube_name = kube
            .as_deref()
            .map(|n| crate::kube::peer_name_for_node(n).to_string());
        if let Some(d) = &a.manifests {
            if !d.is_dir() {
                bail!("--manifests {}: not a directory", d.display());
            }
        }
        let identity = identity::identity(
            a.name.as_deref().or(kube_name.as_deref()),
            a.nickname.as_deref().or(kube.as_deref()),
        )?;
        let metrics_addr = match a.metrics_addr.as_str() {
            "off" | "" => None,
            s => Some(
                s.parse()
                    .with_context(|| format!("--metrics-addr {s:?} is not HOST:PORT or \"off\""))?,
            ),
        };
        let range = parse_range(&a.ipalloc_range)?;
        let mtu = a.mtu.unwrap_or(DEFAULT_MTU);
        if !(576..=65_000).contains(&mtu) {
            bail!("--mtu {mtu} is out of range (576..=65000)");
        }
        if a.conn_limit == 0 {
            bail!("--conn-limit must be at least 1");
        }
        let peers = a
            .peers
            .iter()
            .map(|p| PeerSpec::parse(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(RouterConfig {
            identity,
            psk: None,
            listen: a.listen,
            status_addr: a.status_addr,
            metrics_addr,
            api_socket: a.api_socket.clone(),
            peers,
            mesh: weft_gossip::Config {
                conn_limit: a.conn_limit,
                discovery: !a.no_discovery,
                ipam: Some(IpamConfig::new(range)),
                ..Default::default()
            },
            mtu,
            ipalloc_range: range,
            state_dir: a.state_dir.clone(),
            manifests: a.manifests.clone(),
            bridge: weft_fastpath::node::DEFAULT_BRIDGE.to_string(),
            sleeve_port: a.sleeve_port,
            no_fastpath: a.no_fastpath,
            vxlan_port: a.vxlan_port,
            mtu_fixed: a.mtu.is_some(),
            kube,
        })
    }
}

/// `--ipalloc-range`: an IPv4 CIDR (host bits ignored) that IPAM can split into blocks.
pub fn parse_range(s: &str) -> anyhow::Result<ipnet::Ipv4Net> {
    let s = s.trim();
    let net: ipnet::Ipv4Net = s
        .parse()
        .with_context(|| format!("--ipalloc-range {s:?} is not an IPv4 CIDR like 10.32.0.0/12"))?;
    let net = net.trunc();
    IpamConfig::new(net)
        .space()
        .with_context(|| format!("--ipalloc-range {s:?}"))?;
    Ok(net)
}
