//! The stored state and every API operation on it. Each operation runs under one lock, so
//! name uniqueness and resourceVersion checks are atomic, as etcd makes them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::faults::{Fault, RequestRecord};
use super::patch;
use super::resources::{self, ResourceType};
use super::selector::{
    FieldSelector, LabelSelector, is_dns_subdomain, is_label_value, is_qualified_key,
};
use super::status::ApiError;

type TypeKey = (String, String);
type ObjKey = (String, String);

fn type_key(rt: &ResourceType) -> TypeKey {
    (rt.group.clone(), rt.plural.clone())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

struct HistEvent {
    rv: u64,
    key: TypeKey,
    namespace: String,
    kind: EventType,
    /// Shared with every watcher that is sent the event (no copy per watcher).
    object: Arc<Value>,
    prev: Option<Value>,
}

/// One line of a watch response: an event whose object is shared with the history, or any
/// other JSON (bookmarks, errors). Serialised only when the stream sends it.
#[derive(Debug, Clone)]
pub(crate) enum WatchLine {
    Event {
        kind: &'static str,
        object: Arc<Value>,
    },
    Raw(Value),
}

impl serde::Serialize for WatchLine {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            WatchLine::Event { kind, object } => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("type", kind)?;
                map.serialize_entry("object", &**object)?;
                map.end()
            }
            WatchLine::Raw(value) => value.serialize(serializer),
        }
    }
}

/// What a watch stream receives; one line of the watch response each.
pub(crate) type WatchRx = mpsc::UnboundedReceiver<WatchLine>;

struct Watcher {
    key: TypeKey,
    rt: ResourceType,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    bookmarks: bool,
    metadata_only: bool,
    tx: mpsc::UnboundedSender<WatchLine>,
}

impl Watcher {
    fn passes(&self, obj: &Value) -> bool {
        self.labels.matches_object(obj) && self.fields.matches_object(obj)
    }

    fn wrap(&self, kind: &'static str, obj: Arc<Value>) -> WatchLine {
        let object = if self.metadata_only {
            Arc::new(partial_metadata(&obj))
        } else {
            obj
        };
        WatchLine::Event { kind, object }
    }

    /// The event this watcher sees for a change, following the watch cache: an object that
    /// enters the selector is ADDED, one that leaves it is DELETED.
    fn event_for(&self, ev: &HistEvent) -> Option<WatchLine> {
        if ev.key != self.key
            || self
                .namespace
                .as_ref()
                .is_some_and(|ns| *ns != ev.namespace)
        {
            return None;
        }
        let now = self.passes(&ev.object);
        match ev.kind {
            EventType::Added | EventType::Deleted => {
                now.then(|| self.wrap(ev.kind.as_str(), ev.object.clone()))
            }
            EventType::Modified => {
                let before = ev.prev.as_ref().is_some_and(|p| self.passes(p));
                match (before, now) {
                    (_, true) if !before => Some(self.wrap("ADDED", ev.object.clone())),
                    (true, true) => Some(self.wrap("MODIFIED", ev.object.clone())),
                    (true, false) => {
                        let mut last = ev.prev.clone().unwrap_or(Value::Null);
                        set_meta(&mut last, "resourceVersion", json!(ev.rv.to_string()));
                        Some(self.wrap("DELETED", Arc::new(last)))
                    }
                    _ => None,
                }
            }
        }
    }
}

