//! Conversion from the Kubernetes API types (k8s-openapi, API v1.33) into the model, with the
//! API server's validation and defaulting: an invalid object is rejected with a reason (the
//! field path and what is wrong) and never disturbs the others.

use crate::model::{
    IpBlock, NamedPort, Namespace, NamespaceScope, Peer, Peers, Policy, PolicyTypes, PortRule,
    PortSpec, Ports, Protocol, Rule,
};
use crate::selector::{Labels, Operator, Requirement, Selector};
use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The label the API server puts on every namespace (selectors commonly use it).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Why an object was rejected. `field` is the path inside the object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
pub enum Invalid {
    #[error("metadata.name is missing")]
    MissingName,
    #[error("{field}: {value:?} is not a valid name (RFC 1123 label)")]
    BadName { field: String, value: String },
    #[error("{field}: {value:?} is not a valid CIDR: {reason}")]
    BadCidr {
        field: String,
        value: String,
        reason: String,
    },
    #[error("{field}: {except} is not strictly inside {cidr}")]
    ExceptOutside {
        field: String,
        except: String,
        cidr: String,
    },
    #[error("{field}: unknown protocol {value:?} (TCP, UDP or SCTP)")]
    UnknownProtocol { field: String, value: String },
    #[error("{field}: {value} is not a port number (1-65535)")]
    PortOutOfRange { field: String, value: i64 },
    #[error("{field}: {value:?} is not a valid port name (IANA service name)")]
    BadPortName { field: String, value: String },
    #[error("{field}: endPort needs a port")]
    EndPortWithoutPort { field: String },
    #[error("{field}: endPort cannot be used with the named port {port:?}")]
    EndPortWithNamedPort { field: String, port: String },
    #[error("{field}: endPort {end} is below port {port}")]
    EndPortBelowPort { field: String, port: u16, end: i64 },
    #[error("{field}: a peer needs podSelector, namespaceSelector or ipBlock")]
    EmptyPeer { field: String },
    #[error("{field}: ipBlock cannot be combined with podSelector or namespaceSelector")]
    MixedPeer { field: String },
    #[error("{field}: unknown operator {value:?} (In, NotIn, Exists, DoesNotExist)")]
    BadOperator { field: String, value: String },
    #[error("{field}: operator {op} {reason}")]
    SelectorValues {
        field: String,
        op: String,
        reason: &'static str,
    },
    #[error("{field}: empty label key")]
    EmptyLabelKey { field: String },
    #[error("{field}: unknown policy type {value:?} (Ingress or Egress)")]
    BadPolicyType { field: String, value: String },
    #[error("{field}: {value:?} is not an IP address")]
    BadPodIp { field: String, value: String },
}

/// RFC 1123 label: what namespace names are.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// IANA service name: what port names are (1-15 chars of a-z, 0-9, '-', at least one
/// letter, no '-' at either end, no "--").
pub fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn name_of(meta: &ObjectMeta) -> Result<String, Invalid> {
    match &meta.name {
        Some(n) if !n.is_empty() => Ok(n.clone()),
        _ => Err(Invalid::MissingName),
    }
}

/// The namespace of a namespaced object; absent means `default` (what kubectl does).
pub fn namespace_of(meta: &ObjectMeta) -> Result<String, Invalid> {
    let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
    if !is_dns_label(&ns) {
        return Err(Invalid::BadName {
            field: "metadata.namespace".into(),
            value: ns,
        });
    }
    Ok(ns)
}

fn labels_of(meta: &ObjectMeta) -> Labels {
    meta.labels.clone().unwrap_or_default()
}

/// A Namespace. Its `kubernetes.io/metadata.name` label is set to its name, as the API
/// server does for every namespace (it also overwrites a different value): selectors can rely
/// on it, and a manifest cannot make one namespace look like another.
pub fn namespace(ns: &core::Namespace) -> Result<Namespace, Invalid> {
    let name = name_of(&ns.metadata)?;
    if !is_dns_label(&name) {
        return Err(Invalid::BadName {
            field: "metadata.name".into(),
            value: name,
        });
    }
    let mut labels = labels_of(&ns.metadata);
    labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
    Ok(Namespace { name, labels })
}

