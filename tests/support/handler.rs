//! From an HTTP request to an operation on the state, and back to an HTTP response.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use serde_json::{Value, json};

use super::faults::{FaultAction, Outage, RequestRecord, Verb};
use super::resources::ResourceType;
use super::selector::{FieldSelector, LabelSelector, supported_fields};
use super::status::ApiError;
use super::store::{
    DeleteOpts, ListQuery, PatchType, State, WatchLine, WatchQuery, WatchRx, WriteOpts,
    partial_metadata,
};
use super::{FakeApi, Unavailable};

/// Response body: a full JSON document, or a watch stream of JSON lines.
pub type FakeBody = UnsyncBoxBody<Bytes, Infallible>;

enum Outcome {
    Json(u16, Value),
    Watch(Vec<WatchLine>, Option<WatchRx>, Option<Duration>),
}

struct Target {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

enum Route {
    Json(Value),
    Resource(Target),
}

/// Query parameters, percent-decoded.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: &str) -> Self {
        Query(
            raw.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn json_response(code: u16, body: &Value) -> Response<FakeBody> {
    let bytes = serde_json::to_vec(body).expect("JSON values serialise");
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)).boxed_unsync())
        .expect("valid response")
}

fn error_response(e: &ApiError) -> Response<FakeBody> {
    json_response(e.code, &e.to_status())
}

fn watch_response(
    initial: Vec<WatchLine>,
    rx: Option<WatchRx>,
    timeout: Option<Duration>,
) -> Response<FakeBody> {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let live = futures::stream::unfold(rx, move |rx| async move {
        let mut rx = rx?;
        let next = match deadline {
            Some(d) => tokio::time::timeout_at(d, rx.recv()).await.ok().flatten(),
            None => rx.recv().await,
        };
        next.map(|line| (line, Some(rx)))
    });
    let lines = futures::stream::iter(initial).chain(live).map(|v| {
        let mut bytes = serde_json::to_vec(&v).expect("JSON values serialise");
        bytes.push(b'\n');
        Ok::<_, Infallible>(Frame::data(Bytes::from(bytes)))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(StreamBody::new(lines).boxed_unsync())
        .expect("valid response")
}

fn version_info() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-vipam-fake",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z", "goVersion": "none", "compiler": "none",
        "platform": "linux/amd64",
    })
}

fn resource_list(types: &[ResourceType], group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for t in types
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        resources.push(json!({
            "name": t.plural, "singularName": t.singular, "namespaced": t.namespaced, "kind": t.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        }));
        if t.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced,
                "kind": t.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn api_group(types: &[ResourceType], group: &str) -> Option<Value> {
    let t = types.iter().find(|t| t.group == group)?;
    let gv = json!({"groupVersion": t.api_version(), "version": t.version});
    Some(
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": [gv], "preferredVersion": gv}),
    )
}

fn route(types: &[ResourceType], path: &str) -> Result<Route, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Ok(Route::Json(version_info())),
        ["api"] => {
            return Ok(Route::Json(json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "fake"}],
            })));
        }
        ["apis"] => {
            let mut groups: Vec<&str> = types
                .iter()
                .map(|t| t.group.as_str())
                .filter(|g| !g.is_empty())
                .collect();
            groups.dedup();
            groups.sort();
            groups.dedup();
            let groups: Vec<Value> = groups.iter().filter_map(|g| api_group(types, g)).collect();
            return Ok(Route::Json(
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            ));
        }
        ["apis", g] => {
            return api_group(types, g)
                .map(Route::Json)
                .ok_or_else(ApiError::no_route);
        }
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route()),
    };
    if rest.is_empty() {
        if !types
            .iter()
            .any(|t| t.group == group && t.version == version)
        {
            return Err(ApiError::no_route());
        }
        return Ok(Route::Json(resource_list(types, group, version)));
    }
    let find = |plural: &str| {
        types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    };
    // `/namespaces/NS/PLURAL/...` is a namespaced path unless PLURAL is not a namespaced
    // resource, in which case it is the Namespace NS itself (and a subresource of it).
    let (rt, namespace, tail) = match rest {
        ["namespaces", ns, plural, tail @ ..] if find(plural).is_some_and(|t| t.namespaced) => {
            (find(plural).expect("checked"), Some(ns.to_string()), tail)
        }
        [plural, tail @ ..] => (find(plural).ok_or_else(ApiError::no_route)?, None, tail),
        [] => unreachable!("rest is not empty"),
    };
    let (name, status) = match tail {
        [] => (None, false),
        [name] => (Some(name.to_string()), false),
        [name, "status"] if rt.status_subresource => (Some(name.to_string()), true),
        _ => return Err(ApiError::no_route()),
    };
    if rt.namespaced && namespace.is_none() && name.is_some() {
        return Err(ApiError::no_route());
    }
    Ok(Route::Resource(Target {
        rt,
        namespace,
        name,
        status,
    }))
}

