//! Resource names: well-formed, and unique per kind and namespace.

use std::collections::HashMap;

use super::Errors;
use crate::error::FieldPath;
use crate::load::LoadedDoc;

/// Whether `name` is a DNS-1123 subdomain: lowercase alphanumerics, `-` and `.`, at most 253
/// characters, starting and ending alphanumeric.
pub(crate) fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

/// Checks names and reports duplicates at the second occurrence.
pub(crate) fn check_unique(docs: &[LoadedDoc], errors: &mut Errors) {
    let mut seen: HashMap<(&str, &str, &str), &LoadedDoc> = HashMap::new();
    for doc in docs {
        let meta = doc.resource.metadata();
        let at = FieldPath::root().key("metadata");
        if !is_dns_name(&meta.name) {
            errors.at(
                doc,
                &at.key("name"),
                format!(
                    "`{}` is not a valid name: use lowercase letters, digits, `-` and `.`",
                    meta.name
                ),
            );
        }
        if !is_dns_name(&meta.namespace) {
            errors.at(
                doc,
                &at.key("namespace"),
                format!("`{}` is not a valid namespace", meta.namespace),
            );
        }
        let key = (
            doc.resource.kind(),
            meta.namespace.as_str(),
            meta.name.as_str(),
        );
        if let Some(first) = seen.insert(key, doc) {
            let line = first.root.locate(at.key("name").segments()).mark.line;
            errors.at(
                doc,
                &at.key("name"),
                format!(
                    "{} `{}/{}` is defined twice (first in {} line {line})",
                    key.0,
                    key.1,
                    key.2,
                    first.file.display()
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_dns_name;

    #[test]
    fn dns_names() {
        assert!(is_dns_name("reviews-v1"));
        assert!(is_dns_name("a.b"));
        assert!(!is_dns_name("Reviews"));
        assert!(!is_dns_name("-x"));
        assert!(!is_dns_name(""));
        assert!(!is_dns_name("a_b"));
    }
}
