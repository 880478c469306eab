//! Patch flavours: JSON merge patch (RFC 7386), JSON patch (RFC 6902, via the json-patch
//! crate), strategic merge patch and the merge step of server-side apply.

use serde_json::{Map, Value};

/// The merge key of well-known lists of objects, by field name. The real server reads these
/// from the Go types' `patchMergeKey` tags; a name-based table covers what vipam writes.
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    let key = match field {
        "conditions" | "addresses" => "type",
        "ports" if items.iter().any(|i| i.get("containerPort").is_some()) => "containerPort",
        "ports" => "port",
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => "name",
        "volumeMounts" => "mountPath",
        "ownerReferences" => "uid",
        "taints" => "key",
        _ => return None,
    };
    // Lists whose items lack the key (or are not objects) are replaced whole.
    items.iter().all(|i| i.get(key).is_some()).then_some(key)
}

/// Lists of scalars that merge as sets (`patchStrategy: merge` on a primitive list).
fn is_set_list(field: &str) -> bool {
    field == "finalizers"
}

pub fn json_merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// Applies a strategic merge patch. `atomic_lists` makes every list replace (how custom
/// resources behave in server-side apply without list-type markers).
pub fn strategic_merge(target: &mut Value, patch: &Value, atomic_lists: bool) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = strip_directives(patch);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target_map = target.as_object_mut().expect("made an object above");
    for (key, value) in patch_map {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(remove)) =
                (target_map.get_mut(field), value)
            {
                list.retain(|item| !remove.contains(item));
            }
            continue;
        }
        if key.starts_with('$') {
            // `$setElementOrder`, `$retainKeys`: ordering/pruning hints, not modelled.
            continue;
        }
        match value {
            Value::Null => {
                target_map.remove(key);
            }
            Value::Object(inner) => {
                if inner.get("$patch").and_then(Value::as_str) == Some("delete") {
                    target_map.remove(key);
                } else {
                    strategic_merge(
                        target_map.entry(key.clone()).or_insert(Value::Null),
                        value,
                        atomic_lists,
                    );
                }
            }
            Value::Array(items) => {
                let merged = match target_map.get(key) {
                    Some(Value::Array(existing)) if !atomic_lists => {
                        merge_list(key, existing, items)
                    }
                    _ => strip_directives(value),
                };
                target_map.insert(key.clone(), merged);
            }
            scalar => {
                target_map.insert(key.clone(), scalar.clone());
            }
        }
    }
}

fn merge_list(field: &str, existing: &[Value], patch: &[Value]) -> Value {
    if is_set_list(field) {
        let mut out = existing.to_vec();
        for item in patch {
            if !out.contains(item) {
                out.push(item.clone());
            }
        }
        return Value::Array(out);
    }
    let Some(key) = merge_key(field, patch) else {
        return strip_directives(&Value::Array(patch.to_vec()));
    };
    let mut out = existing.to_vec();
    for item in patch {
        let id = &item[key];
        let pos = out.iter().position(|e| &e[key] == id);
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                out.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge(&mut out[i], item, false),
            (None, false) => out.push(strip_directives(item)),
        }
    }
    Value::Array(out)
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// The `fieldsV1` set of an applied configuration: `f:<field>` for map keys, `k:<key json>`
/// for items of keyed lists, `{}` at the leaves.
pub fn field_set(applied: &Value, field: Option<&str>, atomic_lists: bool) -> Value {
    match applied {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (format!("f:{k}"), field_set(v, Some(k), atomic_lists)))
                .collect(),
        ),
        Value::Array(items) if !atomic_lists => match field.and_then(|f| merge_key(f, items)) {
            Some(key) => Value::Object(
                items
                    .iter()
                    .map(|item| {
                        let id = serde_json::json!({ key: item[key] });
                        (format!("k:{id}"), field_set(item, None, atomic_lists))
                    })
                    .collect(),
            ),
            None => Value::Object(Map::new()),
        },
        _ => Value::Object(Map::new()),
    }
}

/// The topmost paths of `set` missing from `other`.
fn missing_paths(
    set: &Value,
    other: Option<&Value>,
    prefix: &mut Vec<String>,
    out: &mut Vec<Vec<String>>,
) {
    let Some(other) = other else {
        if !prefix.is_empty() {
            out.push(prefix.clone());
        }
        return;
    };
    for (k, child) in set.as_object().into_iter().flatten() {
        prefix.push(k.clone());
        missing_paths(child, other.get(k), prefix, out);
        prefix.pop();
    }
}

fn set_contains(set: &Value, path: &[String]) -> bool {
    path.iter().try_fold(set, |cur, seg| cur.get(seg)).is_some()
}

/// Removes from `obj` the fields a manager applied before (`previous`) but not now
/// (`current`), unless another manager's set (`others`) still holds them: how apply deletes.
pub fn remove_dropped_fields(
    obj: &mut Value,
    previous: &Value,
    current: &Value,
    others: &[&Value],
) {
    let mut dropped = Vec::new();
    missing_paths(previous, Some(current), &mut Vec::new(), &mut dropped);
    for path in dropped {
        if others.iter().any(|o| set_contains(o, &path)) {
            continue;
        }
        remove_path(obj, &path);
    }
}

fn remove_path(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for seg in parents {
        let next = if let Some(field) = seg.strip_prefix("f:") {
            cur.get_mut(field)
        } else if let Some(key) = seg.strip_prefix("k:") {
            let Ok(Value::Object(id)) = serde_json::from_str::<Value>(key) else {
                return;
            };
            cur.as_array_mut().and_then(|items| {
                items
                    .iter_mut()
                    .find(|i| id.iter().all(|(k, v)| i.get(k) == Some(v)))
            })
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(field) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(field);
        }
    } else if let Some(key) = last.strip_prefix("k:")
        && let Ok(Value::Object(id)) = serde_json::from_str::<Value>(key)
        && let Some(items) = cur.as_array_mut()
    {
        items.retain(|i| !id.iter().all(|(k, v)| i.get(k) == Some(v)));
    }
}