/// A Pod. `Ok(None)` for pods policies do not apply to: host-network pods (their address is
/// the node's) and pods that have finished (`Succeeded`/`Failed`: their address is released
/// and may already belong to another pod). A pod being deleted (`deletionTimestamp` set) is
/// still running and still counts until it is gone. Addresses come from `status.podIPs` (or
/// `status.podIP`); callers that know better (the CNI records) may replace them.
///
/// Named ports are those of the containers and of the sidecars (init containers with
/// `restartPolicy: Always`, which keep running), in that order; if two containers use one
/// name, the first wins (as Kubernetes resolves a Service's named `targetPort`).
pub fn pod(p: &core::Pod) -> Result<Option<crate::model::Pod>, Invalid> {
    let name = name_of(&p.metadata)?;
    let namespace = namespace_of(&p.metadata)?;
    let spec = p.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return Ok(None);
    }
    let status = p.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return Ok(None);
    }
    let mut ip_strings: Vec<&str> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|v| v.iter().map(|i| i.ip.as_str()).collect())
        .unwrap_or_default();
    if ip_strings.is_empty() {
        if let Some(ip) = status.and_then(|s| s.pod_ip.as_deref()) {
            ip_strings.push(ip);
        }
    }
    let mut ips = Vec::new();
    for (i, s) in ip_strings.into_iter().enumerate() {
        let ip: IpAddr = s.parse().map_err(|_| Invalid::BadPodIp {
            field: format!("status.podIPs[{i}]"),
            value: s.to_string(),
        })?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    let mut named_ports = BTreeMap::new();
    let containers = spec
        .map(|s| {
            s.containers
                .iter()
                .enumerate()
                .map(|(i, c)| ("containers", i, c))
        })
        .into_iter()
        .flatten();
    let sidecars = spec
        .and_then(|s| s.init_containers.as_ref())
        .map(|v| {
            v.iter()
                .enumerate()
                .filter(|(_, c)| c.restart_policy.as_deref() == Some("Always"))
                .map(|(i, c)| ("initContainers", i, c))
        })
        .into_iter()
        .flatten();
    for (list, ci, c) in containers.chain(sidecars) {
        for (pi, cp) in c.ports.as_deref().unwrap_or(&[]).iter().enumerate() {
            let field = format!("spec.{list}[{ci}].ports[{pi}]");
            let Some(pname) = &cp.name else { continue };
            if !is_port_name(pname) {
                return Err(Invalid::BadPortName {
                    field: format!("{field}.name"),
                    value: pname.clone(),
                });
            }
            let protocol = protocol(cp.protocol.as_deref(), &format!("{field}.protocol"))?;
            let port = port_number(
                i64::from(cp.container_port),
                &format!("{field}.containerPort"),
            )?;
            named_ports
                .entry(pname.clone())
                .or_insert(NamedPort { protocol, port });
        }
    }
    Ok(Some(crate::model::Pod {
        namespace,
        name,
        labels: labels_of(&p.metadata),
        ips,
        named_ports,
    }))
}

fn protocol(p: Option<&str>, field: &str) -> Result<Protocol, Invalid> {
    match p {
        None => Ok(Protocol::Tcp),
        Some(s) => Protocol::parse(s).ok_or_else(|| Invalid::UnknownProtocol {
            field: field.into(),
            value: s.into(),
        }),
    }
}

fn port_number(v: i64, field: &str) -> Result<u16, Invalid> {
    if (1..=65535).contains(&v) {
        Ok(v as u16)
    } else {
        Err(Invalid::PortOutOfRange {
            field: field.into(),
            value: v,
        })
    }
}

