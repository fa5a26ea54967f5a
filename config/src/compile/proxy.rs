//! Compiling the `ProxyConfig`: admin address, listeners, limits; then attaching routes.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{check_positive, check_range, Errors};
use crate::error::FieldPath;
use crate::load::LoadedDoc;
use crate::matching::authz::Authorization;
use crate::matching::sni::SniTable;
use crate::matching::{RouteEntries, RouteTable};
use crate::snapshot::{IdentitySource, Listener, ListenerTls, ProxySettings, Serves, TcpRoute};
use crate::spec::{ListenerMode, ListenerProtocol, ListenerTlsMode, ListenerTlsSpec, Resource};

/// A listener before routes are attached.
pub(crate) struct ListenerDraft {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: ListenerProtocol,
    pub max_connections: usize,
    pub mode: ListenerMode,
    pub tls: ListenerTls,
}

/// The compiled ProxyConfig.
pub(crate) struct CompiledProxy {
    pub settings: ProxySettings,
    pub listeners: Vec<ListenerDraft>,
}

const DEFAULT_MAX_HEADER_BYTES: u32 = 64 * 1024;
const DEFAULT_MAX_HEADERS: u32 = 100;
/// How long a client has to send a request head, by default.
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;

fn parse_addr(
    errors: &mut Errors,
    doc: &LoadedDoc,
    path: &FieldPath,
    text: &str,
) -> Option<SocketAddr> {
    match text.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            errors.at(
                doc,
                path,
                format!("`{text}` is not an ip:port address (e.g. 127.0.0.1:15000)"),
            );
            None
        }
    }
}

/// `spec.identity`: files (all three), or what the control issues for (trust domain,
/// namespace and service account). Relative files are relative to the document's directory.
fn identity_source(
    errors: &mut Errors,
    doc: &LoadedDoc,
    at: &FieldPath,
    spec: &crate::spec::IdentitySpec,
) -> Option<IdentitySource> {
    let base = doc.file.parent().unwrap_or(std::path::Path::new("."));
    let resolve = |file: &String| base.join(file);
    let files = [
        ("certFile", &spec.cert_file),
        ("keyFile", &spec.key_file),
        ("trustBundleFile", &spec.trust_bundle_file),
    ];
    let given = files.iter().filter(|(_, f)| f.is_some()).count();
    let (cert, key) = (&spec.cert_file, &spec.key_file);
    if cert.is_some() || key.is_some() {
        if given < 3 {
            for (name, _) in files.iter().filter(|(_, f)| f.is_none()) {
                errors.at(
                    doc,
                    &at.key(*name),
                    "certFile, keyFile and trustBundleFile go together: give all three".to_owned(),
                );
            }
            return None;
        }
        return Some(IdentitySource::Files {
            cert: resolve(cert.as_ref()?),
            key: resolve(key.as_ref()?),
            trust_bundle: resolve(spec.trust_bundle_file.as_ref()?),
        });
    }
    let mut part = |name: &'static str,
                    value: &Option<String>,
                    check: fn(&str) -> bool,
                    rule: &str| {
        match value {
            Some(v) if check(v) => Some(v.clone()),
            Some(v) => {
                errors.at(doc, &at.key(name), format!("`{v}`: {rule}"));
                None
            }
            None => {
                errors.at(
                    doc,
                    &at.key(name),
                    format!("{name} is required for an identity the control issues (or give certFile, keyFile and trustBundleFile)"),
                );
                None
            }
        }
    };
    let trust_domain = part(
        "trustDomain",
        &spec.trust_domain,
        is_trust_domain,
        "1-255 characters of a-z, 0-9, `.`, `-`, `_`",
    );
    let namespace = part(
        "namespace",
        &spec.namespace,
        is_spiffe_segment,
        "1-253 characters of letters, digits, `.`, `-`, `_`",
    );
    let service_account = part(
        "serviceAccount",
        &spec.service_account,
        is_spiffe_segment,
        "1-253 characters of letters, digits, `.`, `-`, `_`",
    );
    Some(IdentitySource::Control {
        trust_domain: trust_domain?,
        namespace: namespace?,
        service_account: service_account?,
        trust_bundle: spec.trust_bundle_file.as_ref().map(resolve),
    })
}

