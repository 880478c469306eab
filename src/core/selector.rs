//! Kubernetes label selectors (matchLabels + matchExpressions), evaluated purely.

use std::collections::BTreeMap;
use std::fmt;

/// A label selector. An empty selector matches everything, as in Kubernetes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// Why a selector is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

impl LabelSelector {
    /// Builds a selector from its parts, checking operators and their value lists.
    pub fn new(
        match_labels: BTreeMap<String, String>,
        expressions: impl IntoIterator<Item = (String, String, Vec<String>)>,
    ) -> Result<LabelSelector, SelectorError> {
        let mut match_expressions = Vec::new();
        for (key, operator, values) in expressions {
            let operator = match operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(SelectorError(format!(
                        "matchExpressions key {key:?}: unknown operator {other:?} \
                         (expected In, NotIn, Exists or DoesNotExist)"
                    )));
                }
            };
            let needs_values = matches!(operator, Operator::In | Operator::NotIn);
            if needs_values && values.is_empty() {
                return Err(SelectorError(format!(
                    "matchExpressions key {key:?}: operator {operator} needs at least one value"
                )));
            }
            if !needs_values && !values.is_empty() {
                return Err(SelectorError(format!(
                    "matchExpressions key {key:?}: operator {operator} takes no values"
                )));
            }
            match_expressions.push(Requirement {
                key,
                operator,
                values,
            });
        }
        Ok(LabelSelector {
            match_labels,
            match_expressions,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operator::In => "In",
            Operator::NotIn => "NotIn",
            Operator::Exists => "Exists",
            Operator::DoesNotExist => "DoesNotExist",
        })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            parts.push(match r.operator {
                Operator::In => format!("{} in ({})", r.key, r.values.join(",")),
                Operator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        if parts.is_empty() {
            f.write_str("(everything)")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> (String, String, Vec<String>) {
        (
            key.to_string(),
            op.to_string(),
            values.iter().map(|v| v.to_string()).collect(),
        )
    }

    #[test]
    fn matching_table() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let cases = vec![
            (LabelSelector::default(), true),
            (
                LabelSelector::new(labels(&[("app", "web")]), vec![]).unwrap(),
                true,
            ),
            (
                LabelSelector::new(labels(&[("app", "db")]), vec![]).unwrap(),
                false,
            ),
            (
                LabelSelector::new(BTreeMap::new(), vec![expr("app", "In", &["web", "x"])])
                    .unwrap(),
                true,
            ),
            (
                LabelSelector::new(BTreeMap::new(), vec![expr("app", "NotIn", &["web"])]).unwrap(),
                false,
            ),
            (
                LabelSelector::new(BTreeMap::new(), vec![expr("zone", "NotIn", &["a"])]).unwrap(),
                true,
            ),
            (
                LabelSelector::new(BTreeMap::new(), vec![expr("tier", "Exists", &[])]).unwrap(),
                true,
            ),
            (
                LabelSelector::new(BTreeMap::new(), vec![expr("tier", "DoesNotExist", &[])])
                    .unwrap(),
                false,
            ),
        ];
        for (sel, expected) in cases {
            assert_eq!(sel.matches(&l), expected, "{sel}");
        }
    }

    #[test]
    fn invalid_selectors_are_refused() {
        assert!(LabelSelector::new(BTreeMap::new(), vec![expr("a", "Equals", &["x"])]).is_err());
        assert!(LabelSelector::new(BTreeMap::new(), vec![expr("a", "In", &[])]).is_err());
        assert!(LabelSelector::new(BTreeMap::new(), vec![expr("a", "Exists", &["x"])]).is_err());
    }
}