pub(crate) fn partial_metadata(obj: &Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    meta(obj)
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

fn set_meta(obj: &mut Value, field: &str, value: Value) {
    meta_mut(obj).insert(field.to_string(), value);
}

fn finalizers(obj: &Value) -> Vec<Value> {
    meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

pub(crate) fn now() -> String {
    let t = jiff::Timestamp::now();
    jiff::Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

/// What must change for `generation` to move: everything but metadata (and status when it
/// is a subresource).
fn generation_part(rt: &ResourceType, obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        for k in ["metadata", "apiVersion", "kind"] {
            m.remove(k);
        }
        if rt.status_subresource {
            m.remove("status");
        }
    }
    v
}

/// An object without the fields every write changes, to spot writes that change nothing.
fn without_volatile(obj: &Value) -> Value {
    let mut v = obj.clone();
    let m = meta_mut(&mut v);
    m.remove("resourceVersion");
    m.remove("managedFields");
    v
}

/// Options shared by writes.
#[derive(Clone, Debug, Default)]
pub struct WriteOpts {
    pub dry_run: bool,
    pub field_manager: Option<String>,
    pub force: bool,
}

#[derive(Clone, Debug, Default)]
pub struct DeleteOpts {
    pub dry_run: bool,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

pub(crate) struct ListQuery {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
}

pub(crate) struct WatchQuery {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub metadata_only: bool,
}

pub(crate) struct State {
    pub rv: u64,
    counter: u64,
    pub types: Vec<ResourceType>,
    objects: HashMap<TypeKey, BTreeMap<ObjKey, Value>>,
    history: VecDeque<HistEvent>,
    pub history_limit: usize,
    /// Highest resourceVersion dropped from the history: watches from before it get 410.
    compacted_rv: u64,
    watchers: Vec<Watcher>,
    pub faults: Vec<Fault>,
    pub requests: Vec<RequestRecord>,
}

impl State {
    pub fn new(history_limit: usize) -> Self {
        State {
            rv: 0,
            counter: 0,
            types: resources::builtin(),
            objects: HashMap::new(),
            history: VecDeque::new(),
            history_limit,
            compacted_rv: 0,
            watchers: Vec::new(),
            faults: Vec::new(),
            requests: Vec::new(),
        }
    }

    /// A resource by `plural` or `plural.group`; a bare plural prefers the core group.
    pub fn lookup(&self, name: &str) -> Option<ResourceType> {
        let mut found: Vec<&ResourceType> =
            self.types.iter().filter(|t| t.is_named(name)).collect();
        found.sort_by_key(|t| !t.group.is_empty());
        found.first().map(|t| (*t).clone())
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    fn find_kind(&self, api_version: &str, kind: &str) -> Option<ResourceType> {
        self.types
            .iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
            .cloned()
    }

    pub fn register(&mut self, rt: ResourceType) {
        self.types
            .retain(|t| !(t.group == rt.group && t.plural == rt.plural));
        self.types.push(rt);
    }

    fn next(&mut self) -> u64 {
        self.counter += 1;
        // splitmix64: unique, random-looking, deterministic ids and name suffixes.
        let mut z = self.counter.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn new_uid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            b >> 52,
            b & 0xffff_ffff_ffff
        )
    }

    fn objects_of(&self, rt: &ResourceType) -> Option<&BTreeMap<ObjKey, Value>> {
        self.objects.get(&type_key(rt))
    }

    pub fn get_object(&self, rt: &ResourceType, ns: &str, name: &str) -> Option<&Value> {
        self.objects_of(rt)?
            .get(&(ns.to_string(), name.to_string()))
    }

    pub fn all_objects(&self, rt: &ResourceType, ns: Option<&str>) -> Vec<Value> {
        self.objects_of(rt)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|((n, _), _)| ns.is_none_or(|want| want == n))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Stores a change with the next resourceVersion and tells the watches.
    fn commit(
        &mut self,
        rt: &ResourceType,
        kind: EventType,
        mut obj: Value,
        prev: Option<Value>,
    ) -> Value {
        self.rv += 1;
        set_meta(&mut obj, "resourceVersion", json!(self.rv.to_string()));
        let key = (
            meta_str(&obj, "namespace").to_string(),
            meta_str(&obj, "name").to_string(),
        );
        let store = self.objects.entry(type_key(rt)).or_default();
        match kind {
            EventType::Deleted => {
                store.remove(&key);
            }
            _ => {
                store.insert(key.clone(), obj.clone());
            }
        }
        let ev = HistEvent {
            rv: self.rv,
            key: type_key(rt),
            namespace: key.0,
            kind,
            object: Arc::new(obj.clone()),
            prev,
        };
        // A watcher whose stream was dropped fails to send and is forgotten.
        self.watchers.retain(|w| match w.event_for(&ev) {
            Some(line) => w.tx.send(line).is_ok(),
            None => !w.tx.is_closed(),
        });
        self.history.push_back(ev);
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted_rv = old.rv;
            }
        }
        obj
    }

    pub fn set_history_limit(&mut self, limit: usize) {
        self.history_limit = limit;
        while self.history.len() > limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted_rv = old.rv;
            }
        }
    }

    pub fn watch_count(&self, rt: Option<&ResourceType>) -> usize {
        self.watchers
            .iter()
            .filter(|w| !w.tx.is_closed() && rt.is_none_or(|rt| w.key == type_key(rt)))
            .count()
    }

    pub fn end_watches(&mut self) {
        self.watchers.clear();
    }

    pub fn bookmark_all(&mut self) {
        let rv = self.rv.to_string();
        self.watchers.retain(|w| {
            if !w.bookmarks {
                return !w.tx.is_closed();
            }
            w.tx.send(WatchLine::Raw(bookmark(&w.rt, &rv, false)))
                .is_ok()
        });
    }

    // ---- validation shared by writes ----

    fn check_type_meta(&self, rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
        let Some(m) = obj.as_object_mut() else {
            return Err(ApiError::bad_request(
                "the body of the request is not a JSON object",
            ));
        };
        let want_av = rt.api_version();
        match m.get("apiVersion").and_then(Value::as_str) {
            None | Some("") => {
                m.insert("apiVersion".into(), json!(want_av));
            }
            Some(av) if av != want_av => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({av}) does not match the expected API version ({want_av})"
                )));
            }
            _ => {}
        }
        match m.get("kind").and_then(Value::as_str) {
            None | Some("") => {
                m.insert("kind".into(), json!(rt.kind));
            }
            Some(k) if k != rt.kind => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    rt.kind
                )));
            }
            _ => {}
        }
        if !m.get("metadata").is_none_or(Value::is_object) {
            return Err(ApiError::bad_request("metadata must be an object"));
        }
        Ok(())
    }

    /// Body namespace against the URL's; fills it in when absent.
    fn check_namespace(
        rt: &ResourceType,
        obj: &mut Value,
        url_ns: Option<&str>,
    ) -> Result<(), ApiError> {
        if !rt.namespaced {
            // The server drops a namespace given to a cluster-scoped object.
            meta_mut(obj).remove("namespace");
            return Ok(());
        }
        let url_ns = url_ns.unwrap_or_default();
        match meta_str(obj, "namespace") {
            "" => set_meta(obj, "namespace", json!(url_ns)),
            ns if ns != url_ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    fn validate_meta(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
        let name = meta_str(obj, "name");
        if !is_dns_subdomain(name) {
            return Err(ApiError::invalid(
                rt,
                name,
                "metadata.name",
                &format!(
                    "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                ),
            ));
        }
        let m = meta(obj).expect("checked object");
        for field in ["labels", "annotations"] {
            let Some(map) = m.get(field) else { continue };
            let Some(map) = map.as_object() else {
                return Err(ApiError::invalid(
                    rt,
                    name,
                    &format!("metadata.{field}"),
                    "must be a map of strings",
                ));
            };
            for (k, v) in map {
                let value_ok = match v.as_str() {
                    Some(s) => field == "annotations" || is_label_value(s),
                    None => false,
                };
                if !is_qualified_key(k) || !value_ok {
                    return Err(ApiError::invalid(
                        rt,
                        name,
                        &format!("metadata.{field}"),
                        &format!("Invalid value: {k:?}: {v}: not a valid key or value"),
                    ));
                }
            }
        }
        if !m
            .get("finalizers")
            .is_none_or(|f| f.as_array().is_some_and(|a| a.iter().all(Value::is_string)))
        {
            return Err(ApiError::invalid(
                rt,
                name,
                "metadata.finalizers",
                "must be a list of strings",
            ));
        }
        Ok(())
    }

    // ---- operations ----

    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.get_object(rt, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    pub fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        q: &ListQuery,
    ) -> Result<Value, ApiError> {
        if q.resource_version_match.as_deref() == Some("Exact") {
            let wanted = q.resource_version.as_deref().unwrap_or_default();
            if wanted != self.rv.to_string() {
                // Only the latest state is kept; older snapshots are reported as compacted.
                return Err(ApiError::gone(format!(
                    "too old resource version: {wanted} ({})",
                    self.rv
                )));
            }
        }
        let after = match &q.continue_token {
            Some(token) => Some(decode_continue(token).ok_or_else(|| {
                ApiError::bad_request(format!("invalid continue token {token:?}"))
            })?),
            None => None,
        };
        let matching: Vec<(ObjKey, &Value)> = self
            .objects_of(rt)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|((n, _), _)| ns.is_none_or(|want| want == n))
            .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a))
            .filter(|(_, v)| q.labels.matches_object(v) && q.fields.matches_object(v))
            .map(|(k, v)| (k.clone(), v))
            .collect();
        let limit = q.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let page: Vec<Value> = matching
            .iter()
            .take(limit)
            .map(|(_, v)| (*v).clone())
            .collect();
        let mut list_meta = json!({"resourceVersion": self.rv.to_string()});
        if matching.len() > page.len() {
            let last = &matching[page.len() - 1].0;
            list_meta["continue"] = json!(encode_continue(last));
            list_meta["remainingItemCount"] = json!(matching.len() - page.len());
        }
        Ok(json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": list_meta,
            "items": page,
        }))
    }

    pub fn create(
        &mut self,
        rt: &ResourceType,
        url_ns: Option<&str>,
        mut obj: Value,
        opts: &WriteOpts,
        applied_fields: Option<Value>,
    ) -> Result<Value, ApiError> {
        self.check_type_meta(rt, &mut obj)?;
        if !meta_str(&obj, "resourceVersion").is_empty() {
            // What the real server answers (a 500, not a 4xx).
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        if meta_str(&obj, "name").is_empty() {
            let prefix = meta_str(&obj, "generateName").to_string();
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    rt,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required",
                ));
            }
            let name = loop {
                let name = format!("{prefix}{}", self.name_suffix());
                let ns = url_ns.unwrap_or_default();
                if self
                    .get_object(rt, if rt.namespaced { ns } else { "" }, &name)
                    .is_none()
                {
                    break name;
                }
            };
            set_meta(&mut obj, "name", json!(name));
        }
        Self::check_namespace(rt, &mut obj, url_ns)?;
        {
            let m = meta_mut(&mut obj);
            for server_field in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "selfLink",
            ] {
                m.remove(server_field);
            }
        }
        let uid = self.new_uid();
        set_meta(&mut obj, "uid", json!(uid));
        set_meta(&mut obj, "creationTimestamp", json!(now()));
        set_meta(&mut obj, "generation", json!(1));
        if rt.status_subresource {
            let m = obj.as_object_mut().expect("object");
            m.remove("status");
            if rt.group.is_empty() && rt.plural == "namespaces" {
                m.insert("status".into(), json!({"phase": "Active"}));
            }
        }
        Self::validate_meta(rt, &obj)?;
        let (ns, name) = (
            meta_str(&obj, "namespace").to_string(),
            meta_str(&obj, "name").to_string(),
        );
        if self.get_object(rt, &ns, &name).is_some() {
            return Err(ApiError::already_exists(rt, &name));
        }
        if let Some(manager) = &opts.field_manager {
            let (operation, fields) = match applied_fields {
                Some(f) => ("Apply", f),
                None => ("Update", patch::field_set(&obj, None, rt.custom)),
            };
            upsert_managed(&mut obj, rt, manager, operation, None, fields);
        }
        if opts.dry_run {
            return Ok(obj);
        }
        Ok(self.commit(rt, EventType::Added, obj, None))
    }

    fn name_suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut n = self.next();
        (0..5)
            .map(|_| {
                let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
                n /= ALPHABET.len() as u64;
                c
            })
            .collect()
    }

    /// PUT on the object or its status.
    pub fn update(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        status: bool,
        mut body: Value,
        opts: &WriteOpts,
    ) -> Result<Value, ApiError> {
        self.check_type_meta(rt, &mut body)?;
        match meta_str(&body, "name") {
            "" => set_meta(&mut body, "name", json!(name)),
            n if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => {}
        }
        Self::check_namespace(rt, &mut body, Some(ns))?;
        let old = self.get(rt, ns, name)?;
        let body_rv = meta_str(&body, "resourceVersion");
        if !body_rv.is_empty() && body_rv != meta_str(&old, "resourceVersion") {
            return Err(ApiError::stale(rt, name));
        }
        if meta(&body).is_some_and(|m| !m.contains_key("managedFields"))
            && let Some(mf) = meta(&old).and_then(|m| m.get("managedFields")).cloned()
        {
            set_meta(&mut body, "managedFields", mf);
        }
        if let Some(manager) = &opts.field_manager {
            upsert_managed(
                &mut body,
                rt,
                manager,
                "Update",
                status.then_some("status"),
                json!({}),
            );
        }
        let new = assemble(rt, &old, body, status);
        self.finish_update(rt, &old, new, opts, !status)
    }

    pub fn patch(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        status: bool,
        (kind, body): (PatchType, &[u8]),
        opts: &WriteOpts,
    ) -> Result<(u16, Value), ApiError> {
        if kind == PatchType::Apply {
            return self.apply(rt, ns, name, status, body, opts);
        }
        if kind == PatchType::Strategic && rt.custom {
            return Err(ApiError::unsupported_media_type(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            ));
        }
        let old = self.get(rt, ns, name)?;
        let mut patched = old.clone();
        match kind {
            PatchType::Json => {
                let ops: json_patch::Patch = serde_json::from_slice(body)
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
                json_patch::patch(&mut patched, &ops.0).map_err(|e| {
                    ApiError::invalid(
                        rt,
                        name,
                        "",
                        &format!("the JSON patch could not be applied: {e}"),
                    )
                })?;
            }
            PatchType::Merge | PatchType::Strategic => {
                let p: Value = serde_json::from_slice(body)
                    .map_err(|e| ApiError::bad_request(format!("invalid patch body: {e}")))?;
                if !p.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                if kind == PatchType::Merge {
                    patch::json_merge_patch(&mut patched, &p);
                } else {
                    patch::strategic_merge(&mut patched, &p, false);
                }
            }
            PatchType::Apply => unreachable!("handled above"),
        }
        if !patched.is_object() || !patched.get("metadata").is_none_or(Value::is_object) {
            return Err(ApiError::bad_request("the patch made the object malformed"));
        }
        self.check_type_meta(rt, &mut patched)?;
        if meta_str(&patched, "name") != name
            || meta_str(&patched, "namespace") != meta_str(&old, "namespace")
        {
            return Err(ApiError::invalid(
                rt,
                name,
                "metadata.name",
                "field is immutable",
            ));
        }
        match meta_str(&patched, "resourceVersion") {
            "" => set_meta(
                &mut patched,
                "resourceVersion",
                json!(meta_str(&old, "resourceVersion")),
            ),
            rv if rv != meta_str(&old, "resourceVersion") => return Err(ApiError::stale(rt, name)),
            _ => {}
        }
        if let Some(manager) = &opts.field_manager {
            let fields = serde_json::from_slice::<Value>(body)
                .ok()
                .filter(Value::is_object)
                .map(|p| patch::field_set(&p, None, true))
                .unwrap_or_else(|| json!({}));
            upsert_managed(
                &mut patched,
                rt,
                manager,
                "Update",
                status.then_some("status"),
                fields,
            );
        }
        let new = assemble(rt, &old, patched, status);
        Ok((200, self.finish_update(rt, &old, new, opts, !status)?))
    }

    /// Server-side apply: create when absent, else merge the applied fields and drop the
    /// ones this manager applied before and no longer does. Ownership conflicts between
    /// managers are not detected.
    fn apply(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        status: bool,
        body: &[u8],
        opts: &WriteOpts,
    ) -> Result<(u16, Value), ApiError> {
        let Some(manager) = opts.field_manager.clone() else {
            return Err(ApiError::invalid(
                rt,
                name,
                "fieldManager",
                "Required value: is required for apply requests",
            ));
        };
        let mut applied: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => {
                let text = std::str::from_utf8(body)
                    .map_err(|_| ApiError::bad_request("apply body is not UTF-8"))?;
                serde_saphyr::from_str(text)
                    .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
            }
        };
        if !applied.is_object() {
            return Err(ApiError::bad_request(
                "an apply configuration must be an object",
            ));
        }
        for field in ["apiVersion", "kind"] {
            if applied
                .get(field)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(ApiError::bad_request(format!(
                    "{field} must be set in an apply configuration"
                )));
            }
        }
        self.check_type_meta(rt, &mut applied)?;
        match meta_str(&applied, "name") {
            "" => set_meta(&mut applied, "name", json!(name)),
            n if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => {}
        }
        Self::check_namespace(rt, &mut applied, Some(ns))?;
        let atomic = rt.custom;
        // The fields this configuration sets, relative to the object root.
        let mut owned = applied.clone();
        if let Some(m) = owned.as_object_mut() {
            m.remove("apiVersion");
            m.remove("kind");
            if status {
                m.retain(|k, _| k == "status");
            } else if rt.status_subresource {
                m.remove("status");
            }
        }
        if let Some(m) = owned.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "name",
                "namespace",
                "resourceVersion",
                "managedFields",
                "uid",
            ] {
                m.remove(k);
            }
            if m.is_empty() {
                owned.as_object_mut().expect("object").remove("metadata");
            }
        }
        let fields = patch::field_set(&owned, None, atomic);
        let Some(old) = self.get_object(rt, ns, name).cloned() else {
            if status {
                return Err(ApiError::not_found(rt, name));
            }
            let created = self.create(rt, Some(ns), applied, opts, Some(fields))?;
            return Ok((201, created));
        };
        let applied_rv = meta_str(&applied, "resourceVersion");
        if !applied_rv.is_empty() && applied_rv != meta_str(&old, "resourceVersion") {
            return Err(ApiError::stale(rt, name));
        }
        let subresource = status.then_some("status");
        let entries = managed_entries(&old);
        let previous = entries
            .iter()
            .find(|e| is_entry(e, &manager, "Apply", subresource))
            .and_then(|e| e.get("fieldsV1").cloned())
            .unwrap_or_else(|| json!({}));
        let others: Vec<&Value> = entries
            .iter()
            .filter(|e| !is_entry(e, &manager, "Apply", subresource))
            .filter_map(|e| e.get("fieldsV1"))
            .collect();
        let mut merged = old.clone();
        patch::strategic_merge(&mut merged, &owned, atomic);
        patch::remove_dropped_fields(&mut merged, &previous, &fields, &others);
        upsert_managed(&mut merged, rt, &manager, "Apply", subresource, fields);
        let new = assemble(rt, &old, merged, status);
        Ok((200, self.finish_update(rt, &old, new, opts, !status)?))
    }

    /// The common end of every update: server-owned metadata kept, finalizer rules,
    /// generation, no-op detection, then storage (or not, for dry runs).
    fn finish_update(
        &mut self,
        rt: &ResourceType,
        old: &Value,
        mut new: Value,
        opts: &WriteOpts,
        main: bool,
    ) -> Result<Value, ApiError> {
        let name = meta_str(old, "name").to_string();
        let old_meta = meta(old).cloned().unwrap_or_default();
        {
            let m = meta_mut(&mut new);
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
            ] {
                match old_meta.get(k) {
                    Some(v) => m.insert(k.to_string(), v.clone()),
                    None => m.remove(k),
                };
            }
        }
        let deleting = meta(old).is_some_and(|m| m.contains_key("deletionTimestamp"));
        if main && deleting {
            let before = finalizers(old);
            let added: Vec<String> = finalizers(&new)
                .iter()
                .filter(|f| !before.contains(f))
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect();
            if !added.is_empty() {
                return Err(ApiError::invalid(
                    rt,
                    &name,
                    "metadata.finalizers",
                    &format!(
                        "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
                    ),
                ));
            }
        }
        Self::validate_meta(rt, &new)?;
        if without_volatile(&new) == without_volatile(old) {
            // The server does not bump resourceVersion for a write that changes nothing.
            return Ok(old.clone());
        }
        if generation_part(rt, &new) != generation_part(rt, old) {
            let g = old_meta
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            set_meta(&mut new, "generation", json!(g + 1));
        }
        if opts.dry_run {
            return Ok(new);
        }
        if deleting && finalizers(&new).is_empty() {
            return Ok(self.commit(rt, EventType::Deleted, new, Some(old.clone())));
        }
        Ok(self.commit(rt, EventType::Modified, new, Some(old.clone())))
    }

    pub fn delete(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<Value, ApiError> {
        let old = self.get(rt, ns, name)?;
        if let Some(uid) = &opts.uid
            && uid != meta_str(&old, "uid")
        {
            return Err(ApiError::conflict(
                rt,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&old, "uid")
                ),
            ));
        }
        if let Some(rv) = &opts.resource_version
            && rv != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict(
                rt,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta_str(&old, "resourceVersion")
                ),
            ));
        }
        if finalizers(&old).is_empty() {
            if opts.dry_run {
                return Ok(old);
            }
            return Ok(self.commit(rt, EventType::Deleted, old.clone(), Some(old)));
        }
        if meta(&old).is_some_and(|m| m.contains_key("deletionTimestamp")) {
            return Ok(old);
        }
        // Finalizers pending: mark for deletion; the last finalizer removal deletes.
        let mut new = old.clone();
        set_meta(&mut new, "deletionTimestamp", json!(now()));
        set_meta(&mut new, "deletionGracePeriodSeconds", json!(0));
        let g = meta(&old)
            .and_then(|m| m.get("generation"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        set_meta(&mut new, "generation", json!(g + 1));
        if opts.dry_run {
            return Ok(new);
        }
        Ok(self.commit(rt, EventType::Modified, new, Some(old)))
    }

    pub fn delete_collection(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        q: &ListQuery,
        opts: &DeleteOpts,
    ) -> Result<Value, ApiError> {
        let targets: Vec<(String, String)> = self
            .objects_of(rt)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|((n, _), v)| {
                ns.is_none_or(|want| want == n)
                    && q.labels.matches_object(v)
                    && q.fields.matches_object(v)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut items = Vec::new();
        for (n, name) in targets {
            items.push(self.delete(rt, &n, &name, opts)?);
        }
        Ok(json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": {"resourceVersion": self.rv.to_string()},
            "items": items,
        }))
    }

    /// Opens a watch: the lines to send first, and the live feed (None when the watch ends
    /// right after them, as with 410 Gone).
    pub fn watch(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        q: WatchQuery,
    ) -> Result<(Vec<WatchLine>, Option<WatchRx>), ApiError> {
        let start =
            match q.resource_version.as_deref() {
                None | Some("") | Some("0") => None,
                Some(s) => Some(s.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version {s:?}"))
                })?),
            };
        if q.send_initial_events
            && (!q.bookmarks || q.resource_version_match.as_deref() != Some("NotOlderThan"))
        {
            return Err(ApiError::invalid(
                rt,
                "",
                "sendInitialEvents",
                "Forbidden: sendInitialEvents requires allowWatchBookmarks=true and resourceVersionMatch=NotOlderThan",
            ));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let watcher = Watcher {
            key: type_key(rt),
            rt: rt.clone(),
            namespace: ns.map(str::to_string),
            labels: q.labels,
            fields: q.fields,
            bookmarks: q.bookmarks,
            metadata_only: q.metadata_only,
            tx,
        };
        let mut initial = Vec::new();
        match start {
            Some(from) if !q.send_initial_events => {
                if from < self.compacted_rv {
                    let gone = ApiError::gone(format!(
                        "too old resource version: {from} ({})",
                        self.compacted_rv + 1
                    ));
                    return Ok((
                        vec![WatchLine::Raw(
                            json!({"type": "ERROR", "object": gone.to_status()}),
                        )],
                        None,
                    ));
                }
                initial.extend(
                    self.history
                        .iter()
                        .filter(|e| e.rv > from)
                        .filter_map(|e| watcher.event_for(e)),
                );
            }
            _ => {
                for obj in self.all_objects(rt, ns) {
                    if watcher.passes(&obj) {
                        initial.push(watcher.wrap("ADDED", Arc::new(obj)));
                    }
                }
                if q.send_initial_events {
                    initial.push(WatchLine::Raw(bookmark(rt, &self.rv.to_string(), true)));
                }
            }
        }
        self.watchers.push(watcher);
        Ok((initial, Some(rx)))
    }

    /// Stores an object as given (status, finalizers and deletionTimestamp included),
    /// creating or replacing it. For tests setting up the world.
    pub fn seed(&mut self, mut obj: Value) -> Result<Value, ApiError> {
        let av = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let kind = obj
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let rt = self.find_kind(&av, &kind).ok_or_else(|| {
            ApiError::bad_request(format!(
                "the fake serves no resource of apiVersion {av:?} kind {kind:?}"
            ))
        })?;
        if !obj.get("metadata").is_none_or(Value::is_object) {
            return Err(ApiError::bad_request("metadata must be an object"));
        }
        if rt.namespaced && meta_str(&obj, "namespace").is_empty() {
            set_meta(&mut obj, "namespace", json!("default"));
        }
        let ns = meta_str(&obj, "namespace").to_string();
        Self::check_namespace(&rt, &mut obj, Some(&ns))?;
        Self::validate_meta(&rt, &obj)?;
        let name = meta_str(&obj, "name").to_string();
        meta_mut(&mut obj).remove("resourceVersion");
        match self.get_object(&rt, &ns, &name).cloned() {
            Some(old) => {
                for k in ["uid", "creationTimestamp"] {
                    if let Some(v) = meta(&old).and_then(|m| m.get(k)).cloned() {
                        meta_mut(&mut obj).entry(k).or_insert(v);
                    }
                }
                let g = meta(&old)
                    .and_then(|m| m.get("generation"))
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                let bump = i64::from(generation_part(&rt, &obj) != generation_part(&rt, &old));
                meta_mut(&mut obj)
                    .entry("generation")
                    .or_insert(json!(g + bump));
                Ok(self.commit(&rt, EventType::Modified, obj, Some(old)))
            }
            None => {
                let uid = self.new_uid();
                let m = meta_mut(&mut obj);
                m.entry("uid").or_insert(json!(uid));
                m.entry("creationTimestamp").or_insert(json!(now()));
                m.entry("generation").or_insert(json!(1));
                Ok(self.commit(&rt, EventType::Added, obj, None))
            }
        }
    }
}

