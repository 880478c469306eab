//! Label selectors as the other tools write them: read, validated with vipam's own selector
//! code, and lists of them (which the tools OR) folded into one where that is exact.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use serde::Deserialize;
use serde_json::Value;

use super::Ctx;
use crate::api::LabelSelectorExt;
use crate::core::pool::{SERVICE_NAME_LABEL, SERVICE_NAMESPACE_LABEL};

/// Reads one selector; a malformed or invalid one is reported under `field` and gives None.
pub(super) fn read(ctx: &mut Ctx<'_>, field: &str, value: &Value) -> Option<LabelSelector> {
    let selector = match LabelSelector::deserialize(value) {
        Ok(s) => s,
        Err(e) => {
            ctx.lost(field, format!("not a label selector ({e}): not converted"));
            return None;
        }
    };
    if let Err(e) = selector.to_core() {
        ctx.lost(
            field,
            format!("invalid label selector ({e}): not converted"),
        );
        return None;
    }
    Some(selector)
}

/// True when the selector selects everything (`{}`).
pub(super) fn is_empty(selector: &LabelSelector) -> bool {
    selector
        .match_labels
        .as_ref()
        .is_none_or(BTreeMap::is_empty)
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty)
}

/// One selector equivalent to the OR of `selectors`, when there is one: a single selector, or
/// selectors that each only say `key` is one of some values (merged into `key In [...]`).
/// An empty list gives `Some(None)` (no restriction); no exact form gives None.
pub(super) fn any_of(selectors: &[LabelSelector]) -> Option<Option<LabelSelector>> {
    match selectors {
        [] => Some(None),
        [one] => Some((!is_empty(one)).then(|| one.clone())),
        many if many.iter().any(is_empty) => Some(None),
        many => {
            let mut key: Option<String> = None;
            let mut values: Vec<String> = Vec::new();
            for selector in many {
                let (k, vs) = single_key_in(selector)?;
                if key.as_ref().is_some_and(|known| known != &k) {
                    return None;
                }
                key = Some(k);
                for v in vs {
                    if !values.contains(&v) {
                        values.push(v);
                    }
                }
            }
            Some(Some(LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: key.expect("at least two selectors"),
                    operator: "In".to_string(),
                    values: Some(values),
                }]),
            }))
        }
    }
}

/// `{matchLabels: {k: v}}` or `{matchExpressions: [{key: k, operator: In, values: [...]}]}`.
fn single_key_in(selector: &LabelSelector) -> Option<(String, Vec<String>)> {
    let labels = selector.match_labels.clone().unwrap_or_default();
    let expressions = selector.match_expressions.clone().unwrap_or_default();
    match (labels.len(), expressions.as_slice()) {
        (1, []) => labels.into_iter().next().map(|(k, v)| (k, vec![v])),
        (0, [only]) if only.operator == "In" => {
            Some((only.key.clone(), only.values.clone().unwrap_or_default()))
        }
        _ => None,
    }
}

/// Cilium's pseudo-labels for a Service's namespace and name, and vipam's.
const CILIUM_PSEUDO_LABELS: &[(&str, &str)] = &[
    ("io.kubernetes.service.namespace", SERVICE_NAMESPACE_LABEL),
    ("io.kubernetes.service.name", SERVICE_NAME_LABEL),
];

