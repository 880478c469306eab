//! The CRDs (group `vipam.io`, version `v1alpha1`) and their conversions to core types.
//!
//! Doc comments become the CRD descriptions; `manifests/crds/` is generated from these types
//! by `vipam crds` and a test fails when it drifts.

mod convert;
mod types;
pub mod view;

pub use convert::{
    ConvertError, LabelSelectorExt, allocation_entry, allocation_object, bgp_announcement,
    bgp_peer, l2_pool_names, pool_spec, service_view, time_from_seconds,
};
pub use types::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// API group of the CRDs.
pub const GROUP: &str = "vipam.io";
/// API version of the CRDs.
pub const VERSION: &str = "v1alpha1";

/// Every CRD vipam defines, in a stable order.
/// Orders two resourceVersions of the same resource, or None when either is not a positive
/// decimal integer without leading zeros.
///
/// The one place vipam reads a resourceVersion as more than an opaque token. Kubernetes
/// (KEP-5504, `k8s.io/apimachinery/pkg/util/resourceversion.CompareResourceVersion` since 1.35)
/// makes versions of one resource comparable this way, of any length; other API servers may
/// not, so callers treat None as "unknown" and fall back to what is safe without an order.
/// Used only where the watch contract needs an order: a watch event older than a write this
/// process already applied.
pub fn compare_resource_versions(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    let well_formed =
        |v: &str| !v.is_empty() && !v.starts_with('0') && v.bytes().all(|c| c.is_ascii_digit());
    if !well_formed(a) || !well_formed(b) {
        return None;
    }
    Some(a.len().cmp(&b.len()).then_with(|| a.cmp(b)))
}

/// Create/replace parameters naming `manager` (`vipam-webhook`, `vipam-controller`,
/// `vipam-agent`) as the field manager, so managedFields say which component wrote what.
pub fn post_params(manager: &str) -> kube::api::PostParams {
    kube::api::PostParams {
        field_manager: Some(manager.to_string()),
        ..kube::api::PostParams::default()
    }
}

/// Patch parameters naming `manager` as the field manager (see [`post_params`]).
pub fn patch_params(manager: &str) -> kube::api::PatchParams {
    kube::api::PatchParams {
        field_manager: Some(manager.to_string()),
        ..kube::api::PatchParams::default()
    }
}

pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        IPPool::crd(),
        IPAllocation::crd(),
        L2Announcement::crd(),
        BGPPeer::crd(),
        BGPAnnouncement::crd(),
    ]
}

/// The CRDs as one multi-document YAML stream (what `vipam crds` prints).
pub fn crds_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}

/// File name under `manifests/crds/` for a CRD (`ippools.vipam.io.yaml`).
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// Fields of a vipam object's `spec` that its CRD schema does not know, as paths with a hint
/// (`spec.avoidBuggyIps (did you mean avoidBuggyIPs?)`). The API server would drop them (or
/// refuse them with strict field validation), so a typo silently changes nothing.
pub fn unknown_fields(kind: &str, object: &serde_json::Value) -> Vec<String> {
    let Some(crd) = crds().into_iter().find(|c| c.spec.names.kind == kind) else {
        return Vec::new();
    };
    let Some(schema) = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
    else {
        return Vec::new();
    };
    let mut found = Vec::new();
    if let (Some(spec_schema), Some(spec)) =
        (schema.pointer("/properties/spec"), object.get("spec"))
    {
        unknown_in(spec_schema, spec, "spec", &mut found);
    }
    found
}

fn unknown_in(
    schema: &serde_json::Value,
    value: &serde_json::Value,
    path: &str,
    found: &mut Vec<String>,
) {
    match value {
        serde_json::Value::Object(map) => {
            let properties = schema.get("properties").and_then(|p| p.as_object());
            let additional = schema.get("additionalProperties");
            for (key, child) in map {
                let child_path = format!("{path}.{key}");
                match (properties.and_then(|p| p.get(key)), additional) {
                    (Some(child_schema), _) => unknown_in(child_schema, child, &child_path, found),
                    (None, Some(additional)) if additional.is_object() => {
                        unknown_in(additional, child, &child_path, found)
                    }
                    (None, _) if properties.is_some() => {
                        let hint = properties
                            .and_then(|p| p.keys().find(|k| k.eq_ignore_ascii_case(key)))
                            .map(|k| format!(" (did you mean {k}?)"))
                            .unwrap_or_default();
                        found.push(format!("{child_path}{hint}"));
                    }
                    (None, _) => {}
                }
            }
        }
        serde_json::Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (index, item) in items.iter().enumerate() {
                    unknown_in(item_schema, item, &format!("{path}[{index}]"), found);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn resource_versions_compare_as_unbounded_decimals_or_not_at_all() {
        use super::compare_resource_versions as cmp;
        use std::cmp::Ordering::*;
        assert_eq!(cmp("9", "10"), Some(Less));
        assert_eq!(cmp("10", "10"), Some(Equal));
        assert_eq!(cmp("110", "101"), Some(Greater));
        // Longer than u64: still ordered.
        assert_eq!(
            cmp("184467440737095516150", "18446744073709551615"),
            Some(Greater)
        );
        // Not the documented form: no order.
        for bad in ["", "0", "007", "12a", "-1", " 1"] {
            assert_eq!(cmp(bad, "5"), None, "{bad:?}");
            assert_eq!(cmp("5", bad), None, "{bad:?}");
        }
    }

    use serde_json::json;

    #[test]
    fn unknown_fields_are_found_with_hints() {
        let pool = json!({
            "spec": {
                "blocks": [{"cidr": "192.0.2.0/24"}, {"start": "192.0.2.1", "stopp": "192.0.2.9"}],
                "avoidBuggyIps": true,
                "serviceSelector": {"matchLabels": {"any": "label"}},
                "autoAssign": false
            }
        });
        assert_eq!(
            super::unknown_fields("IPPool", &pool),
            vec![
                "spec.avoidBuggyIps (did you mean avoidBuggyIPs?)".to_string(),
                "spec.blocks[1].stopp".to_string(),
            ]
        );
        let l2 = json!({"spec": {"ipPools": ["lan"], "interface": ["eth0"], "mode": "arp"}});
        assert_eq!(
            super::unknown_fields("L2Announcement", &l2),
            vec!["spec.interface".to_string()]
        );
        assert!(super::unknown_fields("IPPool", &json!({"spec": {"blocks": []}})).is_empty());
    }
}
