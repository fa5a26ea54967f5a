//! Compiling `HTTPRoute`s into match entries per listener.

use std::str::FromStr;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::Method;
use regex::Regex;

use super::authorization_policy::CompiledPolicies;
use super::proxy::{attached_listeners, ListenerDraft};
use super::{check_positive, check_range, resolve_service, Errors, ServiceIndexMap};
use crate::error::FieldPath;
use crate::load::LoadedDoc;
use crate::matching::authz::Authorization;
use crate::matching::{MatchEntry, PathMatch, RequestMatch, RouteEntries, ValueMatch};
use crate::snapshot::{
    HeaderEdits, HttpRule, RetryOn, RetryPolicy, RulePolicies, Service, WeightedServices,
};
use crate::spec::{
    Document, HeaderEditsSpec, HttpMatchSpec, HttpRouteSpec, HttpRuleSpec, ListenerProtocol,
    PathMatchKind, Resource, ValueMatchKind, ValueMatchSpec,
};

/// Headers a route may not edit: they describe one hop's connection, not the request.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Retry conditions understood besides plain status codes.
const RETRY_CONDITIONS: [&str; 4] = ["5xx", "gateway-error", "connect-failure", "reset"];

/// Compiles every HTTPRoute; returns match entries per listener index and the number of rules.
pub(crate) fn compile_all(
    docs: &[LoadedDoc],
    listeners: Option<&[ListenerDraft]>,
    services: &[Arc<Service>],
    index: &ServiceIndexMap,
    policies: &CompiledPolicies,
    errors: &mut Errors,
) -> (Vec<Vec<RouteEntries>>, usize) {
    let mut routes: Vec<(&LoadedDoc, &Document<HttpRouteSpec>)> = docs
        .iter()
        .filter_map(|d| match &*d.resource {
            Resource::HttpRoute(r) => Some((d, r)),
            _ => None,
        })
        .collect();
    routes.sort_by(|a, b| {
        (&a.1.metadata.namespace, &a.1.metadata.name)
            .cmp(&(&b.1.metadata.namespace, &b.1.metadata.name))
    });

    let mut per_listener = vec![Vec::new(); listeners.map_or(0, <[_]>::len)];
    let mut next_rule_id = 0;
    for (order, (doc, route)) in routes.into_iter().enumerate() {
        let authorization = policies.route(&route.metadata.namespace, &route.metadata.name);
        let entries = compile_route(
            doc,
            route,
            order,
            &mut next_rule_id,
            (services, index),
            authorization,
            errors,
        );
        if let Some(listeners) = listeners {
            let attached = attached_listeners(
                errors,
                doc,
                listeners,
                &route.spec.parent_refs,
                ListenerProtocol::Http,
            );
            // Usually one listener: the last one takes the entries, the others copy them.
            if let Some((&last, others)) = attached.split_last() {
                for &l in others {
                    per_listener[l].push(entries.clone());
                }
                per_listener[last].push(entries);
            }
        }
    }
    (per_listener, next_rule_id)
}

fn compile_route(
    doc: &LoadedDoc,
    route: &Document<HttpRouteSpec>,
    order: usize,
    next_rule_id: &mut usize,
    (services, index): (&[Arc<Service>], &ServiceIndexMap),
    authorization: Option<Arc<Authorization>>,
    errors: &mut Errors,
) -> RouteEntries {
    let at = FieldPath::root().key("spec");
    let mut hostnames = Vec::new();
    for (i, host) in route.spec.hostnames.iter().enumerate() {
        let lower = host.to_ascii_lowercase();
        let bare = lower.strip_prefix("*.").unwrap_or(&lower);
        if super::names::is_dns_name(bare) {
            hostnames.push(lower.clone());
        } else {
            errors.at(doc, &at.key("hostnames").index(i), format!("`{host}` is not a host name (no port, no scheme; `*.example.com` for a wildcard)"));
        }
    }
    if route.spec.rules.is_empty() {
        errors.at(doc, &at.key("rules"), "a route needs at least one rule");
    }
    let mut entries = Vec::new();
    let name: Arc<str> = route.metadata.name.as_str().into();
    for (r, rule) in route.spec.rules.iter().enumerate() {
        let here = at.key("rules").index(r);
        let mut compiled = compile_rule(
            doc,
            &here,
            rule,
            r,
            &name,
            &route.metadata.namespace,
            services,
            index,
            errors,
        );
        compiled.id = *next_rule_id;
        compiled.authorization = authorization.clone();
        *next_rule_id += 1;
        let compiled = Arc::new(compiled);
        let match_all = [HttpMatchSpec::default()];
        let matches = if rule.matches.is_empty() {
            &match_all[..]
        } else {
            &rule.matches[..]
        };
        for (m, spec) in matches.iter().enumerate() {
            let matcher = compile_match(doc, &here.key("matches").index(m), spec, errors);
            entries.push(MatchEntry {
                matcher,
                rule: compiled.clone(),
                order: (order, r, m),
            });
        }
    }
    RouteEntries { hostnames, entries }
}