/// A SPIFFE trust domain: lowercase letters, digits, `.`, `-`, `_`.
fn is_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

/// A namespace or service account as a SPIFFE path segment.
fn is_spiffe_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Validates and compiles the ProxyConfig document.
pub(crate) fn compile(doc: &LoadedDoc, errors: &mut Errors) -> Option<CompiledProxy> {
    let Resource::ProxyConfig(pc) = &*doc.resource else {
        return None;
    };
    let spec = &pc.spec;
    let at = FieldPath::root().key("spec");
    let admin = parse_addr(errors, doc, &at.key("admin"), &spec.admin);
    let telemetry = spec
        .telemetry
        .as_ref()
        .map(|text| parse_addr(errors, doc, &at.key("telemetry"), text));
    if let (Some(Some(telemetry)), Some(admin)) = (telemetry, admin) {
        if telemetry.port() != 0 && telemetry == admin {
            errors.at(
                doc,
                &at.key("telemetry"),
                format!(
                    "`{telemetry}` is the admin address: give the telemetry listener its own port"
                ),
            );
        }
    }
    check_positive(
        errors,
        doc,
        &at.key("readyWithoutControlAfter"),
        spec.ready_without_control_after,
    );

    let identity = spec
        .identity
        .as_ref()
        .and_then(|id| identity_source(errors, doc, &at.key("identity"), id));
    let identity_given = spec.identity.is_some();
    let workload =
        super::tracing::workload(errors, doc, &at.key("workload"), spec.workload.as_deref());
    let tracing = spec
        .tracing
        .as_ref()
        .map(|t| super::tracing::settings(errors, doc, &at.key("tracing"), t));

    let limits = spec.limits.clone().unwrap_or_default();
    let limits_at = at.key("limits");
    check_range(
        errors,
        doc,
        &limits_at.key("maxHeaderBytes"),
        limits.max_header_bytes,
        1024,
        1024 * 1024,
    );
    check_range(
        errors,
        doc,
        &limits_at.key("maxHeaders"),
        limits.max_headers,
        1,
        10_000,
    );
    check_range(
        errors,
        doc,
        &limits_at.key("maxConnections"),
        limits.max_connections,
        1,
        1_000_000,
    );
    check_positive(errors, doc, &at.key("drainTimeout"), spec.drain_timeout);
    check_positive(
        errors,
        doc,
        &limits_at.key("headerReadTimeout"),
        limits.header_read_timeout,
    );
    check_positive(
        errors,
        doc,
        &limits_at.key("bodyReadTimeout"),
        limits.body_read_timeout,
    );
    let default_max_conns = limits.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);

    let mut listeners = Vec::new();
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    for (i, l) in spec.listeners.iter().enumerate() {
        let here = at.key("listeners").index(i);
        if !names.insert(l.name.as_str()) {
            errors.at(
                doc,
                &here.key("name"),
                format!("listener `{}` is defined twice", l.name),
            );
        }
        if !super::names::is_dns_name(&l.name) {
            errors.at(
                doc,
                &here.key("name"),
                format!(
                    "`{}` is not a valid listener name: use lowercase letters, digits and `-`",
                    l.name
                ),
            );
        }
        check_range(
            errors,
            doc,
            &here.key("maxConnections"),
            l.max_connections,
            1,
            1_000_000,
        );
        let Some(address) = parse_addr(errors, doc, &here.key("address"), &l.address) else {
            continue;
        };
        let taken = Some(address) == admin || telemetry == Some(Some(address));
        if address.port() != 0 && (taken || !addresses.insert(address)) {
            errors.at(
                doc,
                &here.key("address"),
                format!(
                    "`{address}` is already used by another listener, the admin server or the \
                     telemetry listener"
                ),
            );
        }
        check_mode(errors, doc, &here, l.mode, address);
        let tls = match &l.tls {
            Some(tls) => listener_tls(errors, doc, &here.key("tls"), tls, l.mode, identity_given),
            None => Some(ListenerTls::Disabled),
        };
        let Some(tls) = tls else {
            continue;
        };
        listeners.push(ListenerDraft {
            name: l.name.clone(),
            address,
            protocol: l.protocol,
            max_connections: l.max_connections.unwrap_or(default_max_conns) as usize,
            mode: l.mode,
            tls,
        });
    }

    Some(CompiledProxy {
        settings: ProxySettings {
            identity,
            admin: admin?,
            telemetry: match telemetry {
                Some(parsed) => Some(parsed?),
                None => None,
            },
            ready_without_control_after: spec.ready_without_control_after.map(|d| d.get()),
            drain_timeout: spec
                .drain_timeout
                .map_or(Duration::from_secs(10), |d| d.get()),
            access_log: spec.access_log.as_ref().is_none_or(|a| a.enabled),
            max_header_bytes: limits.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES) as usize,
            max_headers: limits.max_headers.unwrap_or(DEFAULT_MAX_HEADERS) as usize,
            header_read_timeout: limits
                .header_read_timeout
                .map_or(DEFAULT_HEADER_READ_TIMEOUT, |d| d.get()),
            body_read_timeout: limits
                .body_read_timeout
                .map_or(DEFAULT_BODY_READ_TIMEOUT, |d| d.get()),
            workload,
            tracing: match tracing {
                Some(checked) => Some(checked?),
                None => None,
            },
        },
        listeners,
    })
}

