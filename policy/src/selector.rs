//! Label selectors (`metav1.LabelSelector`): `matchLabels` and `matchExpressions` ANDed
//! together. An empty selector matches everything. What an *absent* selector means depends on
//! where it sits (a NetworkPolicy peer without `podSelector` means "all pods of the selected
//! namespaces"); the caller decides that, see [`crate::model::Peer`].

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Requirement {
    pub key: String,
    pub op: Operator,
}

/// The operators of `matchExpressions`, with their values.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Operator {
    /// The label is present and its value is one of these (never empty).
    In(BTreeSet<String>),
    /// The label is absent, or present with a value not among these (never empty).
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

/// A validated label selector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Selector {
    pub match_labels: BTreeMap<String, String>,
    pub expressions: Vec<Requirement>,
}

impl Selector {
    /// The empty selector: matches every set of labels.
    pub fn everything() -> Self {
        Self::default()
    }

    /// A selector of `matchLabels` only.
    pub fn labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            match_labels: pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            expressions: Vec::new(),
        }
    }

    /// True for the empty selector.
    pub fn is_everything(&self) -> bool {
        self.match_labels.is_empty() && self.expressions.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.key);
        match &self.op {
            Operator::In(vals) => v.is_some_and(|v| vals.contains(v)),
            Operator::NotIn(vals) => v.is_none_or(|v| !vals.contains(v)),
            Operator::Exists => v.is_some(),
            Operator::DoesNotExist => v.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, op: Operator) -> Selector {
        Selector {
            match_labels: BTreeMap::new(),
            expressions: vec![Requirement {
                key: key.into(),
                op,
            }],
        }
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn empty_matches_everything() {
        assert!(Selector::everything().matches(&l(&[])));
        assert!(Selector::everything().matches(&l(&[("a", "b")])));
    }

    #[test]
    fn match_labels_need_every_pair() {
        let s = Selector::labels([("a", "1"), ("b", "2")]);
        assert!(s.matches(&l(&[("a", "1"), ("b", "2"), ("c", "3")])));
        assert!(!s.matches(&l(&[("a", "1")])));
        assert!(!s.matches(&l(&[("a", "1"), ("b", "3")])));
    }

    #[test]
    fn operators() {
        let inn = req("k", Operator::In(set(&["x", "y"])));
        assert!(inn.matches(&l(&[("k", "x")])));
        assert!(!inn.matches(&l(&[("k", "z")])));
        assert!(!inn.matches(&l(&[])));
        let notin = req("k", Operator::NotIn(set(&["x"])));
        assert!(notin.matches(&l(&[])), "NotIn matches an absent key");
        assert!(notin.matches(&l(&[("k", "y")])));
        assert!(!notin.matches(&l(&[("k", "x")])));
        let ex = req("k", Operator::Exists);
        assert!(ex.matches(&l(&[("k", "")])));
        assert!(!ex.matches(&l(&[("j", "x")])));
        let dne = req("k", Operator::DoesNotExist);
        assert!(dne.matches(&l(&[("j", "x")])));
        assert!(!dne.matches(&l(&[("k", "x")])));
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let mut s = Selector::labels([("app", "web")]);
        s.expressions.push(Requirement {
            key: "tier".into(),
            op: Operator::DoesNotExist,
        });
        assert!(s.matches(&l(&[("app", "web")])));
        assert!(!s.matches(&l(&[("app", "web"), ("tier", "x")])));
        assert!(!s.matches(&l(&[("tier", "x")])));
    }
}