/// A label selector (present; absence is the caller's business).
pub fn selector(s: &LabelSelector, field: &str) -> Result<Selector, Invalid> {
    let match_labels = s.match_labels.clone().unwrap_or_default();
    if match_labels.keys().any(|k| k.is_empty()) {
        return Err(Invalid::EmptyLabelKey {
            field: format!("{field}.matchLabels"),
        });
    }
    let mut expressions = Vec::new();
    for (i, r) in s
        .match_expressions
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        let f = format!("{field}.matchExpressions[{i}]");
        if r.key.is_empty() {
            return Err(Invalid::EmptyLabelKey { field: f });
        }
        let values: Vec<String> = r.values.clone().unwrap_or_default();
        let need = |has: bool| -> Result<(), Invalid> {
            match (has, values.is_empty()) {
                (true, true) => Err(Invalid::SelectorValues {
                    field: f.clone(),
                    op: r.operator.clone(),
                    reason: "needs at least one value",
                }),
                (false, false) => Err(Invalid::SelectorValues {
                    field: f.clone(),
                    op: r.operator.clone(),
                    reason: "takes no values",
                }),
                _ => Ok(()),
            }
        };
        let op = match r.operator.as_str() {
            "In" => {
                need(true)?;
                Operator::In(values.iter().cloned().collect())
            }
            "NotIn" => {
                need(true)?;
                Operator::NotIn(values.iter().cloned().collect())
            }
            "Exists" => {
                need(false)?;
                Operator::Exists
            }
            "DoesNotExist" => {
                need(false)?;
                Operator::DoesNotExist
            }
            other => {
                return Err(Invalid::BadOperator {
                    field: f,
                    value: other.into(),
                })
            }
        };
        expressions.push(Requirement {
            key: r.key.clone(),
            op,
        });
    }
    Ok(Selector {
        match_labels,
        expressions,
    })
}

fn cidr(s: &str, field: &str) -> Result<IpNet, Invalid> {
    // Like the API server's legacy parser: host bits are allowed and dropped.
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|e| Invalid::BadCidr {
            field: field.into(),
            value: s.into(),
            reason: e.to_string(),
        })
}

fn ip_block(b: &net::IPBlock, field: &str) -> Result<IpBlock, Invalid> {
    let c = cidr(&b.cidr, &format!("{field}.cidr"))?;
    let mut except = Vec::new();
    for (i, e) in b.except.as_deref().unwrap_or(&[]).iter().enumerate() {
        let f = format!("{field}.except[{i}]");
        let x = cidr(e, &f)?;
        let inside = match (&c, &x) {
            (IpNet::V4(c), IpNet::V4(x)) => {
                x.prefix_len() > c.prefix_len() && c.contains(&x.network())
            }
            (IpNet::V6(c), IpNet::V6(x)) => {
                x.prefix_len() > c.prefix_len() && c.contains(&x.network())
            }
            _ => false,
        };
        if !inside {
            return Err(Invalid::ExceptOutside {
                field: f,
                except: e.clone(),
                cidr: b.cidr.clone(),
            });
        }
        except.push(x);
    }
    Ok(IpBlock { cidr: c, except })
}

fn peer(p: &net::NetworkPolicyPeer, field: &str) -> Result<Peer, Invalid> {
    let has_sel = p.pod_selector.is_some() || p.namespace_selector.is_some();
    match (&p.ip_block, has_sel) {
        (Some(_), true) => Err(Invalid::MixedPeer {
            field: field.into(),
        }),
        (Some(b), false) => Ok(Peer::Block(ip_block(b, &format!("{field}.ipBlock"))?)),
        (None, false) => Err(Invalid::EmptyPeer {
            field: field.into(),
        }),
        (None, true) => {
            let pods = match &p.pod_selector {
                Some(s) => selector(s, &format!("{field}.podSelector"))?,
                None => Selector::everything(),
            };
            let namespaces = match &p.namespace_selector {
                Some(s) => {
                    NamespaceScope::Matching(selector(s, &format!("{field}.namespaceSelector"))?)
                }
                None => NamespaceScope::Same,
            };
            Ok(Peer::Pods { namespaces, pods })
        }
    }
}