fn verb_of(method: &Method, t: &Target, q: &Query) -> Result<Verb, ApiError> {
    let named = t.name.is_some();
    let all_namespaces = t.rt.namespaced && t.namespace.is_none();
    let verb = match *method {
        Method::GET if named => Verb::Get,
        Method::GET if q.flag("watch") => Verb::Watch,
        Method::GET => Verb::List,
        Method::POST if !named && !t.status => Verb::Create,
        Method::PUT if named => Verb::Update,
        Method::PATCH if named => Verb::Patch,
        Method::DELETE if named && !t.status => Verb::Delete,
        Method::DELETE if !named => Verb::DeleteCollection,
        _ => return Err(ApiError::method_not_allowed()),
    };
    // Across namespaces a namespaced resource can only be listed and watched.
    if all_namespaces && !matches!(verb, Verb::List | Verb::Watch) {
        return Err(ApiError::method_not_allowed());
    }
    Ok(verb)
}

/// Deletes carry `dryRun` in their DeleteOptions body (kube) as well as in the query (curl).
fn delete_body_dry_run(verb: Verb, body: &[u8]) -> bool {
    matches!(verb, Verb::Delete | Verb::DeleteCollection)
        && serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|o| o.get("dryRun").and_then(Value::as_array).cloned())
            .is_some_and(|a| a.iter().any(|v| v == "All"))
}

fn dry_run(q: &Query) -> Result<bool, ApiError> {
    match q.get("dryRun") {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "Invalid dry run value: {other:?}; only All is supported"
        ))),
    }
}

fn list_query(t: &Target, q: &Query) -> Result<ListQuery, ApiError> {
    Ok(ListQuery {
        labels: LabelSelector::parse(q.get("labelSelector").unwrap_or(""))
            .map_err(ApiError::bad_request)?,
        fields: FieldSelector::parse(
            q.get("fieldSelector").unwrap_or(""),
            supported_fields(&t.rt.group, &t.rt.plural),
        )
        .map_err(ApiError::bad_request)?,
        limit: q.get("limit").and_then(|l| l.parse().ok()),
        continue_token: q
            .get("continue")
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        resource_version: q.get("resourceVersion").map(str::to_string),
        resource_version_match: q.get("resourceVersionMatch").map(str::to_string),
    })
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

fn patch_type(content_type: Option<&str>) -> Result<PatchType, ApiError> {
    let mime = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    match mime {
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
        "application/apply-patch+yaml" => Ok(PatchType::Apply),
        other => Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
        ))),
    }
}