/// Rewrites Cilium's pseudo-labels to vipam's (same meaning), reporting each rewrite.
pub(super) fn rewrite_cilium_pseudo_labels(
    ctx: &mut Ctx<'_>,
    field: &str,
    selector: &mut LabelSelector,
) {
    let rename = |key: &str| {
        CILIUM_PSEUDO_LABELS
            .iter()
            .find(|(theirs, _)| *theirs == key)
            .map(|(_, ours)| ours.to_string())
    };
    let mut renamed = Vec::new();
    if let Some(labels) = selector.match_labels.take() {
        let mut out = BTreeMap::new();
        for (k, v) in labels {
            match rename(&k) {
                Some(ours) => {
                    renamed.push((k, ours.clone()));
                    out.insert(ours, v);
                }
                None => {
                    out.insert(k, v);
                }
            }
        }
        selector.match_labels = Some(out);
    }
    for requirement in selector.match_expressions.iter_mut().flatten() {
        if let Some(ours) = rename(&requirement.key) {
            renamed.push((requirement.key.clone(), ours.clone()));
            requirement.key = ours;
        }
    }
    for (theirs, ours) in renamed {
        ctx.changed(
            field,
            format!("the pseudo-label {theirs} is written {ours} in vipam (same meaning)"),
        );
    }
}

/// A list of selectors the tool ORs (`list` at `field`), as one selector: exact where
/// [`any_of`] finds a form (a rewrite is reported as changed), else the first one, reported as
/// not converted with `lost_effect` saying what is lost.
pub(super) fn read_any_of(
    ctx: &mut Ctx<'_>,
    field: &str,
    list: Option<&Value>,
    lost_effect: &str,
) -> Option<LabelSelector> {
    let mut read = Vec::new();
    for (index, raw) in list
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(s) = self::read(ctx, &format!("{field}[{index}]"), raw) {
            read.push(s);
        }
    }
    match any_of(&read) {
        Some(selector) => {
            if read.len() > 1 && selector.is_some() {
                ctx.changed(
                    field,
                    "the selectors (any of them matches) are written as one selector with an In \
                     requirement (same meaning)",
                );
            }
            selector
        }
        None => {
            ctx.lost(
                field,
                format!(
                    "{} selectors, any of which matches, have no single-selector form: only the \
                     first was carried over, so {lost_effect}",
                    read.len()
                ),
            );
            read.into_iter().next()
        }
    }
}

/// A `nodeSelector` map (Pod spec) as a label selector.
pub(super) fn from_map(labels: &BTreeMap<String, String>) -> Option<LabelSelector> {
    (!labels.is_empty()).then(|| LabelSelector {
        match_labels: Some(labels.clone()),
        match_expressions: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(v: Value) -> LabelSelector {
        LabelSelector::deserialize(&v).unwrap()
    }

    #[test]
    fn one_selector_is_kept_and_an_empty_list_selects_all() {
        let one = sel(
            json!({"matchLabels": {"a": "b"}, "matchExpressions": [{"key": "c", "operator": "Exists"}]}),
        );
        assert_eq!(any_of(std::slice::from_ref(&one)), Some(Some(one)));
        assert_eq!(any_of(&[]), Some(None));
        assert_eq!(
            any_of(&[sel(json!({"matchLabels": {"a": "b"}})), sel(json!({}))]),
            Some(None),
            "an empty selector in an OR selects everything"
        );
    }

    #[test]
    fn selectors_on_one_key_merge_into_in() {
        let merged = any_of(&[
            sel(json!({"matchLabels": {"tier": "web"}})),
            sel(json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["db", "web"]}]})),
        ])
        .unwrap()
        .unwrap();
        let requirement = &merged.match_expressions.unwrap()[0];
        assert_eq!(requirement.key, "tier");
        assert_eq!(requirement.operator, "In");
        assert_eq!(
            requirement.values.as_deref(),
            Some(&["web".to_string(), "db".to_string()][..])
        );
    }

    #[test]
    fn selectors_on_different_keys_have_no_exact_form() {
        assert_eq!(
            any_of(&[
                sel(json!({"matchLabels": {"tier": "web"}})),
                sel(json!({"matchLabels": {"team": "a"}})),
            ]),
            None
        );
        assert_eq!(
            any_of(&[
                sel(json!({"matchLabels": {"tier": "web", "team": "a"}})),
                sel(json!({"matchLabels": {"tier": "db"}})),
            ]),
            None
        );
    }
}