/// An intercepting listener receives traffic the iptables rules redirect to a fixed port; an
/// inbound one also receives it on the pod's address (REDIRECT in PREROUTING rewrites the
/// destination to the receiving interface's address, never to loopback).
/// `listeners[].tls`: mutual and permissive need the proxy's identity, simple a certificate
/// and key of the user's (relative to the document's directory).
fn listener_tls(
    errors: &mut Errors,
    doc: &LoadedDoc,
    at: &FieldPath,
    spec: &ListenerTlsSpec,
    mode: ListenerMode,
    identity_given: bool,
) -> Option<ListenerTls> {
    let files = [("certFile", &spec.cert_file), ("keyFile", &spec.key_file)];
    // Inbound interception takes mesh TLS (a meshed caller's mTLS ends here); an outbound
    // listener's clients are the pod's own app, and `simple` needs a name to serve.
    let supported = match mode {
        ListenerMode::Explicit => true,
        ListenerMode::Inbound => spec.mode.is_mesh(),
        ListenerMode::Outbound => false,
    };
    if spec.mode != ListenerTlsMode::Disabled && !supported {
        errors.at(
            doc,
            &at.key("mode"),
            format!(
                "`tls.mode: {}` is not supported on a `mode: {}` listener: an inbound listener \
                 takes `mutual` or `permissive`; for `simple`, give TLS to an explicit listener \
                 (the pod's port forwarded to it)",
                spec.mode.as_str(),
                mode.as_str()
            ),
        );
        return None;
    }
    match spec.mode {
        ListenerTlsMode::Disabled | ListenerTlsMode::Mutual | ListenerTlsMode::Permissive => {
            let mut ok = true;
            for (name, _) in files.iter().filter(|(_, f)| f.is_some()) {
                errors.at(
                    doc,
                    &at.key(*name),
                    format!(
                        "{name} is for `mode: simple` only; `{}` uses the proxy's identity \
                         (spec.identity)",
                        spec.mode.as_str()
                    ),
                );
                ok = false;
            }
            if spec.mode.is_mesh() && !identity_given {
                errors.at(
                    doc,
                    &at.key("mode"),
                    format!(
                        "`tls.mode: {}` needs the proxy's identity: add spec.identity (issued by \
                         the control, or certFile, keyFile and trustBundleFile)",
                        spec.mode.as_str()
                    ),
                );
                ok = false;
            }
            ok.then_some(match spec.mode {
                ListenerTlsMode::Mutual => ListenerTls::Mutual,
                ListenerTlsMode::Permissive => ListenerTls::Permissive,
                _ => ListenerTls::Disabled,
            })
        }
        ListenerTlsMode::Simple => {
            for (name, _) in files.iter().filter(|(_, f)| f.is_none()) {
                errors.at(
                    doc,
                    &at.key(*name),
                    format!("`tls.mode: simple` needs {name}: the certificate the listener presents (the user's, not the mesh's)"),
                );
            }
            let base = doc.file.parent().unwrap_or(std::path::Path::new("."));
            Some(ListenerTls::Simple {
                cert: base.join(spec.cert_file.as_ref()?),
                key: base.join(spec.key_file.as_ref()?),
            })
        }
    }
}