#[allow(clippy::too_many_arguments)]
fn compile_rule(
    doc: &LoadedDoc,
    at: &FieldPath,
    rule: &HttpRuleSpec,
    rule_index: usize,
    route: &Arc<str>,
    namespace: &str,
    services: &[Arc<Service>],
    index: &ServiceIndexMap,
    errors: &mut Errors,
) -> HttpRule {
    let backends = backend_services(
        doc,
        &at.key("backendRefs"),
        &rule.backend_refs,
        namespace,
        services,
        index,
        errors,
        true,
    );

    if let Some(t) = &rule.timeouts {
        check_positive(errors, doc, &at.key("timeouts").key("request"), t.request);
        check_positive(errors, doc, &at.key("timeouts").key("perTry"), t.per_try);
    }
    if let Some(retry) = &rule.retries {
        let r_at = at.key("retries");
        check_range(
            errors,
            doc,
            &r_at.key("attempts"),
            Some(retry.attempts),
            0,
            10,
        );
        for (i, cond) in retry.retry_on.iter().enumerate() {
            let is_status =
                cond.len() == 3 && cond.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
            if !is_status && !RETRY_CONDITIONS.contains(&cond.as_str()) {
                errors.at(
                    doc,
                    &r_at.key("retryOn").index(i),
                    format!(
                        "unknown retry condition `{cond}`; use {} or a status code such as \"503\"",
                        RETRY_CONDITIONS.join(", ")
                    ),
                );
            }
        }
        if let Some(b) = &retry.backoff {
            check_positive(errors, doc, &r_at.key("backoff").key("base"), Some(b.base));
            if b.base > b.max {
                errors.at(
                    doc,
                    &r_at.key("backoff").key("max"),
                    format!("max {} is below base {}", b.max, b.base),
                );
            }
        }
        if let Some(b) = &retry.budget {
            check_range(
                errors,
                doc,
                &r_at.key("budget").key("percent"),
                Some(b.percent),
                0.0,
                100.0,
            );
        }
    }
    if let Some(rl) = &rule.rate_limit {
        let rl_at = at.key("rateLimit");
        if !(rl.requests_per_second > 0.0 && rl.requests_per_second.is_finite()) {
            errors.at(
                doc,
                &rl_at.key("requestsPerSecond"),
                "must be greater than 0",
            );
        }
        check_range(
            errors,
            doc,
            &rl_at.key("burst"),
            Some(rl.burst),
            1,
            u32::MAX,
        );
        let key_ok = match rl.key.strip_prefix("header:") {
            Some(h) => HeaderName::from_str(h).is_ok(),
            None => rl.key == "route" || rl.key == "client-ip",
        };
        if !key_ok {
            errors.at(
                doc,
                &rl_at.key("key"),
                format!(
                    "`{}` is not a rate-limit key; use `route`, `client-ip` or `header:NAME`",
                    rl.key
                ),
            );
        }
    }
    if let Some(fault) = &rule.fault {
        let f_at = at.key("fault");
        if let Some(d) = &fault.delay {
            check_range(
                errors,
                doc,
                &f_at.key("delay").key("percent"),
                Some(d.percent),
                0.0,
                100.0,
            );
        }
        if let Some(a) = &fault.abort {
            check_range(
                errors,
                doc,
                &f_at.key("abort").key("status"),
                Some(a.status),
                200,
                599,
            );
            check_range(
                errors,
                doc,
                &f_at.key("abort").key("percent"),
                Some(a.percent),
                0.0,
                100.0,
            );
        }
    }
    let mirror = rule.mirror.as_ref().and_then(|m| {
        let m_at = at.key("mirror");
        check_range(
            errors,
            doc,
            &m_at.key("percent"),
            Some(m.percent),
            0.0,
            100.0,
        );
        let target = backend_services(
            doc,
            &m_at,
            std::slice::from_ref(&m.backend_ref),
            namespace,
            services,
            index,
            errors,
            false,
        )?;
        Some((m.clone(), target.single()?))
    });

    HttpRule {
        route: route.clone(),
        namespace: namespace.into(),
        index: rule_index,
        id: 0,
        backends: backends
            .unwrap_or_else(|| WeightedServices::new([(0, 1)]).expect("constant weight")),
        request_timeout: rule
            .timeouts
            .as_ref()
            .and_then(|t| t.request)
            .map(|d| d.get()),
        per_try_timeout: rule
            .timeouts
            .as_ref()
            .and_then(|t| t.per_try)
            .map(|d| d.get()),
        request_headers: header_edits(
            doc,
            &at.key("requestHeaders"),
            rule.request_headers.as_ref(),
            errors,
        ),
        response_headers: header_edits(
            doc,
            &at.key("responseHeaders"),
            rule.response_headers.as_ref(),
            errors,
        ),
        policies: RulePolicies {
            retries: rule.retries.as_ref().map(retry_policy),
            rate_limit: rule.rate_limit.clone(),
            fault: rule.fault.clone(),
            mirror,
        },
        authorization: None,
    }
}

