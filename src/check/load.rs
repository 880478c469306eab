//! Reading a GitOps tree (or a multi-document stream) into Kubernetes-shaped documents.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Problem, Severity, Source};

/// One YAML document that looks like a Kubernetes object.
#[derive(Debug, Clone)]
pub struct Document {
    pub source: Source,
    pub value: Value,
    /// The document's text, to point problems at the line that causes them.
    text: String,
    /// Namespace from the nearest enclosing kustomization (`namespace:`), if any.
    pub default_namespace: Option<String>,
}

impl Document {
    /// The source, pointing at the first line that mentions `needle` (else the document start).
    pub fn source_at(&self, needle: &str) -> Source {
        let line = self
            .text
            .lines()
            .position(|l| l.contains(needle))
            .map(|offset| self.source.line + offset);
        Source {
            line: line.unwrap_or(self.source.line),
            ..self.source.clone()
        }
    }
}

/// Everything read from the inputs.
#[derive(Debug, Default)]
pub struct Loaded {
    pub documents: Vec<Document>,
    pub problems: Vec<Problem>,
    pub files: usize,
}

/// An input could not be read at all (usage or I/O error: exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: no such file or directory")]
    Missing(String),
    #[error("cluster {0} is named twice in --clusters")]
    DuplicateCluster(String),
}

impl crate::core::category::Category for LoadError {
    fn category(&self) -> &'static str {
        match self {
            LoadError::Io { .. } => "io",
            LoadError::Missing(_) => "missing",
            LoadError::DuplicateCluster(_) => "usage",
        }
    }
}

const KUSTOMIZATION_FILES: &[&str] = &["kustomization.yaml", "kustomization.yml", "Kustomization"];

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

fn is_kustomization(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| KUSTOMIZATION_FILES.contains(&n))
}

/// A file (or standard input) waiting to be parsed.
struct Pending {
    name: String,
    text: Option<String>,
    path: Option<PathBuf>,
    namespace: Option<String>,
}

