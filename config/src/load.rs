//! Reading config: files and directories → YAML documents → typed resources.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::de::{from_node, DeError};
use crate::error::{ConfigError, ConfigErrors, FieldPath, Mark};
use crate::spec::{Document, Resource, API_VERSION, KINDS};
use crate::yaml::{parse_documents_within, Budget, Node};

/// One parsed document with the tree it came from (kept to locate later errors).
///
/// Cloning is cheap (reference counts): a reload combines sets of documents without copying
/// trees, and snapshots share the resources.
#[derive(Debug, Clone)]
pub struct LoadedDoc {
    /// File (or label) it was read from.
    pub file: Arc<Path>,
    /// The YAML tree, for mapping field paths to lines.
    pub root: Arc<Node>,
    /// The typed resource.
    pub resource: Arc<Resource>,
}

/// A text to parse, with the name its errors will carry.
#[derive(Debug, Clone)]
pub struct Source {
    /// File path or label such as `<control>`.
    pub file: PathBuf,
    /// YAML text, possibly many documents.
    pub text: String,
}

/// Reads `path`: a YAML file, or every `*.yaml`/`*.yml` file directly in a directory (sorted by
/// name; names starting with `.` are skipped, which also skips Kubernetes ConfigMap internals).
pub fn read_sources(path: &Path) -> Result<Vec<Source>, ConfigErrors> {
    source_files(path)?
        .into_iter()
        .map(|file| match std::fs::read_to_string(&file) {
            Ok(text) => Ok(Source { file, text }),
            Err(e) => Err(unreadable(&file, &e)),
        })
        .collect()
}

/// The files [`read_sources`] reads for `path`, in order: `path` itself, or the YAML files
/// directly in the directory it names.
pub fn source_files(path: &Path) -> Result<Vec<PathBuf>, ConfigErrors> {
    let meta = std::fs::metadata(path).map_err(|e| unreadable(path, &e))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| unreadable(path, &e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            !name.starts_with('.')
                && (name.ends_with(".yaml") || name.ends_with(".yml"))
                && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

fn unreadable(file: &Path, e: &std::io::Error) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        file: file.to_owned(),
        mark: Mark { line: 0, column: 0 },
        path: FieldPath::root(),
        message: format!("cannot read: {e}"),
    }])
}

/// Parses every document of every source into typed resources, collecting all errors.
///
/// What aliases copy is paid from one [`Budget`] for all the sources: a directory or an apply of
/// many files expands no further than one file may.
pub fn parse_sources(sources: &[Source]) -> Result<Vec<LoadedDoc>, ConfigErrors> {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    let mut budget = Budget::default();
    for source in sources {
        let file: Arc<Path> = Arc::from(source.file.as_path());
        let parsed = match parse_documents_within(&source.text, &mut budget) {
            Ok(parsed) => parsed,
            Err(e) => {
                errors.push(ConfigError {
                    file: source.file.clone(),
                    mark: e.mark,
                    path: FieldPath::from(e.path),
                    message: e.message,
                });
                continue;
            }
        };
        for doc in parsed {
            match parse_resource(&doc.root) {
                Ok(resource) => docs.push(LoadedDoc {
                    file: file.clone(),
                    root: Arc::new(doc.root),
                    resource: Arc::new(resource),
                }),
                Err(e) => {
                    let DeError {
                        message,
                        path,
                        mark,
                    } = *e;
                    errors.push(ConfigError {
                        file: source.file.clone(),
                        mark,
                        path,
                        message,
                    })
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Reads one document as the resource its `kind` names.
fn parse_resource(root: &Node) -> Result<Resource, Box<DeError>> {
    let at = |key: &'static str| FieldPath::root().key(key);
    let Some(kind_node) = root.get("kind") else {
        return Err(refused(
            root.mark,
            FieldPath::root(),
            format!("missing `kind`; expected one of {}", KINDS.join(", ")),
        ));
    };
    match root.get("apiVersion").and_then(Node::as_str) {
        Some(API_VERSION) => {}
        Some(other) => {
            let node = root.get("apiVersion").unwrap_or(root);
            return Err(refused(
                node.mark,
                at("apiVersion"),
                format!("unsupported apiVersion `{other}`; this build reads `{API_VERSION}`"),
            ));
        }
        None => {
            return Err(refused(
                root.mark,
                at("apiVersion"),
                format!("missing `apiVersion`; write `apiVersion: {API_VERSION}`"),
            ))
        }
    }
    match kind_node.as_str() {
        Some("ProxyConfig") => from_node::<Document<_>>(root).map(Resource::ProxyConfig),
        Some("Service") => from_node::<Document<_>>(root).map(Resource::Service),
        Some("HTTPRoute") => from_node::<Document<_>>(root).map(Resource::HttpRoute),
        Some("TCPRoute") => from_node::<Document<_>>(root).map(Resource::TcpRoute),
        Some("TLSRoute") => from_node::<Document<_>>(root).map(Resource::TlsRoute),
        Some("AuthorizationPolicy") => {
            from_node::<Document<_>>(root).map(Resource::AuthorizationPolicy)
        }
        other => Err(refused(
            kind_node.mark,
            at("kind"),
            format!(
                "unknown kind `{}`; expected one of {}",
                other.unwrap_or("?"),
                KINDS.join(", ")
            ),
        )),
    }
}

fn refused(mark: Mark, path: FieldPath, message: String) -> Box<DeError> {
    Box::new(DeError {
        message,
        path,
        mark,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_that_makes_the_parser_panic_is_an_error() {
        // Found by the `yaml_load` fuzz target: libyaml-safer 0.3.0 panics on these
        // (config/src/yaml/panic_guard.rs).
        for text in [
            "[!,",
            "spec: {[{path: {type: !egularExpression, value: x}}]}\n",
            "a: ''|\n 0",
            "\"\\",
        ] {
            let source = Source {
                file: "fuzz.yaml".into(),
                text: text.to_owned(),
            };
            let errors = parse_sources(&[source]).expect_err(text);
            let shown = format!("{errors:?}");
            assert!(shown.contains("fuzz.yaml"), "{text:?}: {shown}");
        }
    }
}
