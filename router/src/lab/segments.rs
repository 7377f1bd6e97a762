//! The `--segments` specification of a lab: which nodes share which underlay segment.
//!
//! Syntax: segments separated by `|`; each segment a comma list of node numbers or
//! ranges (`1-3`), optionally prefixed `nat:` for a private network behind a NAT gateway
//! attached to the first segment (the "public" one). `1,2,3|3,4,5` puts node 3 on both
//! segments (the only link between 1,2 and 4,5); `1-3|nat:4,5` puts 4 and 5 behind NAT.
//!
//! [`SegmentSpec::from_str`] checks the syntax only; [`SegmentSpec::validate`] checks it
//! against the number of nodes (ranges, every node on a segment, NAT rules, one network).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use anyhow::bail;

/// One segment as written in the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentDef {
    /// Member nodes (1-based), in the order written.
    pub members: Vec<usize>,
    /// A private network behind a NAT gateway on the first segment.
    pub nat: bool,
}

/// A parsed `--segments` value (syntax checked, not yet validated against a node count).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSpec {
    pub segments: Vec<SegmentDef>,
}

impl fmt::Display for SegmentDef {
    /// The members as written, runs of three or more as ranges (`1-3,5`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nat {
            f.write_str("nat:")?;
        }
        let mut parts: Vec<String> = Vec::new();
        let mut k = 0;
        while k < self.members.len() {
            let start = self.members[k];
            let mut end = k;
            while end + 1 < self.members.len() && self.members[end + 1] == self.members[end] + 1 {
                end += 1;
            }
            if end - k >= 2 {
                parts.push(format!("{start}-{}", self.members[end]));
            } else {
                parts.extend(self.members[k..=end].iter().map(usize::to_string));
            }
            k = end + 1;
        }
        f.write_str(&parts.join(","))
    }
}

impl fmt::Display for SegmentSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.segments.iter().map(|s| s.to_string()).collect();
        f.write_str(&list.join("|"))
    }
}

fn parse_node(s: &str, seg: usize, text: &str) -> anyhow::Result<usize> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => bail!("segment {seg} ({text:?}): nodes are numbered from 1, not 0"),
        Err(_) => bail!("segment {seg} ({text:?}): {s:?} is not a node number or a range like 1-3"),
    }
}

impl FromStr for SegmentSpec {
    type Err = anyhow::Error;

    fn from_str(spec: &str) -> anyhow::Result<SegmentSpec> {
        if spec.trim().is_empty() {
            bail!("--segments is empty: give segments like '1,2,3|3,4,5' or '1-3|nat:4,5'");
        }
        let mut segments = Vec::new();
        for (k, raw) in spec.split('|').enumerate() {
            let seg = k + 1;
            let text = raw.trim();
            let (nat, list) = match text.strip_prefix("nat:") {
                Some(rest) => (true, rest.trim()),
                None => (false, text),
            };
            if list.is_empty() {
                bail!("segment {seg} of {spec:?} is empty: list its nodes, like 1,2 or 1-3");
            }
            let mut members: Vec<usize> = Vec::new();
            for item in list.split(',').map(str::trim) {
                if item.is_empty() {
                    bail!("segment {seg} ({text:?}): empty entry (stray comma?)");
                }
                let range = match item.split_once('-') {
                    Some((a, b)) => {
                        let (a, b) = (
                            parse_node(a.trim(), seg, text)?,
                            parse_node(b.trim(), seg, text)?,
                        );
                        if a > b {
                            bail!("segment {seg} ({text:?}): range {item} runs backwards");
                        }
                        a..=b
                    }
                    None => {
                        let n = parse_node(item, seg, text)?;
                        n..=n
                    }
                };
                for n in range {
                    if members.contains(&n) {
                        bail!("segment {seg} ({text:?}): node {n} is listed twice");
                    }
                    members.push(n);
                }
            }
            segments.push(SegmentDef { members, nat });
        }
        Ok(SegmentSpec { segments })
    }
}