fn check_mode(
    errors: &mut Errors,
    doc: &LoadedDoc,
    here: &FieldPath,
    mode: ListenerMode,
    address: SocketAddr,
) {
    if mode.is_explicit() {
        return;
    }
    if address.port() == 0 {
        errors.at(
            doc,
            &here.key("address"),
            format!(
                "a `mode: {}` listener needs a fixed port: the iptables rules redirect to it",
                mode.as_str()
            ),
        );
    }
    if mode == ListenerMode::Inbound && address.ip().is_loopback() {
        errors.at(
            doc,
            &here.key("address"),
            format!(
                "`{address}` is a loopback address, but redirected inbound traffic arrives on the \
                 pod's address: bind 0.0.0.0 (or [::])"
            ),
        );
    }
}

/// Resolves `parentRefs` to listener indexes: every listener of `protocol` when empty.
pub(crate) fn attached_listeners(
    errors: &mut Errors,
    doc: &LoadedDoc,
    listeners: &[ListenerDraft],
    parent_refs: &[crate::spec::ParentRef],
    protocol: ListenerProtocol,
) -> Vec<usize> {
    if parent_refs.is_empty() {
        return (0..listeners.len())
            .filter(|&i| listeners[i].protocol == protocol)
            .collect();
    }
    let mut out = Vec::new();
    for (i, parent) in parent_refs.iter().enumerate() {
        let here = FieldPath::root()
            .key("spec")
            .key("parentRefs")
            .index(i)
            .key("name");
        match listeners.iter().position(|l| l.name == parent.name) {
            Some(idx) if listeners[idx].protocol == protocol => out.push(idx),
            Some(_) => errors.at(
                doc,
                &here,
                format!(
                    "listener `{}` is not a {} listener",
                    parent.name,
                    protocol_name(protocol)
                ),
            ),
            None => {
                let known: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
                errors.at(
                    doc,
                    &here,
                    format!(
                        "no listener `{}` in the ProxyConfig; known: {}",
                        parent.name,
                        known.join(", ")
                    ),
                );
            }
        }
    }
    out
}

fn protocol_name(p: ListenerProtocol) -> &'static str {
    match p {
        ListenerProtocol::Http => "`protocol: http`",
        ListenerProtocol::Tcp => "`protocol: tcp`",
    }
}

/// What compiling the routes and policies produced, per listener index.
pub(crate) struct Routes {
    pub http: Vec<Vec<RouteEntries>>,
    pub tcp: Vec<Option<Arc<TcpRoute>>>,
    pub tls: Vec<Vec<super::tls_route::Attached>>,
    pub authorization: Vec<Option<Arc<Authorization>>>,
}

/// Puts the compiled routes and authorization policies on their listeners.
pub(crate) fn attach_routes(listeners: Vec<ListenerDraft>, mut routes: Routes) -> Vec<Listener> {
    listeners
        .into_iter()
        .enumerate()
        .map(|(i, l)| Listener {
            name: l.name.into(),
            address: l.address,
            max_connections: l.max_connections,
            mode: l.mode,
            tls: l.tls,
            serves: match l.protocol {
                ListenerProtocol::Http => Serves::Http(RouteTable::new(
                    routes
                        .http
                        .get_mut(i)
                        .map(std::mem::take)
                        .unwrap_or_default(),
                )),
                ListenerProtocol::Tcp => Serves::Tcp(routes.tcp.get_mut(i).and_then(Option::take)),
            },
            tls_routes: routes
                .tls
                .get(i)
                .filter(|attached| !attached.is_empty())
                .map(|attached| {
                    SniTable::new(attached.iter().map(|(h, r)| (h.as_slice(), r.clone())))
                }),
            authorization: routes.authorization.get_mut(i).and_then(Option::take),
        })
        .collect()
}