fn bookmark(rt: &ResourceType, rv: &str, initial_end: bool) -> Value {
    let mut metadata = json!({"resourceVersion": rv});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({
        "type": "BOOKMARK",
        "object": {"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": metadata},
    })
}

/// The object a write produces: a status write changes only status (and the managed-field
/// record); a main write keeps the stored status when status is a subresource.
fn assemble(rt: &ResourceType, old: &Value, candidate: Value, status: bool) -> Value {
    if status {
        let mut new = old.clone();
        let m = new.as_object_mut().expect("stored objects are objects");
        match candidate.get("status") {
            Some(s) => m.insert("status".into(), s.clone()),
            None => m.remove("status"),
        };
        if let Some(mf) = meta(&candidate)
            .and_then(|m| m.get("managedFields"))
            .cloned()
        {
            set_meta(&mut new, "managedFields", mf);
        }
        return new;
    }
    let mut new = candidate;
    if rt.status_subresource {
        let m = new.as_object_mut().expect("checked object");
        match old.get("status") {
            Some(s) => m.insert("status".into(), s.clone()),
            None => m.remove("status"),
        };
    }
    new
}

fn managed_entries(obj: &Value) -> Vec<Value> {
    meta(obj)
        .and_then(|m| m.get("managedFields"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn is_entry(e: &Value, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
    e.get("manager").and_then(Value::as_str) == Some(manager)
        && e.get("operation").and_then(Value::as_str) == Some(operation)
        && e.get("subresource").and_then(Value::as_str) == subresource
}

/// Records `manager` in `metadata.managedFields`, replacing its previous entry.
fn upsert_managed(
    obj: &mut Value,
    rt: &ResourceType,
    manager: &str,
    operation: &str,
    subresource: Option<&str>,
    fields: Value,
) {
    let mut entries = managed_entries(obj);
    entries.retain(|e| !is_entry(e, manager, operation, subresource));
    let mut entry = json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": rt.api_version(),
        "time": now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    });
    if let Some(sub) = subresource {
        entry["subresource"] = json!(sub);
    }
    entries.push(entry);
    set_meta(obj, "managedFields", Value::Array(entries));
}

fn encode_continue((ns, name): &ObjKey) -> String {
    format!("{ns}/{name}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_continue(token: &str) -> Option<ObjKey> {
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    let text = String::from_utf8(bytes?).ok()?;
    let (ns, name) = text.split_once('/')?;
    Some((ns.to_string(), name.to_string()))
}
