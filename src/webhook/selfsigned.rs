//! `--self-signed`: vipam makes its own CA and serving certificate, keeps them in a Secret
//! (created once; replicas that lose the create race read the winner's), renews them before
//! they expire, and writes the CA into the `caBundle` of its own webhook configurations under
//! field manager `vipam`, touching no other field.
//!
//! Expiry times are recorded as Secret annotations so no certificate parsing is needed.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use serde::de::DeserializeOwned;

/// Field manager of these writes: the controller process makes them.
pub const FIELD_MANAGER: &str = "vipam-controller";
const CA_NOT_AFTER: &str = "vipam.io/ca-not-after";
const CERT_NOT_AFTER: &str = "vipam.io/cert-not-after";
const CA_COMMON_NAME: &str = "vipam-webhook-ca";
const DAY: i64 = 86_400;

/// Where the self-signed material lives and what it serves.
#[derive(Debug, Clone)]
pub struct SelfSignedConfig {
    pub namespace: String,
    pub secret_name: String,
    /// The webhook Service's name: the certificate covers its DNS names.
    pub service_name: String,
    pub mutating_configuration: String,
    pub validating_configuration: String,
    pub ca_validity_days: i64,
    pub cert_validity_days: i64,
    /// Renew the serving certificate when less than this remains (the CA: four times this).
    pub renew_before_days: i64,
}

impl SelfSignedConfig {
    /// The DNS names the API server may use to reach the webhook Service.
    pub fn dns_names(&self) -> Vec<String> {
        let (svc, ns) = (&self.service_name, &self.namespace);
        vec![
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
            format!("{svc}.{ns}"),
            svc.clone(),
        ]
    }
}

/// The material kept in the Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// One or more CA certificates (PEM); the newest signs. Old ones stay while they are valid,
    /// so clients that still trust them keep working during a CA renewal.
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_not_after: i64,
    pub cert_not_after: i64,
}

/// What to do with the material found (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Keep,
    /// A new serving certificate from the same CA.
    Serving,
    /// A new CA (and serving certificate); the old CA stays in the bundle.
    Ca,
}

/// Decides whether `bundle` needs renewing at `now` (unix seconds).
pub fn renewal(bundle: &Bundle, now: i64, config: &SelfSignedConfig) -> Renewal {
    let margin = config.renew_before_days * DAY;
    if bundle.ca_not_after - now < 4 * margin {
        Renewal::Ca
    } else if bundle.cert_not_after - now < margin {
        Renewal::Serving
    } else {
        Renewal::Keep
    }
}

/// Why self-signed material could not be made or kept.
#[derive(Debug, thiserror::Error)]
pub enum SelfSignedError {
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("Secret {namespace}/{name}: {source}")]
    Secret {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("{kind} {name}: {source}")]
    Configuration {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl crate::core::category::Category for SelfSignedError {
    fn category(&self) -> &'static str {
        match self {
            SelfSignedError::Generate(_) => "generate",
            SelfSignedError::Secret { .. } => "secret",
            SelfSignedError::Configuration { .. } => "webhook_configuration",
        }
    }
}

fn offset(secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn ca_params(not_before: i64, not_after: i64) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = offset(not_before);
    params.not_after = offset(not_after);
    params
}

/// A new CA and a serving certificate signed by it.
pub fn generate(now: i64, config: &SelfSignedConfig) -> Result<Bundle, SelfSignedError> {
    let ca_key = KeyPair::generate()?;
    let ca_not_after = now + config.ca_validity_days * DAY;
    let ca = ca_params(now - 300, ca_not_after).self_signed(&ca_key)?;
    let mut bundle = Bundle {
        ca_pem: ca.pem(),
        ca_key_pem: ca_key.serialize_pem(),
        cert_pem: String::new(),
        key_pem: String::new(),
        ca_not_after,
        cert_not_after: 0,
    };
    issue_serving(&mut bundle, now, config)?;
    Ok(bundle)
}

/// A new serving certificate from the bundle's CA (the last in `ca_pem`, whose key is kept).
pub fn issue_serving(
    bundle: &mut Bundle,
    now: i64,
    config: &SelfSignedConfig,
) -> Result<(), SelfSignedError> {
    let ca_key = KeyPair::from_pem(&bundle.ca_key_pem)?;
    // The issuer is rebuilt from the same name and key, so what it signs chains to the CA.
    let issuer = Issuer::new(ca_params(now, bundle.ca_not_after), ca_key);
    let mut params = CertificateParams::new(config.dns_names())?;
    params
        .distinguished_name
        .push(DnType::CommonName, config.dns_names()[0].clone());
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let not_after = (now + config.cert_validity_days * DAY).min(bundle.ca_not_after);
    params.not_before = offset(now - 300);
    params.not_after = offset(not_after);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    bundle.cert_pem = cert.pem();
    bundle.key_pem = key.serialize_pem();
    bundle.cert_not_after = not_after;
    Ok(())
}

