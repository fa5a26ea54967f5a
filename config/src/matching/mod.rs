//! Request matching: which rule serves a request. Pure: knows nothing of sockets.
//!
//! # Precedence
//! 1. **Host.** Rules of routes naming the request's host exactly come first, then routes whose
//!    wildcard (`*.example.com`) matches it, longer wildcards first, then routes with no
//!    hostnames. Within that order a request falls through to the next group when nothing in
//!    a group matches.
//! 2. **Within a host group**, the most specific match wins, whatever the order in the file:
//!    `Exact` path, then `RegularExpression` path, then `PathPrefix` by prefix length (longest
//!    first; no path condition counts as prefix `/`); then a match with a method beats one
//!    without; then more header conditions; then more query-parameter conditions.
//! 3. **Ties** go to the route first by namespace/name, then to the earlier rule, then the
//!    earlier match in the rule.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

use crate::snapshot::HttpRule;

pub mod authz;
mod group;
mod path;
pub mod sni;
use group::Group;
pub use path::normalize_path;

/// The parts of a request that matching looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Host without port, lowercase.
    pub host: &'a str,
    /// Path without the query, normalised by [`normalize_path`] (the request's own bytes go
    /// upstream; this is only what matching sees).
    pub path: &'a str,
    /// Raw query string, without `?`.
    pub query: Option<&'a str>,
    /// Method.
    pub method: &'a Method,
    /// Headers.
    pub headers: &'a HeaderMap,
}

/// A path condition, compiled.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// Equal.
    Exact(String),
    /// Segment-aware prefix, stored without a trailing `/` (except the root `/`).
    Prefix(String),
    /// Whole-path regex (anchored).
    Regex(Regex),
}

impl PathMatch {
    /// Builds a segment-aware prefix match (normalising a trailing slash).
    pub fn prefix(value: &str) -> Self {
        let trimmed = value.trim_end_matches('/');
        Self::Prefix(if trimmed.is_empty() {
            "/".to_owned()
        } else {
            trimmed.to_owned()
        })
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => path == p,
            Self::Prefix(p) if p == "/" => true,
            Self::Prefix(p) => {
                path.starts_with(p.as_str())
                    && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
            Self::Regex(re) => re.is_match(path),
        }
    }

    fn rank(&self) -> (u8, usize) {
        match self {
            Self::Exact(p) => (3, p.len()),
            Self::Regex(_) => (2, 0),
            Self::Prefix(p) => (1, p.len()),
        }
    }
}

/// A value condition (header or query parameter), compiled.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    /// Equal.
    Exact(String),
    /// Whole-value regex (anchored).
    Regex(Regex),
}

impl ValueMatch {
    fn matches(&self, value: &[u8]) -> bool {
        match self {
            Self::Exact(v) => v.as_bytes() == value,
            Self::Regex(re) => std::str::from_utf8(value).is_ok_and(|v| re.is_match(v)),
        }
    }
}

/// One `matches` entry of a rule, compiled.
#[derive(Debug, Clone, Default)]
pub struct RequestMatch {
    /// Path condition (none: any path).
    pub path: Option<PathMatch>,
    /// Method condition.
    pub method: Option<Method>,
    /// Header conditions (all must hold; any value of a repeated header may satisfy one).
    pub headers: Vec<(HeaderName, ValueMatch)>,
    /// Query conditions (all must hold).
    pub query: Vec<(String, ValueMatch)>,
}

impl RequestMatch {
    /// Whether the request satisfies every condition.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if let Some(path) = &self.path {
            if !path.matches(req.path) {
                return false;
            }
        }
        if let Some(method) = &self.method {
            if method != req.method {
                return false;
            }
        }
        let headers_ok = self.headers.iter().all(|(name, want)| {
            req.headers
                .get_all(name)
                .iter()
                .any(|v| want.matches(v.as_bytes()))
        });
        headers_ok
            && self.query.iter().all(|(name, want)| {
                req.query.is_some_and(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .any(|(k, v)| k == name.as_str() && want.matches(v.as_bytes()))
                })
            })
    }

    /// Specificity, compared by [`Ord`]: greater is more specific.
    fn specificity(&self) -> impl Ord {
        let path = self.path.as_ref().map_or((1, 1), PathMatch::rank);
        (
            path,
            self.method.is_some(),
            self.headers.len(),
            self.query.len(),
        )
    }
}

/// A match entry in precedence order, pointing at its rule.
#[derive(Debug, Clone)]
pub struct MatchEntry {
    /// The conditions.
    pub matcher: RequestMatch,
    /// The rule it selects.
    pub rule: Arc<HttpRule>,
    /// Tie-breaker: position of route, rule and match in config order.
    pub order: (usize, usize, usize),
}

