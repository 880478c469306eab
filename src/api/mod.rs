//! The CRDs (group `vipam.io`, version `v1alpha1`) and their conversions to core types.
//!
//! Doc comments become the CRD descriptions; `manifests/crds/` is generated from these types
//! by `vipam crds` and a test fails when it drifts.

mod convert;
mod types;

pub use convert::{
    ConvertError, LabelSelectorExt, allocation_entry, allocation_object, l2_pool_names, pool_spec,
    service_view, time_from_seconds,
};
pub use types::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// API group of the CRDs.
pub const GROUP: &str = "vipam.io";
/// API version of the CRDs.
pub const VERSION: &str = "v1alpha1";

/// Every CRD vipam defines, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![IPPool::crd(), IPAllocation::crd(), L2Announcement::crd()]
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