/// Resolves weighted backend references (used by HTTP and TCP routes). `path` points at the
/// list, or at the single `backendRef` when `as_list` is false.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backend_services(
    doc: &LoadedDoc,
    path: &FieldPath,
    refs: &[crate::spec::BackendRef],
    namespace: &str,
    services: &[Arc<Service>],
    index: &ServiceIndexMap,
    errors: &mut Errors,
    as_list: bool,
) -> Option<WeightedServices> {
    let want_http = matches!(*doc.resource, Resource::HttpRoute(_));
    if refs.is_empty() {
        errors.at(
            doc,
            path,
            "needs at least one backend (`- {name: SERVICE, weight: 1}`)",
        );
        return None;
    }
    let mut resolved = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        let here = if as_list {
            path.index(i)
        } else {
            path.key("backendRef")
        };
        check_range(errors, doc, &here.key("weight"), Some(r.weight), 0, 10_000);
        match resolve_service(index, namespace, &r.name, r.namespace.as_deref()) {
            Ok(s) => {
                let protocol = services.get(s).map(|svc| svc.protocol);
                if protocol.is_some_and(|p| p.is_http() != want_http) {
                    let expected = if want_http {
                        "an HTTP (http1/http2/grpc)"
                    } else {
                        "a `protocol: tcp`"
                    };
                    errors.at(
                        doc,
                        &here.key("name"),
                        format!("Service `{}` is not {expected} service", r.name),
                    );
                }
                resolved.push((s, r.weight));
            }
            Err(msg) => errors.at(doc, &here.key("name"), msg),
        }
    }
    let weighted = WeightedServices::new(resolved.iter().copied());
    if weighted.is_none() && resolved.len() == refs.len() {
        errors.at(
            doc,
            path,
            "backend weights sum to 0: at least one backend needs a weight above 0",
        );
    }
    weighted
}

fn compile_match(
    doc: &LoadedDoc,
    at: &FieldPath,
    spec: &HttpMatchSpec,
    errors: &mut Errors,
) -> RequestMatch {
    let path = spec.path.as_ref().and_then(|p| {
        let p_at = at.key("path").key("value");
        match p.kind {
            PathMatchKind::Exact | PathMatchKind::PathPrefix if !p.value.starts_with('/') => {
                errors.at(doc, &p_at, format!("`{}` must start with `/`", p.value));
                None
            }
            PathMatchKind::Exact => Some(PathMatch::Exact(p.value.clone())),
            PathMatchKind::PathPrefix => Some(PathMatch::prefix(&p.value)),
            PathMatchKind::RegularExpression => {
                anchored(doc, &p_at, &p.value, errors).map(PathMatch::Regex)
            }
        }
    });
    let method = spec
        .method
        .as_ref()
        .and_then(|m| match Method::from_bytes(m.as_bytes()) {
            Ok(method) if m.bytes().all(|b| b.is_ascii_uppercase()) => Some(method),
            _ => {
                errors.at(
                    doc,
                    &at.key("method"),
                    format!("`{m}` is not an HTTP method (write it uppercase, e.g. GET)"),
                );
                None
            }
        });
    let headers = spec
        .headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| {
            let here = at.key("headers").index(i);
            let name = match HeaderName::from_bytes(h.name.as_bytes()) {
                Ok(n) => n,
                Err(_) => {
                    errors.at(
                        doc,
                        &here.key("name"),
                        format!("`{}` is not a valid header name", h.name),
                    );
                    return None;
                }
            };
            Some((name, value_match(doc, &here, h, errors)?))
        })
        .collect();
    let query = spec
        .query_params
        .iter()
        .enumerate()
        .filter_map(|(i, q)| {
            let here = at.key("queryParams").index(i);
            if q.name.is_empty() {
                errors.at(doc, &here.key("name"), "must not be empty");
            }
            Some((q.name.clone(), value_match(doc, &here, q, errors)?))
        })
        .collect();
    RequestMatch {
        path,
        method,
        headers,
        query,
    }
}