/// Renews as [`renewal`] says; returns whether anything changed.
pub fn renew(
    bundle: &mut Bundle,
    now: i64,
    config: &SelfSignedConfig,
) -> Result<bool, SelfSignedError> {
    match renewal(bundle, now, config) {
        Renewal::Keep => Ok(false),
        Renewal::Serving => issue_serving(bundle, now, config).map(|_| true),
        Renewal::Ca => {
            let fresh = generate(now, config)?;
            // Keep the old CA (still valid) next to the new one for clients that cached it.
            let old_ca = if bundle.ca_not_after > now {
                bundle.ca_pem.clone()
            } else {
                String::new()
            };
            *bundle = Bundle {
                ca_pem: format!("{}{old_ca}", fresh.ca_pem),
                ..fresh
            };
            Ok(true)
        }
    }
}

fn secret_bundle(secret: &Secret) -> Option<Bundle> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .filter(|s| !s.is_empty())
    };
    let annotations = secret.metadata.annotations.as_ref()?;
    let time = |key: &str| annotations.get(key).and_then(|v| v.parse::<i64>().ok());
    let bundle = Bundle {
        ca_pem: text("ca.crt")?,
        ca_key_pem: text("ca.key")?,
        cert_pem: text("tls.crt")?,
        key_pem: text("tls.key")?,
        ca_not_after: time(CA_NOT_AFTER)?,
        cert_not_after: time(CERT_NOT_AFTER)?,
    };
    // A Secret whose CA key no longer parses cannot sign renewals: start over.
    KeyPair::from_pem(&bundle.ca_key_pem).ok()?;
    Some(bundle)
}

fn secret_object(config: &SelfSignedConfig, bundle: &Bundle, base: Option<&Secret>) -> Secret {
    let mut secret = base.cloned().unwrap_or_else(|| Secret {
        metadata: ObjectMeta {
            name: Some(config.secret_name.clone()),
            namespace: Some(config.namespace.clone()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "vipam".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_string()),
        ..Secret::default()
    });
    let annotations = secret
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new);
    annotations.insert(CA_NOT_AFTER.into(), bundle.ca_not_after.to_string());
    annotations.insert(CERT_NOT_AFTER.into(), bundle.cert_not_after.to_string());
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    secret.data = Some(BTreeMap::from([
        ("ca.crt".to_string(), bytes(&bundle.ca_pem)),
        ("ca.key".to_string(), bytes(&bundle.ca_key_pem)),
        ("tls.crt".to_string(), bytes(&bundle.cert_pem)),
        ("tls.key".to_string(), bytes(&bundle.key_pem)),
    ]));
    secret
}

/// Reads (or creates, or renews) the Secret and returns the material to serve.
pub async fn ensure_secret(
    client: &Client,
    config: &SelfSignedConfig,
    now: i64,
) -> Result<Bundle, SelfSignedError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    let fail = |source| SelfSignedError::Secret {
        namespace: config.namespace.clone(),
        name: config.secret_name.clone(),
        source,
    };
    // Each round either returns or lost a race (409) and reads the winner's version.
    for _ in 0..8 {
        let existing = api.get_opt(&config.secret_name).await.map_err(fail)?;
        let result = match &existing {
            None => {
                let bundle = generate(now, config)?;
                api.create(
                    &crate::api::post_params(FIELD_MANAGER),
                    &secret_object(config, &bundle, None),
                )
                .await
                .map(|_| bundle)
            }
            Some(secret) => {
                let (mut bundle, changed) = match secret_bundle(secret) {
                    Some(bundle) => (bundle, false),
                    None => {
                        tracing::warn!(secret = %config.secret_name, "the Secret holds no usable certificate material; regenerating");
                        (generate(now, config)?, true)
                    }
                };
                let renewed = renew(&mut bundle, now, config)?;
                if changed || renewed {
                    api.replace(
                        &config.secret_name,
                        &crate::api::post_params(FIELD_MANAGER),
                        &secret_object(config, &bundle, Some(secret)),
                    )
                    .await
                    .map(|_| bundle)
                } else {
                    Ok(bundle)
                }
            }
        };
        match result {
            Ok(bundle) => return Ok(bundle),
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(err) => return Err(fail(err)),
        }
    }
    Err(fail(kube::Error::Service(
        "the Secret kept changing under vipam (8 conflicts in a row)".into(),
    )))
}