/// A route's contribution to a table: hostnames and its match entries.
#[derive(Debug, Clone)]
pub struct RouteEntries {
    /// Lowercase hostnames (`*.` prefix for wildcards); empty: every host.
    pub hostnames: Vec<String>,
    /// Its match entries.
    pub entries: Vec<MatchEntry>,
}

/// All HTTP routes of one listener, indexed by host.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, Group>,
    /// `(".example.com", entries)`, longest suffix first.
    wildcard: Vec<(String, Group)>,
    any_host: Group,
}

impl RouteTable {
    /// Builds the table from routes in config order.
    pub fn new(routes: Vec<RouteEntries>) -> Self {
        let mut exact: HashMap<String, Vec<MatchEntry>> = HashMap::new();
        let mut wildcard: HashMap<String, Vec<MatchEntry>> = HashMap::new();
        let mut any_host = Vec::new();
        for route in routes {
            if route.hostnames.is_empty() {
                // Most routes name no host: their entries move, not copy.
                any_host.extend(route.entries);
                continue;
            }
            for host in &route.hostnames {
                match host.strip_prefix('*') {
                    Some(suffix) => wildcard.entry(suffix.to_owned()).or_default(),
                    None => exact.entry(host.clone()).or_default(),
                }
                .extend(route.entries.iter().cloned());
            }
        }
        sort_by_precedence(&mut any_host);
        let mut wildcard: Vec<(String, Vec<MatchEntry>)> = wildcard.into_iter().collect();
        wildcard.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        // Each group gets the groups it falls through to appended, so a lookup is one scan.
        let fallthrough = |host: &str, own: Vec<MatchEntry>, skip: Option<&str>| {
            let mut list = own;
            sort_by_precedence(&mut list);
            for (suffix, entries) in &wildcard {
                if Some(suffix.as_str()) != skip
                    && host.ends_with(suffix.as_str())
                    && host.len() > suffix.len()
                {
                    let mut more = entries.clone();
                    sort_by_precedence(&mut more);
                    list.extend(more);
                }
            }
            list.extend(any_host.iter().cloned());
            list
        };
        let exact = exact
            .into_iter()
            .map(|(host, own)| {
                let list = fallthrough(&host, own, None);
                (host, Group::new(list))
            })
            .collect();
        let wildcard = wildcard
            .iter()
            .map(|(suffix, own)| {
                // A wildcard group falls through to shorter wildcards that contain it.
                let list = fallthrough(suffix, own.clone(), Some(suffix));
                (suffix.clone(), Group::new(list))
            })
            .collect();
        Self {
            exact,
            wildcard,
            any_host: Group::new(any_host),
        }
    }

    /// The rule for a request, if any matches. `req.host` must be lowercase without port.
    pub fn find(&self, req: &RequestView<'_>) -> Option<&Arc<HttpRule>> {
        let group = match self.exact.get(req.host) {
            Some(group) => group,
            None => self
                .wildcard
                .iter()
                .find(|(suffix, _)| {
                    req.host.len() > suffix.len() && req.host.ends_with(suffix.as_str())
                })
                .map_or(&self.any_host, |(_, group)| group),
        };
        group.find(req).map(|e| &e.rule)
    }

    /// Every rule reachable from this table (with repeats).
    pub fn rules(&self) -> impl Iterator<Item = &Arc<HttpRule>> {
        self.exact
            .values()
            .chain(self.wildcard.iter().map(|(_, g)| g))
            .chain(std::iter::once(&self.any_host))
            .flat_map(|group| group.entries.iter().map(|e| &e.rule))
    }

    /// Whether no route is attached.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any_host.entries.is_empty()
    }
}

fn sort_by_precedence(entries: &mut [MatchEntry]) {
    entries.sort_by(
        |a, b| match b.matcher.specificity().cmp(&a.matcher.specificity()) {
            Ordering::Equal => a.order.cmp(&b.order),
            other => other,
        },
    );
}