fn port_rule(p: &net::NetworkPolicyPort, field: &str) -> Result<PortRule, Invalid> {
    let protocol = protocol(p.protocol.as_deref(), &format!("{field}.protocol"))?;
    let port = match (&p.port, p.end_port) {
        (None, None) => PortSpec::All,
        (None, Some(_)) => {
            return Err(Invalid::EndPortWithoutPort {
                field: field.into(),
            })
        }
        (Some(IntOrString::String(name)), end) => {
            if end.is_some() {
                return Err(Invalid::EndPortWithNamedPort {
                    field: field.into(),
                    port: name.clone(),
                });
            }
            if !is_port_name(name) {
                return Err(Invalid::BadPortName {
                    field: format!("{field}.port"),
                    value: name.clone(),
                });
            }
            PortSpec::Named(name.clone())
        }
        (Some(IntOrString::Int(n)), end) => {
            let first = port_number(i64::from(*n), &format!("{field}.port"))?;
            let last = match end {
                None => first,
                Some(e) => {
                    let e64 = i64::from(e);
                    let last = port_number(e64, &format!("{field}.endPort"))?;
                    if last < first {
                        return Err(Invalid::EndPortBelowPort {
                            field: format!("{field}.endPort"),
                            port: first,
                            end: e64,
                        });
                    }
                    last
                }
            };
            PortSpec::Range(first, last)
        }
    };
    Ok(PortRule { protocol, port })
}

fn rule(
    peers: Option<&Vec<net::NetworkPolicyPeer>>,
    ports: Option<&Vec<net::NetworkPolicyPort>>,
    field: &str,
    peers_name: &str,
) -> Result<Rule, Invalid> {
    let peers = match peers {
        Some(v) if !v.is_empty() => Peers::List(
            v.iter()
                .enumerate()
                .map(|(i, p)| peer(p, &format!("{field}.{peers_name}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        _ => Peers::Any,
    };
    let ports = match ports {
        Some(v) if !v.is_empty() => Ports::List(
            v.iter()
                .enumerate()
                .map(|(i, p)| port_rule(p, &format!("{field}.ports[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        _ => Ports::Any,
    };
    Ok(Rule { peers, ports })
}

/// A NetworkPolicy, validated, with `policyTypes` defaulted as the API server does: when
/// absent or empty, `Ingress`, plus `Egress` if there is at least one egress rule.
pub fn network_policy(np: &net::NetworkPolicy) -> Result<Policy, Invalid> {
    let name = name_of(&np.metadata)?;
    let namespace = namespace_of(&np.metadata)?;
    let default_spec = net::NetworkPolicySpec::default();
    let spec = np.spec.as_ref().unwrap_or(&default_spec);
    let pod_selector = match &spec.pod_selector {
        Some(s) => selector(s, "spec.podSelector")?,
        None => Selector::everything(),
    };
    let ingress_rules = spec.ingress.as_deref().unwrap_or(&[]);
    let egress_rules = spec.egress.as_deref().unwrap_or(&[]);
    let types = match spec.policy_types.as_deref() {
        None | Some([]) => PolicyTypes {
            ingress: true,
            egress: !egress_rules.is_empty(),
        },
        Some(list) => {
            let mut t = PolicyTypes {
                ingress: false,
                egress: false,
            };
            for (i, s) in list.iter().enumerate() {
                match s.as_str() {
                    "Ingress" => t.ingress = true,
                    "Egress" => t.egress = true,
                    other => {
                        return Err(Invalid::BadPolicyType {
                            field: format!("spec.policyTypes[{i}]"),
                            value: other.into(),
                        })
                    }
                }
            }
            t
        }
    };
    let ingress = ingress_rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            rule(
                r.from.as_ref(),
                r.ports.as_ref(),
                &format!("spec.ingress[{i}]"),
                "from",
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let egress = egress_rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            rule(
                r.to.as_ref(),
                r.ports.as_ref(),
                &format!("spec.egress[{i}]"),
                "to",
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Policy {
        namespace,
        name,
        pod_selector,
        types,
        ingress,
        egress,
    })
}

#[cfg(test)]
#[path = "k8s_tests.rs"]
mod tests;
