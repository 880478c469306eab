//! The admission webhooks: `POST /mutate/service`, `POST /validate/ippool`,
//! `POST /validate/l2announcement`, `POST /validate/bgppeer`, `POST /validate/bgpannouncement`. Every replica serves them; the API server's name uniqueness
//! on `IPAllocation`s makes them race-free across replicas.

pub mod ledger;
pub mod selfsigned;
pub mod service;
pub mod tls;
pub mod validate;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use k8s_openapi::api::core::v1::Service;
use kube::Resource;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::admin::{AdmissionLabels, Metrics, WebhookLabel};
use crate::api::{BGPAnnouncement, BGPPeer, IPPool, L2Announcement};
use crate::core::allocate::Context;
use crate::core::request::RequestPolicy;

/// Request bodies larger than this are refused (the API server sends far less).
/// Field manager of the webhook's writes (the ledger).
pub const FIELD_MANAGER: &str = "vipam-webhook";
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// An admission that takes longer is answered with an error (the API server waits 10 s at most).
pub const HANDLER_TIMEOUT: Duration = Duration::from_secs(9);

/// Shared state of the webhook handlers.
pub struct WebhookState {
    pub policy: RequestPolicy,
    pub sticky_release_secs: i64,
    pub ledger: ledger::LedgerView,
    pub metrics: Arc<Metrics>,
}

impl WebhookState {
    /// The allocator's context now.
    pub fn context(&self) -> Context {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Context {
            now,
            sticky_release_secs: self.sticky_release_secs,
        }
    }
}

/// An answer with its metric labels and warnings.
pub struct Outcome {
    pub response: AdmissionResponse,
    pub reason: &'static str,
}

impl Outcome {
    pub fn allowed(response: AdmissionResponse, reason: &'static str) -> Outcome {
        Outcome { response, reason }
    }

    pub fn denied(response: AdmissionResponse, reason: &'static str, message: String) -> Outcome {
        let mut response = response.deny(message);
        response.result.status = Some(kube::core::response::StatusSummary::Failure);
        response.result.reason = reason.to_string();
        response.result.code = 403;
        Outcome { response, reason }
    }

    #[must_use]
    pub fn warn(mut self, warning: String) -> Outcome {
        self.response
            .warnings
            .get_or_insert_with(Vec::new)
            .push(warning);
        self
    }
}