impl SegmentSpec {
    /// Parses and validates `spec` for a lab of `nodes` nodes.
    pub fn parse(spec: &str, nodes: usize) -> anyhow::Result<SegmentSpec> {
        let s: SegmentSpec = spec.parse()?;
        s.validate(nodes)?;
        Ok(s)
    }

    /// One segment holding nodes `1..=nodes` (what a lab without `--segments` has).
    pub fn single(nodes: usize) -> SegmentSpec {
        SegmentSpec {
            segments: vec![SegmentDef {
                members: (1..=nodes).collect(),
                nat: false,
            }],
        }
    }

    /// The highest node number named.
    pub fn max_node(&self) -> usize {
        self.segments
            .iter()
            .flat_map(|s| s.members.iter().copied())
            .max()
            .unwrap_or(0)
    }

    /// Checks the spec against a lab of `nodes` nodes: every node exists and is on a
    /// segment, the first segment is not `nat:`, a NAT segment's nodes are on no other
    /// segment, and the segments form one network.
    pub fn validate(&self, nodes: usize) -> anyhow::Result<()> {
        if self.segments.is_empty() {
            bail!("--segments names no segment");
        }
        if self.segments.len() > super::topology::MAX_NODES {
            bail!(
                "at most {} segments, not {}",
                super::topology::MAX_NODES,
                self.segments.len()
            );
        }
        for (k, s) in self.segments.iter().enumerate() {
            if s.members.is_empty() {
                bail!("segment {} is empty", k + 1);
            }
            let mut seen = BTreeSet::new();
            for &n in &s.members {
                if n == 0 || n > nodes {
                    bail!(
                        "segment {} ({s}): node {n} does not exist; the lab has {nodes} node{} \
                         (1-{nodes}; set --nodes)",
                        k + 1,
                        if nodes == 1 { "" } else { "s" }
                    );
                }
                if !seen.insert(n) {
                    bail!("segment {} ({s}): node {n} is listed twice", k + 1);
                }
            }
        }
        if self.segments[0].nat {
            bail!(
                "the first segment ({}) cannot be a nat: segment: it is the public segment \
                 that NAT gateways attach to; put a plain segment first, like '1-3|nat:4,5'",
                self.segments[0]
            );
        }
        let on_none: Vec<String> = (1..=nodes)
            .filter(|n| !self.segments.iter().any(|s| s.members.contains(n)))
            .map(|n| n.to_string())
            .collect();
        if !on_none.is_empty() {
            bail!(
                "node{} {} {} on no segment: every node needs at least one",
                if on_none.len() == 1 { "" } else { "s" },
                on_none.join(", "),
                if on_none.len() == 1 { "is" } else { "are" }
            );
        }
        for (k, s) in self.segments.iter().enumerate().filter(|(_, s)| s.nat) {
            for &n in &s.members {
                if let Some((j, o)) = self
                    .segments
                    .iter()
                    .enumerate()
                    .find(|(j, o)| *j != k && o.members.contains(&n))
                {
                    bail!(
                        "node {n} is behind NAT in segment {} ({s}) and also on segment {} \
                         ({o}): the nodes of a nat: segment must be on no other segment",
                        k + 1,
                        j + 1
                    );
                }
            }
        }
        // One network: the segments are joined through shared nodes or NAT gateways.
        let mut joined: BTreeSet<usize> = BTreeSet::from([0]);
        loop {
            let before = joined.len();
            for (k, s) in self.segments.iter().enumerate() {
                if joined.contains(&k) {
                    continue;
                }
                let linked = s.nat
                    || joined.iter().any(|&j| {
                        self.segments[j]
                            .members
                            .iter()
                            .any(|n| s.members.contains(n))
                    });
                if linked {
                    joined.insert(k);
                }
            }
            if joined.len() == before {
                break;
            }
        }
        if let Some((k, s)) = self
            .segments
            .iter()
            .enumerate()
            .find(|(k, _)| !joined.contains(k))
        {
            bail!(
                "segment {} ({s}) is not joined to the first segment ({}): share a node with a \
                 joined segment (like '1,2,3|3,4,5') or put it behind NAT ('nat:{}')",
                k + 1,
                self.segments[0],
                s.members
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
        Ok(())
    }
}