/// Reads every input: `-` is standard input, a directory is walked recursively (sorted, hidden
/// entries skipped), a file is read as is. Files are parsed in parallel; the result keeps the
/// input order, so reports are deterministic.
pub fn load(inputs: &[String], stdin: &mut dyn Read) -> Result<Loaded, LoadError> {
    let mut loaded = Loaded::default();
    let mut pending = Vec::new();
    for input in inputs {
        if input == "-" {
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .map_err(|source| LoadError::Io {
                    path: "<stdin>".into(),
                    source,
                })?;
            pending.push(Pending {
                name: "<stdin>".into(),
                text: Some(text),
                path: None,
                namespace: None,
            });
            continue;
        }
        let path = PathBuf::from(input);
        if path.is_dir() {
            walk(&path, None, &mut pending, &mut loaded)?;
        } else if path.is_file() {
            pending.push(Pending {
                name: path.display().to_string(),
                path: Some(path),
                text: None,
                namespace: None,
            });
        } else {
            return Err(LoadError::Missing(input.clone()));
        }
    }
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let chunk_size = pending.len().div_ceil(workers).max(1);
    let parts: Vec<Result<Loaded, LoadError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = pending
            .chunks(chunk_size)
            .map(|chunk| {
                scope.spawn(move || {
                    let mut part = Loaded::default();
                    for file in chunk {
                        parse_file(file, &mut part)?;
                    }
                    Ok(part)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a parser thread panicked"))
            .collect()
    });
    for part in parts {
        let part = part?;
        loaded.files += part.files;
        loaded.documents.extend(part.documents);
        loaded.problems.extend(part.problems);
    }
    Ok(loaded)
}

fn walk(
    dir: &Path,
    inherited_namespace: Option<String>,
    pending: &mut Vec<Pending>,
    loaded: &mut Loaded,
) -> Result<(), LoadError> {
    let io = |source| LoadError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort();
    // A kustomization's `namespace:` applies to what lies below it.
    let mut namespace = inherited_namespace;
    for entry in entries.iter().filter(|p| is_kustomization(p)) {
        if let Some(ns) = kustomization_namespace(entry, loaded) {
            namespace = Some(ns);
        }
    }
    for entry in entries {
        let hidden = entry
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if entry.is_dir() {
            walk(&entry, namespace.clone(), pending, loaded)?;
        } else if is_yaml(&entry) && !is_kustomization(&entry) {
            pending.push(Pending {
                name: entry.display().to_string(),
                path: Some(entry),
                text: None,
                namespace: namespace.clone(),
            });
        }
    }
    Ok(())
}

fn kustomization_namespace(path: &Path, loaded: &mut Loaded) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    match serde_saphyr::from_str::<Value>(&text) {
        Ok(value) => value
            .get("namespace")
            .and_then(Value::as_str)
            .map(str::to_string),
        Err(err) => {
            loaded
                .problems
                .push(yaml_problem(&path.display().to_string(), 1, 1, &err));
            None
        }
    }
}

fn parse_file(file: &Pending, loaded: &mut Loaded) -> Result<(), LoadError> {
    let bytes = match (&file.text, &file.path) {
        (Some(text), _) => text.clone().into_bytes(),
        (None, Some(path)) => fs::read(path).map_err(|source| LoadError::Io {
            path: file.name.clone(),
            source,
        })?,
        (None, None) => Vec::new(),
    };
    loaded.files += 1;
    match String::from_utf8(bytes) {
        Ok(text) => split_documents(&file.name, &text, file.namespace.clone(), loaded),
        Err(_) => loaded.problems.push(Problem {
            severity: Severity::Error,
            kind: "malformed_yaml",
            message: "the file is not UTF-8 text".into(),
            source: Some(Source {
                file: file.name.clone(),
                document: 1,
                line: 1,
            }),
            related: vec![],
        }),
    }
    Ok(())
}

fn is_document_marker(line: &str) -> bool {
    line == "---" || line.starts_with("--- ") || line.starts_with("---\t")
}

/// Splits a stream into documents at `---` lines so that one malformed document does not hide
/// the others, and so each document knows its line.
fn split_documents(file: &str, text: &str, namespace: Option<String>, loaded: &mut Loaded) {
    let mut chunks: Vec<(usize, String)> = vec![(1, String::new())];
    for (index, line) in text.lines().enumerate() {
        if is_document_marker(line) {
            chunks.push((index + 2, String::new()));
        } else if line == "..." {
            // Document end marker: what follows before the next `---` is a new document.
            chunks.push((index + 2, String::new()));
        } else {
            let chunk = &mut chunks.last_mut().expect("one chunk").1;
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    let mut document = 0;
    for (start_line, chunk) in chunks {
        let has_content = chunk.lines().any(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#') && !t.starts_with('%')
        });
        if !has_content {
            continue;
        }
        document += 1;
        // The first content line is where the object starts, for messages.
        let skip = chunk
            .lines()
            .position(|l| {
                let t = l.trim();
                !t.is_empty() && !t.starts_with('#')
            })
            .unwrap_or(0);
        let source = Source {
            file: file.to_string(),
            document,
            line: start_line + skip,
        };
        match serde_saphyr::from_str::<Value>(&chunk) {
            Ok(Value::Object(map)) => push_object(
                Value::Object(map),
                source,
                &chunk,
                start_line,
                &namespace,
                loaded,
            ),
            // Scalars, sequences and nulls are not Kubernetes objects: not ours to judge.
            Ok(_) => {}
            Err(err) => loaded
                .problems
                .push(yaml_problem(file, document, start_line, &err)),
        }
    }
}

fn push_object(
    value: Value,
    source: Source,
    chunk: &str,
    start_line: usize,
    namespace: &Option<String>,
    loaded: &mut Loaded,
) {
    let is_k8s = value.get("apiVersion").is_some_and(Value::is_string)
        && value.get("kind").is_some_and(Value::is_string);
    if !is_k8s {
        return;
    }
    // `kind: List` (kubectl output) holds objects in `items`.
    if value.get("kind").and_then(Value::as_str) == Some("List")
        && let Some(items) = value.get("items").and_then(Value::as_array)
    {
        for item in items {
            push_object(
                item.clone(),
                source.clone(),
                chunk,
                start_line,
                namespace,
                loaded,
            );
        }
        return;
    }
    loaded.documents.push(Document {
        text: chunk
            .lines()
            .skip(source.line - start_line)
            .collect::<Vec<_>>()
            .join("\n"),
        source,
        value,
        default_namespace: namespace.clone(),
    });
}

fn yaml_problem(
    file: &str,
    document: usize,
    start_line: usize,
    err: &serde_saphyr::Error,
) -> Problem {
    let location = err.location();
    let line = location
        .map(|loc| start_line + loc.line().saturating_sub(1) as usize)
        .unwrap_or(start_line);
    // The error text may carry a snippet and a position relative to the document; keep the
    // message and give the position in the file.
    let message = err.to_string();
    let mut first = message.lines().next().unwrap_or("invalid YAML").trim();
    first = first.strip_prefix("error: ").unwrap_or(first);
    if first.starts_with("line ")
        && let Some((_, rest)) = first.split_once(": ")
    {
        first = rest;
    }
    let column = location
        .map(|loc| format!(" at column {}", loc.column()))
        .unwrap_or_default();
    Problem {
        severity: Severity::Error,
        kind: "malformed_yaml",
        message: format!(
            "malformed YAML{column}: {first} (the other files and documents are still checked)"
        ),
        source: Some(Source {
            file: file.to_string(),
            document,
            line,
        }),
        related: vec![],
    }
}