fn execute(
    state: &mut State,
    verb: Verb,
    t: &Target,
    q: &Query,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<Outcome, ApiError> {
    let rt = &t.rt;
    let ns = t.namespace.as_deref();
    let ns_key = ns.unwrap_or_default();
    let name = t.name.as_deref().unwrap_or_default();
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let metadata_only = accept.contains("as=PartialObjectMetadata");
    let write = WriteOpts {
        dry_run: dry_run(q)?,
        field_manager: q
            .get("fieldManager")
            .filter(|m| !m.is_empty())
            .map(str::to_string),
        force: q.flag("force"),
    };
    let one = |code: u16, v: Value| {
        let v = if metadata_only {
            partial_metadata(&v)
        } else {
            v
        };
        Outcome::Json(code, v)
    };
    match verb {
        Verb::Get => Ok(one(200, state.get(rt, ns_key, name)?)),
        Verb::List => {
            let mut list = state.list(rt, ns, &list_query(t, q)?)?;
            if metadata_only {
                let items: Vec<Value> = list["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(partial_metadata)
                    .collect();
                list = json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": list["metadata"], "items": items});
            }
            Ok(Outcome::Json(200, list))
        }
        Verb::Watch => {
            let lq = list_query(t, q)?;
            let timeout = q
                .get("timeoutSeconds")
                .and_then(|s| s.parse::<u64>().ok())
                .filter(|s| *s > 0)
                .map(Duration::from_secs);
            let (initial, rx) = state.watch(
                rt,
                ns,
                WatchQuery {
                    labels: lq.labels,
                    fields: lq.fields,
                    resource_version: lq.resource_version,
                    resource_version_match: lq.resource_version_match,
                    bookmarks: q.flag("allowWatchBookmarks"),
                    send_initial_events: q.flag("sendInitialEvents"),
                    metadata_only,
                },
            )?;
            Ok(Outcome::Watch(initial, rx, timeout))
        }
        Verb::Create => Ok(one(
            201,
            state.create(rt, ns, parse_json(body)?, &write, None)?,
        )),
        Verb::Update => Ok(one(
            200,
            state.update(rt, ns_key, name, t.status, parse_json(body)?, &write)?,
        )),
        Verb::Patch => {
            let kind = patch_type(
                headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok()),
            )?;
            let (code, obj) = state.patch(rt, ns_key, name, t.status, (kind, body), &write)?;
            Ok(one(code, obj))
        }
        Verb::Delete | Verb::DeleteCollection => {
            // DeleteOptions come in the body (kube) or the query (curl).
            let opts: Value = if body.iter().all(u8::is_ascii_whitespace) {
                json!({})
            } else {
                parse_json(body)?
            };
            let del = DeleteOpts {
                dry_run: write.dry_run || delete_body_dry_run(verb, body),
                uid: opts
                    .pointer("/preconditions/uid")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                resource_version: opts
                    .pointer("/preconditions/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            };
            if verb == Verb::Delete {
                Ok(one(200, state.delete(rt, ns_key, name, &del)?))
            } else {
                Ok(Outcome::Json(
                    200,
                    state.delete_collection(rt, ns, &list_query(t, q)?, &del)?,
                ))
            }
        }
    }
}

impl FakeApi {
    /// Serves one request; `Err` stands for a connection that fails (an outage that refuses).
    pub(crate) async fn handle(
        &self,
        parts: http::request::Parts,
        body: Bytes,
    ) -> Result<Response<FakeBody>, Unavailable> {
        self.wait_out_outage().await?;
        let query = Query::parse(parts.uri.query().unwrap_or(""));
        let routed = route(&self.lock().types, parts.uri.path());
        let target = match routed {
            Ok(Route::Json(v)) if parts.method == Method::GET => return Ok(json_response(200, &v)),
            Ok(Route::Json(_)) => return Ok(error_response(&ApiError::method_not_allowed())),
            Ok(Route::Resource(t)) => t,
            Err(e) => return Ok(error_response(&e)),
        };
        let verb = match verb_of(&parts.method, &target, &query) {
            Ok(v) => v,
            Err(e) => return Ok(error_response(&e)),
        };
        let record = RequestRecord {
            verb,
            group: target.rt.group.clone(),
            resource: target.rt.plural.clone(),
            subresource: target.status.then(|| "status".to_string()),
            namespace: target.namespace.clone(),
            name: target.name.clone(),
            dry_run: query.get("dryRun") == Some("All") || delete_body_dry_run(verb, &body),
            uri: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
        };
        let fault = {
            let mut state = self.lock();
            state.requests.push(record.clone());
            let fault = state
                .faults
                .iter_mut()
                .find(|f| f.matches(&record))
                .map(|f| {
                    if let Some(n) = f.remaining.as_mut() {
                        *n -= 1;
                    }
                    (f.action.clone(), f.after_commit)
                });
            state.faults.retain(|f| f.remaining != Some(0));
            fault
        };
        if let Some((action, false)) = &fault {
            match action {
                FaultAction::Delay(d) => tokio::time::sleep(*d).await,
                FaultAction::Fail(e) => return Ok(error_response(e)),
            }
        }
        let outcome = {
            let mut state = self.lock();
            execute(&mut state, verb, &target, &query, &parts.headers, &body)
        };
        self.notify_change();
        if let Some((action, true)) = &fault {
            match action {
                FaultAction::Delay(d) => tokio::time::sleep(*d).await,
                FaultAction::Fail(e) => return Ok(error_response(e)),
            }
        }
        Ok(match outcome {
            Ok(Outcome::Json(code, v)) => json_response(code, &v),
            Ok(Outcome::Watch(initial, rx, timeout)) => watch_response(initial, rx, timeout),
            Err(e) => error_response(&e),
        })
    }

    async fn wait_out_outage(&self) -> Result<(), Unavailable> {
        let mut rx = self.inner.outage.subscribe();
        loop {
            let mode = *rx.borrow_and_update();
            match mode {
                None => return Ok(()),
                Some(Outage::Refuse) => return Err(Unavailable),
                Some(Outage::Hang) => {
                    if rx.changed().await.is_err() {
                        return Err(Unavailable);
                    }
                }
            }
        }
    }
}