/// Normalises a Host / `:authority` value for lookup: strips the port and userinfo, lowercases.
/// Returns a borrowed slice when nothing needs lowering (the common case).
/// Runs for every request, hence byte scans rather than `str` pattern searches.
pub fn normalize_host(authority: &str) -> std::borrow::Cow<'_, str> {
    // The delimiters are ASCII, so every index below is a char boundary.
    let after = |delimiter: Option<usize>| delimiter.map_or(0, |at| at + 1);
    let host = authority
        .get(after(authority.bytes().rposition(|b| b == b'@'))..)
        .unwrap_or(authority);
    let host = if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: keep the brackets' content.
        let end = rest.bytes().position(|b| b == b']').unwrap_or(rest.len());
        rest.get(..end).unwrap_or(rest)
    } else {
        let end = host.bytes().position(|b| b == b':').unwrap_or(host.len());
        host.get(..end).unwrap_or(host)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue, Method};

    use super::*;
    use crate::snapshot::Serves;

    pub(super) fn table(routes: &str) -> crate::Snapshot {
        let text = format!(
            "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: p}}
spec: {{admin: 127.0.0.1:0, listeners: [{{name: web, address: 127.0.0.1:0, protocol: http}}]}}
---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {{name: s}}
spec: {{protocol: http1, endpoints: [{{address: 127.0.0.1:1}}]}}
{routes}"
        );
        crate::load_str("t.yaml", &text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Which `route#rule` serves a request.
    fn find(
        s: &crate::Snapshot,
        host: &str,
        method: &Method,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Option<String> {
        let Serves::Http(t) = &s.listeners[0].serves else {
            panic!("http listener")
        };
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let (path, query) = target
            .split_once('?')
            .map_or((target, None), |(p, q)| (p, Some(q)));
        let host = normalize_host(host);
        let path = normalize_path(path);
        let view = RequestView {
            host: &host,
            path: &path,
            query,
            method,
            headers: &map,
        };
        t.find(&view).map(|r| format!("{}#{}", r.route, r.index))
    }

    pub(super) fn route(name: &str, hosts: &str, rules: &str) -> String {
        format!("---\napiVersion: strait.dev/v1alpha1\nkind: HTTPRoute\nmetadata: {{name: {name}}}\nspec:\n  hostnames: {hosts}\n  rules:\n{rules}")
    }

    const GET: &Method = &Method::GET;

    #[test]
    fn path_kinds_and_segment_aware_prefix() {
        let s = table(&route(
            "r",
            "[]",
            "    - {matches: [{path: {type: Exact, value: /exact}}], backendRefs: [{name: s}]}
    - {matches: [{path: {type: PathPrefix, value: /api}}], backendRefs: [{name: s}]}
    - {matches: [{path: {type: RegularExpression, value: \"/v[0-9]+/items\"}}], backendRefs: [{name: s}]}
",
        ));
        assert_eq!(find(&s, "h", GET, "/exact", &[]).as_deref(), Some("r#0"));
        assert_eq!(find(&s, "h", GET, "/exact/more", &[]), None);
        assert_eq!(find(&s, "h", GET, "/api", &[]).as_deref(), Some("r#1"));
        assert_eq!(find(&s, "h", GET, "/api/", &[]).as_deref(), Some("r#1"));
        assert_eq!(
            find(&s, "h", GET, "/api/x?q=1", &[]).as_deref(),
            Some("r#1")
        );
        assert_eq!(find(&s, "h", GET, "/apix", &[]), None);
        assert_eq!(find(&s, "h", GET, "/v2/items", &[]).as_deref(), Some("r#2"));
        assert_eq!(
            find(&s, "h", GET, "/v2/items/1", &[]),
            None,
            "regex matches the whole path"
        );
    }

    #[test]
    fn paths_are_matched_once_normalised() {
        let s = table(&route(
            "r",
            "[]",
            "    - {matches: [{path: {type: PathPrefix, value: /public}}], backendRefs: [{name: s}]}
    - {matches: [{path: {type: Exact, value: /admin}}], backendRefs: [{name: s}]}
",
        ));
        for path in [
            "/public/../admin",
            "/public/%2e%2e/admin",
            "/public/.%2E/admin",
            "//admin",
            "/../admin",
            "/%61dmin",
        ] {
            assert_eq!(
                find(&s, "h", GET, path, &[]).as_deref(),
                Some("r#1"),
                "{path}"
            );
        }
        assert_eq!(
            find(&s, "h", GET, "/public/%2e%2e%2fadmin", &[]).as_deref(),
            Some("r#0"),
            "an encoded slash separates no segments"
        );
        assert_eq!(
            find(&s, "h", GET, "/admin/../public/x", &[]).as_deref(),
            Some("r#0")
        );
    }

    #[test]
    fn method_headers_and_query() {
        let s = table(&route(
            "r",
            "[]",
            "    - matches: [{method: POST, headers: [{name: X-Canary, value: \"true\"}, {name: x-user, type: RegularExpression, value: \"u[0-9]+\"}], queryParams: [{name: debug, value: \"1\"}]}]
      backendRefs: [{name: s}]
",
        ));
        let ok = [("x-canary", "true"), ("x-user", "u42")];
        assert_eq!(
            find(&s, "h", &Method::POST, "/?debug=1", &ok).as_deref(),
            Some("r#0")
        );
        assert_eq!(
            find(&s, "h", &Method::POST, "/?a=b&debug=1", &ok).as_deref(),
            Some("r#0")
        );
        assert_eq!(find(&s, "h", GET, "/?debug=1", &ok), None, "method");
        assert_eq!(
            find(&s, "h", &Method::POST, "/?debug=2", &ok),
            None,
            "query"
        );
        assert_eq!(
            find(&s, "h", &Method::POST, "/", &ok),
            None,
            "missing query"
        );
        assert_eq!(
            find(
                &s,
                "h",
                &Method::POST,
                "/?debug=1",
                &[("x-canary", "true"), ("x-user", "bob")]
            ),
            None,
            "regex header"
        );
        assert_eq!(
            find(&s, "h", &Method::POST, "/?debug=1", &[("x-user", "u1")]),
            None,
            "missing header"
        );
    }

    #[test]
    fn most_specific_match_wins_regardless_of_order() {
        let s = table(&route(
            "r",
            "[]",
            "    - {backendRefs: [{name: s}]}
    - {matches: [{path: {value: /a}}], backendRefs: [{name: s}]}
    - {matches: [{path: {value: /a/b}}], backendRefs: [{name: s}]}
    - {matches: [{path: {value: /a/b}, headers: [{name: x, value: \"1\"}]}], backendRefs: [{name: s}]}
    - {matches: [{path: {value: /a/b}, method: GET}], backendRefs: [{name: s}]}
    - {matches: [{path: {type: Exact, value: /a/b}}], backendRefs: [{name: s}]}
",
        ));
        assert_eq!(find(&s, "h", GET, "/zzz", &[]).as_deref(), Some("r#0"));
        assert_eq!(find(&s, "h", GET, "/a/x", &[]).as_deref(), Some("r#1"));
        assert_eq!(
            find(&s, "h", &Method::PUT, "/a/b/c", &[]).as_deref(),
            Some("r#2"),
            "longer prefix"
        );
        assert_eq!(
            find(&s, "h", GET, "/a/b/c", &[("x", "1")]).as_deref(),
            Some("r#4"),
            "method beats headers"
        );
        assert_eq!(
            find(&s, "h", &Method::PUT, "/a/b/c", &[("x", "1")]).as_deref(),
            Some("r#3"),
            "headers beat none"
        );
        assert_eq!(
            find(&s, "h", GET, "/a/b", &[("x", "1")]).as_deref(),
            Some("r#5"),
            "exact beats all"
        );
    }

    #[test]
    fn hosts_exact_then_wildcard_then_any_with_fallthrough() {
        let routes = [
            route(
                "exact",
                "[\"api.example.com\"]",
                "    - {matches: [{path: {value: /only}}], backendRefs: [{name: s}]}\n",
            ),
            route(
                "wild",
                "[\"*.example.com\"]",
                "    - {matches: [{path: {value: /}}], backendRefs: [{name: s}]}\n",
            ),
            route("any", "[]", "    - {backendRefs: [{name: s}]}\n"),
        ]
        .concat();
        let s = table(&routes);
        assert_eq!(
            find(&s, "API.example.com:8080", GET, "/only", &[]).as_deref(),
            Some("exact#0"),
            "case and port ignored"
        );
        assert_eq!(
            find(&s, "api.example.com", GET, "/other", &[]).as_deref(),
            Some("wild#0"),
            "falls through"
        );
        assert_eq!(
            find(&s, "www.example.com", GET, "/only", &[]).as_deref(),
            Some("wild#0")
        );
        assert_eq!(
            find(&s, "example.com", GET, "/", &[]).as_deref(),
            Some("any#0"),
            "wildcard needs a label"
        );
        assert_eq!(find(&s, "other", GET, "/", &[]).as_deref(), Some("any#0"));
    }

    #[test]
    fn ties_go_to_the_route_first_by_name() {
        let routes = [
            route(
                "b",
                "[]",
                "    - {matches: [{path: {value: /x}}], backendRefs: [{name: s}]}\n",
            ),
            route(
                "a",
                "[]",
                "    - {matches: [{path: {value: /x}}], backendRefs: [{name: s}]}\n",
            ),
        ]
        .concat();
        assert_eq!(
            find(&table(&routes), "h", GET, "/x", &[]).as_deref(),
            Some("a#0")
        );
    }

    #[test]
    fn normalizes_hosts() {
        assert_eq!(normalize_host("Example.COM:80"), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "::1");
        assert_eq!(normalize_host("user@host:1"), "host");
        assert_eq!(normalize_host("host."), "host");
    }
}