/// The webhook router.
pub fn router(state: Arc<WebhookState>) -> Router {
    Router::new()
        .route("/mutate/service", post(mutate_service))
        .route("/validate/ippool", post(validate_ippool))
        .route("/validate/l2announcement", post(validate_l2announcement))
        .route("/validate/bgppeer", post(validate_bgppeer))
        .route("/validate/bgpannouncement", post(validate_bgpannouncement))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn mutate_service(State(state): State<Arc<WebhookState>>, body: Bytes) -> Response {
    handle::<Service, _>(&state, "service", &body, |state, req| {
        Box::pin(async move { service::admit(state, &req).await })
    })
    .await
}

async fn validate_ippool(State(state): State<Arc<WebhookState>>, body: Bytes) -> Response {
    handle::<IPPool, _>(&state, "ippool", &body, |state, req| {
        Box::pin(async move { validate::admit_pool(state, &req) })
    })
    .await
}

async fn validate_l2announcement(State(state): State<Arc<WebhookState>>, body: Bytes) -> Response {
    handle::<L2Announcement, _>(&state, "l2announcement", &body, |state, req| {
        Box::pin(async move { validate::admit_l2announcement(state, &req) })
    })
    .await
}

async fn validate_bgppeer(State(state): State<Arc<WebhookState>>, body: Bytes) -> Response {
    handle::<BGPPeer, _>(&state, "bgppeer", &body, |state, req| {
        Box::pin(async move { validate::admit_bgppeer(state, &req) })
    })
    .await
}

async fn validate_bgpannouncement(State(state): State<Arc<WebhookState>>, body: Bytes) -> Response {
    handle::<BGPAnnouncement, _>(&state, "bgpannouncement", &body, |state, req| {
        Box::pin(async move { validate::admit_bgpannouncement(state, &req) })
    })
    .await
}

type BoxFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send + 'a>>;

/// Parses a review, runs `admit` with a deadline, records metrics and encodes the answer.
async fn handle<'s, K, F>(
    state: &'s WebhookState,
    webhook: &'static str,
    body: &[u8],
    admit: F,
) -> Response
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone,
    F: FnOnce(&'s WebhookState, AdmissionRequest<K>) -> BoxFuture<'s>,
{
    let started = Instant::now();
    let outcome = match parse_review::<K>(body) {
        Ok(req) => {
            let uid = req.uid.clone();
            let fallback = AdmissionResponse::from(&req);
            match tokio::time::timeout(HANDLER_TIMEOUT, admit(state, req)).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    tracing::warn!(%uid, webhook, "admission timed out");
                    Outcome::denied(
                        fallback,
                        "timeout",
                        "vipam did not decide in time; retry".into(),
                    )
                }
            }
        }
        Err(message) => {
            state
                .metrics
                .admissions
                .get_or_create(&AdmissionLabels {
                    webhook: webhook.into(),
                    result: "error".into(),
                    reason: "bad_request".into(),
                })
                .inc();
            return (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response();
        }
    };
    let allowed = outcome.response.allowed;
    state
        .metrics
        .admissions
        .get_or_create(&AdmissionLabels {
            webhook: webhook.into(),
            result: if allowed { "allowed" } else { "denied" }.into(),
            reason: outcome.reason.into(),
        })
        .inc();
    state
        .metrics
        .admission_seconds
        .get_or_create(&WebhookLabel {
            webhook: webhook.into(),
        })
        .observe(started.elapsed().as_secs_f64());
    if !allowed {
        tracing::info!(
            webhook,
            uid = %outcome.response.uid,
            reason = outcome.reason,
            message = %outcome.response.result.message,
            "denied"
        );
    }
    let body = encode_review(outcome.response);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Parses an AdmissionReview of `K`, with a message for anything malformed.
pub fn parse_review<K>(body: &[u8]) -> Result<AdmissionRequest<K>, String>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone,
{
    // One typed pass in the common case; a second, untyped one only to explain a failure.
    let review: AdmissionReview<K> = match serde_json::from_slice(body) {
        Ok(review) => review,
        Err(typed) => {
            let value: Value =
                serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))?;
            check_kind::<K>(value.pointer("/request/kind/kind").and_then(Value::as_str))?;
            return Err(format!("malformed AdmissionReview: {typed}"));
        }
    };
    let request: AdmissionRequest<K> = review
        .try_into()
        .map_err(|_| "an AdmissionReview without a request".to_string())?;
    check_kind::<K>(Some(request.kind.kind.as_str()))?;
    if request.types.api_version != "admission.k8s.io/v1" {
        return Err(format!(
            "only admission.k8s.io/v1 reviews are served, not {:?} (set \
             admissionReviewVersions: [v1])",
            request.types.api_version
        ));
    }
    Ok(request)
}

fn check_kind<K: Resource<DynamicType = ()>>(kind: Option<&str>) -> Result<(), String> {
    let kind = kind.unwrap_or("");
    if kind == K::kind(&()) {
        Ok(())
    } else {
        Err(format!(
            "this endpoint admits {} objects, not {kind:?}",
            K::kind(&())
        ))
    }
}

/// The answer as it goes on the wire.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct WireReview<'a> {
    api_version: &'a str,
    kind: &'a str,
    response: WireResponse<'a>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse<'a> {
    uid: &'a str,
    allowed: bool,
    status: &'a kube::core::Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<&'a Vec<String>>,
}

/// Serialises the answer in one pass. The patch goes base64-encoded, as Kubernetes documents
/// (kube's response type would write it as an array of numbers).
pub fn encode_review(response: AdmissionResponse) -> Vec<u8> {
    let patch = response
        .patch
        .as_ref()
        .map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes));
    let wire = WireReview {
        api_version: "admission.k8s.io/v1",
        kind: "AdmissionReview",
        response: WireResponse {
            uid: &response.uid,
            allowed: response.allowed,
            status: &response.result,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            warnings: response.warnings.as_ref(),
        },
    };
    serde_json::to_vec(&wire).expect("review serialises")
}