fn value_match(
    doc: &LoadedDoc,
    at: &FieldPath,
    spec: &ValueMatchSpec,
    errors: &mut Errors,
) -> Option<ValueMatch> {
    match spec.kind {
        ValueMatchKind::Exact => Some(ValueMatch::Exact(spec.value.clone())),
        ValueMatchKind::RegularExpression => {
            anchored(doc, &at.key("value"), &spec.value, errors).map(ValueMatch::Regex)
        }
    }
}

/// Compiles a regex that must match the whole subject.
fn anchored(doc: &LoadedDoc, at: &FieldPath, pattern: &str, errors: &mut Errors) -> Option<Regex> {
    match regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
    {
        Ok(re) => Some(re),
        Err(e) => {
            let detail = e.to_string();
            let last = detail.lines().last().unwrap_or("invalid").trim();
            errors.at(
                doc,
                at,
                format!("invalid regular expression `{pattern}`: {last}"),
            );
            None
        }
    }
}

fn header_edits(
    doc: &LoadedDoc,
    at: &FieldPath,
    spec: Option<&HeaderEditsSpec>,
    errors: &mut Errors,
) -> HeaderEdits {
    let Some(spec) = spec else {
        return HeaderEdits::default();
    };
    let name_of = |errors: &mut Errors, path: FieldPath, name: &str| {
        editable_header(doc, &path, name, errors)
    };
    let pairs =
        |errors: &mut Errors, key: &str, map: &std::collections::BTreeMap<String, String>| {
            map.iter()
                .filter_map(|(name, value)| {
                    let path = at.key(key.to_owned()).key(name.clone());
                    let n = name_of(errors, path.clone(), name)?;
                    match HeaderValue::from_str(value) {
                        Ok(v) => Some((n, v)),
                        Err(_) => {
                            errors.at(
                                doc,
                                &path,
                                "not a valid header value (visible ASCII and spaces only)",
                            );
                            None
                        }
                    }
                })
                .collect::<Vec<_>>()
        };
    let set = pairs(errors, "set", &spec.set);
    let add = pairs(errors, "add", &spec.add);
    let remove = spec
        .remove
        .iter()
        .enumerate()
        .filter_map(|(i, name)| name_of(errors, at.key("remove").index(i), name))
        .collect();
    HeaderEdits { set, add, remove }
}

/// A header name a route may edit, or an error.
fn editable_header(
    doc: &LoadedDoc,
    path: &FieldPath,
    name: &str,
    errors: &mut Errors,
) -> Option<HeaderName> {
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(n) if HOP_BY_HOP.contains(&n.as_str()) => {
            errors.at(
                doc,
                path,
                format!("`{name}` is a hop-by-hop header and cannot be edited"),
            );
            None
        }
        Ok(n) => Some(n),
        Err(_) => {
            errors.at(doc, path, format!("`{name}` is not a valid header name"));
            None
        }
    }
}

/// Compiles a validated retry spec.
fn retry_policy(spec: &crate::spec::RetrySpec) -> RetryPolicy {
    let mut on = RetryOn::default();
    for cond in &spec.retry_on {
        match cond.as_str() {
            "5xx" => on.any_5xx = true,
            "gateway-error" => on.gateway_error = true,
            "connect-failure" => on.connect_failure = true,
            "reset" => on.reset = true,
            code => on.statuses.extend(code.parse::<u16>().ok()),
        }
    }
    let backoff = spec.backoff.as_ref();
    RetryPolicy {
        attempts: spec.attempts,
        on,
        backoff_base: backoff.map_or(std::time::Duration::from_millis(25), |b| b.base.get()),
        backoff_max: backoff.map_or(std::time::Duration::from_millis(250), |b| b.max.get()),
        budget: spec
            .budget
            .as_ref()
            .map(|b| (b.percent, b.min_retries_per_second)),
        max_body_bytes: spec.max_body_bytes.map_or(64 * 1024, u64::from),
    }
}
