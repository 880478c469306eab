//! Label and field selectors, in the string syntax of the `labelSelector` and
//! `fieldSelector` query parameters.

use serde_json::{Map, Value};

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Exists,
    NotExists,
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Gt(i64),
    Lt(i64),
}

/// A parsed `labelSelector`; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector {
    reqs: Vec<(String, Op)>,
}

/// Splits on commas outside parentheses (`a in (x,y),b` is two requirements).
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn is_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A lowercase RFC 1123 subdomain, as object names and key prefixes must be.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A label or annotation key: `[prefix/]name`.
pub fn is_qualified_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_name_part(name),
        None => is_name_part(key),
    }
}

pub fn is_label_value(v: &str) -> bool {
    v.is_empty() || is_name_part(v)
}

fn parse_values(rest: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised value list, found {rest:?}"))?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    match values.iter().find(|v| !is_label_value(v)) {
        Some(bad) => Err(format!("invalid label value: {bad:?}")),
        None => Ok(values),
    }
}

fn parse_requirement(req: &str) -> Result<(String, Op), String> {
    let req = req.trim();
    if let Some(key) = req.strip_prefix('!') {
        return Ok((key.trim().to_string(), Op::NotExists));
    }
    let key_end = req
        .find(|c: char| c.is_whitespace() || matches!(c, '=' | '!' | '<' | '>' | '('))
        .unwrap_or(req.len());
    let (key, rest) = (req[..key_end].to_string(), req[key_end..].trim_start());
    let op = if rest.is_empty() {
        Op::Exists
    } else if let Some(v) = rest.strip_prefix("==").or_else(|| rest.strip_prefix('=')) {
        Op::Eq(v.trim().to_string())
    } else if let Some(v) = rest.strip_prefix("!=") {
        Op::NotEq(v.trim().to_string())
    } else if let Some(v) = rest.strip_prefix('>') {
        Op::Gt(
            v.trim()
                .parse()
                .map_err(|_| format!("not an integer: {v:?}"))?,
        )
    } else if let Some(v) = rest.strip_prefix('<') {
        Op::Lt(
            v.trim()
                .parse()
                .map_err(|_| format!("not an integer: {v:?}"))?,
        )
    } else if let Some(v) = rest.strip_prefix("notin") {
        Op::NotIn(parse_values(v)?)
    } else if let Some(v) = rest.strip_prefix("in") {
        Op::In(parse_values(v)?)
    } else {
        return Err(format!("unable to parse requirement: {req:?}"));
    };
    if !is_qualified_key(&key) {
        return Err(format!("invalid label key {key:?}"));
    }
    if let Op::Eq(v) | Op::NotEq(v) = &op
        && !is_label_value(v)
    {
        return Err(format!("invalid label value: {v:?}"));
    }
    Ok((key, op))
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        let reqs = split_top(s)
            .into_iter()
            .map(parse_requirement)
            .collect::<Result<_, _>>()?;
        Ok(LabelSelector { reqs })
    }

    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|(key, op)| {
            let v = get(key);
            match op {
                Op::Exists => v.is_some(),
                Op::NotExists => v.is_none(),
                Op::Eq(want) => v == Some(want.as_str()),
                // As in Kubernetes: `!=` and `notin` also match objects without the label.
                Op::NotEq(want) => v != Some(want.as_str()),
                Op::In(set) => v.is_some_and(|v| set.iter().any(|s| s == v)),
                Op::NotIn(set) => v.is_none_or(|v| !set.iter().any(|s| s == v)),
                Op::Gt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|x| x > *n),
                Op::Lt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|x| x < *n),
            }
        })
    }

    pub fn matches_object(&self, obj: &Value) -> bool {
        self.matches(obj.pointer("/metadata/labels").and_then(Value::as_object))
    }
}

/// A parsed `fieldSelector`: `field=value`, `field==value`, `field!=value`, comma-separated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// `supported` lists the fields beyond `metadata.name` and `metadata.namespace` that the
    /// resource allows; others are refused as the server refuses them.
    pub fn parse(s: &str, supported: &[&str]) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for req in s.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = req.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = req.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = req.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{req}'; can't understand '{req}'"
                ));
            };
            let field = field.trim();
            if !matches!(field, "metadata.name" | "metadata.namespace")
                && !supported.contains(&field)
            {
                return Err(format!("field label not supported: {field}"));
            }
            reqs.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector { reqs })
    }

    pub fn matches_object(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(field, equal, want)| {
            let pointer = format!("/{}", field.replace('.', "/"));
            let have = match obj.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (have == *want) == *equal
        })
    }

    /// Whether the selector has no requirement.
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }
}

/// Extra selectable fields per resource, a subset of what the real server supports.
pub fn supported_fields(group: &str, plural: &str) -> &'static [&'static str] {
    match (group, plural) {
        ("", "secrets") => &["type"],
        ("", "nodes") => &["spec.unschedulable"],
        ("", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "reason",
            "type",
        ],
        ("events.k8s.io", "events") => &[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "reason",
            "type",
        ],
        _ => &[],
    }
}
