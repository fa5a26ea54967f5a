//! Which TLSRoute serves a connection, by the server name (SNI) of its ClientHello. Pure:
//! knows nothing of sockets or TLS records.
//!
//! # Precedence
//! An exact hostname beats every wildcard; among wildcards the longest suffix wins
//! (`*.eu.example.com` before `*.example.com`). A wildcard needs at least one label before its
//! suffix (`*.example.com` matches `a.example.com` and `a.b.example.com`, not `example.com`).
//! When two routes on one listener claim the same hostname, the first by namespace/name
//! serves it (as Gateway API resolves conflicts between routes).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use crate::snapshot::TlsRoute;

/// The TLSRoutes of one listener, indexed by hostname.
#[derive(Debug, Default)]
pub struct SniTable {
    exact: HashMap<Box<str>, Arc<TlsRoute>>,
    /// `(".example.com", route)`, longest suffix first.
    wildcard: Vec<(Box<str>, Arc<TlsRoute>)>,
}

impl SniTable {
    /// Builds the table from `(lowercase hostnames, route)` in precedence order (namespace,
    /// name): the first route naming a hostname keeps it.
    pub fn new<'a>(routes: impl IntoIterator<Item = (&'a [String], Arc<TlsRoute>)>) -> Self {
        let mut exact: HashMap<Box<str>, Arc<TlsRoute>> = HashMap::new();
        let mut wildcard: Vec<(Box<str>, Arc<TlsRoute>)> = Vec::new();
        for (hostnames, route) in routes {
            for host in hostnames {
                match host.strip_prefix('*') {
                    Some(suffix) => {
                        if !wildcard.iter().any(|(s, _)| &**s == suffix) {
                            wildcard.push((suffix.into(), route.clone()));
                        }
                    }
                    None => {
                        exact
                            .entry(host.as_str().into())
                            .or_insert_with(|| route.clone());
                    }
                }
            }
        }
        // Stable: equal lengths keep their order, which the lookup never depends on (two
        // different suffixes of one length cannot both match a name).
        wildcard.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        Self { exact, wildcard }
    }

    /// The route for `server_name` (any case; a trailing dot is ignored), if one claims it.
    pub fn find(&self, server_name: &str) -> Option<&Arc<TlsRoute>> {
        let name = normalize(server_name);
        if let Some(route) = self.exact.get(&*name) {
            return Some(route);
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(&**suffix))
            .map(|(_, route)| route)
    }

    /// Whether no route is attached.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    /// Every route of the table (with repeats: one per hostname).
    pub fn routes(&self) -> impl Iterator<Item = &Arc<TlsRoute>> {
        self.exact
            .values()
            .chain(self.wildcard.iter().map(|(_, r)| r))
    }
}

/// Lowercase without a trailing dot; borrowed when already so (the common case).
fn normalize(name: &str) -> Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::WeightedServices;

    fn route(name: &str) -> Arc<TlsRoute> {
        Arc::new(TlsRoute {
            name: name.into(),
            namespace: "default".into(),
            backends: WeightedServices::new([(0, 1)]).expect("weights"),
        })
    }

    fn table(routes: &[(&str, &[&str])]) -> SniTable {
        let owned: Vec<(Vec<String>, Arc<TlsRoute>)> = routes
            .iter()
            .map(|(name, hosts)| (hosts.iter().map(|h| (*h).to_owned()).collect(), route(name)))
            .collect();
        SniTable::new(owned.iter().map(|(h, r)| (h.as_slice(), r.clone())))
    }

    fn served_by(table: &SniTable, sni: &str) -> Option<String> {
        table.find(sni).map(|r| r.name.to_string())
    }

    #[test]
    fn exact_beats_wildcards_and_the_longest_wildcard_wins() {
        let t = table(&[
            ("wide", &["*.example.com"]),
            ("narrow", &["*.eu.example.com"]),
            ("api", &["api.eu.example.com"]),
        ]);
        assert_eq!(served_by(&t, "api.eu.example.com").as_deref(), Some("api"));
        assert_eq!(served_by(&t, "x.eu.example.com").as_deref(), Some("narrow"));
        assert_eq!(served_by(&t, "a.b.example.com").as_deref(), Some("wide"));
        assert_eq!(served_by(&t, "x.example.com").as_deref(), Some("wide"));
    }

    #[test]
    fn a_wildcard_needs_a_label_before_its_suffix() {
        let t = table(&[("wide", &["*.example.com"])]);
        assert_eq!(served_by(&t, "example.com"), None);
        assert_eq!(served_by(&t, ".example.com"), None);
        assert_eq!(served_by(&t, "badexample.com"), None);
    }

    #[test]
    fn names_are_matched_in_any_case_without_a_trailing_dot() {
        let t = table(&[("a", &["a.example"])]);
        assert_eq!(served_by(&t, "A.Example").as_deref(), Some("a"));
        assert_eq!(served_by(&t, "a.example.").as_deref(), Some("a"));
        assert_eq!(served_by(&t, "b.example"), None);
    }

    #[test]
    fn the_first_route_keeps_a_hostname_two_claim() {
        let t = table(&[
            ("first", &["a.example", "*.w.example"]),
            ("second", &["a.example", "*.w.example"]),
        ]);
        assert_eq!(served_by(&t, "a.example").as_deref(), Some("first"));
        assert_eq!(served_by(&t, "x.w.example").as_deref(), Some("first"));
    }
}