/// Writes `ca_pem` into every webhook's `clientConfig.caBundle` of the two configurations.
/// Each write is a JSON patch guarded by a `test` of the webhook's name, so it changes nothing
/// else even if the list changes meanwhile. A missing configuration is not an error (not
/// installed yet); it is retried on the next round.
pub async fn inject_ca_bundle(
    client: &Client,
    config: &SelfSignedConfig,
    ca_pem: &str,
) -> Result<usize, SelfSignedError> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    let patched =
        inject::<MutatingWebhookConfiguration>(client, &config.mutating_configuration, &encoded)
            .await?
            + inject::<ValidatingWebhookConfiguration>(
                client,
                &config.validating_configuration,
                &encoded,
            )
            .await?;
    Ok(patched)
}

/// The webhooks of a configuration, as (name, current caBundle).
trait WebhookBundles {
    fn bundles(&self) -> Vec<(String, Option<ByteString>)>;
}

// The two configuration types have the same shape but no common trait.
macro_rules! webhook_bundles {
    ($($kind:ty),*) => {$(
        impl WebhookBundles for $kind {
            fn bundles(&self) -> Vec<(String, Option<ByteString>)> {
                self.webhooks
                    .iter()
                    .flatten()
                    .map(|w| (w.name.clone(), w.client_config.ca_bundle.clone()))
                    .collect()
            }
        }
    )*};
}

webhook_bundles!(MutatingWebhookConfiguration, ValidatingWebhookConfiguration);

async fn inject<K>(client: &Client, name: &str, encoded: &str) -> Result<usize, SelfSignedError>
where
    K: WebhookBundles
        + k8s_openapi::Resource
        + Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    let kind = <K as k8s_openapi::Resource>::KIND;
    let fail = |source| SelfSignedError::Configuration {
        kind,
        name: name.to_string(),
        source,
    };
    let Some(configuration) = api.get_opt(name).await.map_err(fail)? else {
        tracing::warn!(%kind, %name, "webhook configuration not found yet; will retry");
        return Ok(0);
    };
    let want = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_default();
    let mut operations = Vec::new();
    for (index, (webhook, current)) in configuration.bundles().into_iter().enumerate() {
        if current.as_ref().map(|b| &b.0) == Some(&want) {
            continue;
        }
        operations.push(serde_json::json!({
            "op": "test", "path": format!("/webhooks/{index}/name"), "value": webhook
        }));
        operations.push(serde_json::json!({
            "op": "add", "path": format!("/webhooks/{index}/clientConfig/caBundle"), "value": encoded
        }));
    }
    if operations.is_empty() {
        return Ok(0);
    }
    let count = operations.len() / 2;
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(operations)).expect("valid JSON patch");
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    api.patch(name, &params, &Patch::<()>::Json(patch))
        .await
        .map_err(fail)?;
    tracing::info!(%kind, %name, webhooks = count, "caBundle written");
    Ok(count)
}

/// How often the Secret and the caBundles are re-checked.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SelfSignedConfig {
        SelfSignedConfig {
            namespace: "vipam-system".into(),
            secret_name: "vipam-webhook-tls".into(),
            service_name: "vipam-webhook".into(),
            mutating_configuration: "vipam".into(),
            validating_configuration: "vipam".into(),
            ca_validity_days: 3650,
            cert_validity_days: 365,
            renew_before_days: 30,
        }
    }

    #[test]
    fn renewal_schedule() {
        let c = config();
        let now = 1_800_000_000;
        let bundle = generate(now, &c).unwrap();
        assert_eq!(renewal(&bundle, now, &c), Renewal::Keep);
        assert_eq!(renewal(&bundle, now + 336 * DAY, &c), Renewal::Serving);
        assert_eq!(renewal(&bundle, now + (3650 - 119) * DAY, &c), Renewal::Ca);
        assert_eq!(
            c.dns_names(),
            vec![
                "vipam-webhook.vipam-system.svc",
                "vipam-webhook.vipam-system.svc.cluster.local",
                "vipam-webhook.vipam-system",
                "vipam-webhook"
            ]
        );
    }

    #[test]
    fn renewals_keep_the_chain_and_the_old_ca() {
        let c = config();
        let now = 1_800_000_000;
        let mut bundle = generate(now, &c).unwrap();
        let first = bundle.clone();
        assert!(renew(&mut bundle, now + 340 * DAY, &c).unwrap());
        assert_eq!(
            bundle.ca_pem, first.ca_pem,
            "a serving renewal keeps the CA"
        );
        assert_ne!(bundle.cert_pem, first.cert_pem);
        assert!(renew(&mut bundle, now + 3600 * DAY, &c).unwrap());
        assert!(
            bundle.ca_pem.ends_with(&first.ca_pem),
            "the old CA stays in the bundle"
        );
        assert_eq!(bundle.ca_pem.matches("BEGIN CERTIFICATE").count(), 2);
    }
}
