//! The HTTP request path, top to bottom:
//!
//! ```text
//! check framing and limits → find the rule → authorize → pick a service (weights)
//!   → pick an endpoint → rewrite headers → send over a pooled connection
//!   → stream the response back
//! ```
//!
//! Every step that refuses returns a [`ProxyError`]; [`handle`] turns it into the answer and
//! records metrics and the access log either way.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{
    HeaderMap, HeaderValue, CONNECTION, CONTENT_LENGTH, COOKIE, HOST, TRANSFER_ENCODING,
};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, StatusCode, Uri, Version};
use strait_config::matching::authz::{AuthzRequest, Operation};
use strait_config::matching::{normalize_host, normalize_path, RequestView};
use strait_config::snapshot::{HashKey, HttpRule, Listener, ProxySettings, Serves};
use strait_config::spec::ServiceProtocol;

use super::authority::{request_authority, without_userinfo};
use super::body::{ClientBody, ResponseBody, UpstreamResponseBody};
use super::deadline::within;
use super::error::ProxyError;
use super::headers::{strip_hop_by_hop, wants_upgrade, ClientHeaders, CLIENT_ID_HEADER};
use super::response::Reply;
use super::retry::{backoff, retryable, RequestBody};
use super::upstream::Dial;
use super::{mirror, upstream};
use crate::active::{Active, ServiceRuntime};
use crate::authz;
use crate::service::balance::affinity_hash;
use crate::service::breaker::{Attempt, Breaker};
use crate::service::endpoint::InFlight;
use crate::shared::Shared;
use crate::trace::span::{Answered, Recording, TryOutcome};

/// What a connection knows about itself, shared by its requests.
#[derive(Debug)]
pub struct Conn {
    /// Listener name (looked up in each request's config version).
    pub listener: Arc<str>,
    /// Client address.
    pub peer: SocketAddr,
    /// Forwarding header values for this client.
    pub client: Arc<ClientHeaders>,
    /// Process-wide state.
    pub shared: Arc<Shared>,
    /// Where an intercepted connection was going: requests no route claims go there.
    pub original: Option<crate::intercept::passthrough::OriginalDestination>,
    /// The peer's SPIFFE ID, from its verified client certificate (`None`: plaintext, or
    /// TLS without one). What authorization policies' `from` matches.
    pub peer_identity: Option<Arc<str>>,
    /// `x-strait-client-id`'s value for this peer (its SPIFFE ID), made once per connection
    /// (boxed: most connections have none, and each holds this).
    pub client_id: Option<Box<HeaderValue>>,
}

/// What the request path learned, for metrics and the access log.
#[derive(Default)]
struct Exchange {
    listener: Option<usize>,
    rule: Option<Arc<HttpRule>>,
    position: usize,
    service: Option<Arc<str>>,
    endpoint: Option<Arc<str>>,
    passthrough: bool,
    /// The request's spans, when it is sampled.
    trace: Option<Box<Recording>>,
}

/// Serves one request; never fails (refusals become responses).
///
/// A function returning an `async move` block rather than an `async fn` (here and in
/// `forward`): an `async fn` rebinds its arguments inside its future, which then holds the
/// 264-byte request twice; the block uses the captured request in place.
#[allow(clippy::manual_async_fn)]
pub fn handle(
    req: Request<ClientBody>,
    conn: Arc<Conn>,
) -> impl Future<Output = Reply<ResponseBody>> {
    async move {
        let started = Instant::now();
        let active = conn.shared.config.load_full();
        let access = active.snapshot.proxy.access_log.then(|| {
            (
                req.method().clone(),
                req.uri().clone(),
                req.headers().get(HOST).cloned(),
            )
        });
        let mut exchange = Exchange::default();
        let http1 = req.version() < Version::HTTP_2;
        // `reason` is bound here, not before the await: it adds nothing to the future's state.
        let (response, reason) = match forward(req, &conn, &active, &mut exchange).await {
            Ok(resp) => (resp, None),
            Err(e) => {
                let reason = Some(e.reason());
                if e.is_upstream() {
                    tracing::warn!(listener = %conn.listener, endpoint = exchange.endpoint.as_deref().unwrap_or("-"), error = %e, "upstream failure");
                } else {
                    tracing::debug!(listener = %conn.listener, error = %e, "refused");
                }
                let close = http1 && e.closes_connection();
                let mut resp = e.into_response();
                if close {
                    // Connection-specific, so only on HTTP/1 (illegal in HTTP/2).
                    resp.fields
                        .map_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                (resp, reason)
            }
        };
        let elapsed = started.elapsed();
        let status = response.status.as_u16();
        if let Some(li) = exchange.listener {
            let metrics = match &exchange.rule {
                Some(rule) => active.request_metrics(li, rule, exchange.position),
                None if exchange.passthrough => active
                    .listeners
                    .get(li)
                    .and_then(|l| l.passthrough.as_ref()),
                None => active.listeners.get(li).map(|l| &l.unrouted),
            };
            if let Some(m) = metrics {
                let source = active.listeners.get(li).and_then(|l| l.source.as_ref());
                let client = conn.peer_identity.as_ref().or(source);
                m.record(status, elapsed.as_secs_f64(), client);
            }
        }
        if let Some(recording) = exchange.trace.take() {
            recording.finish(Answered {
                status,
                reason,
                listener: &conn.listener,
                route: exchange.rule.as_ref().map_or("", |r| &*r.route),
                service: exchange.service.as_deref().unwrap_or(""),
            });
        }
        if let Some((method, uri, host)) = access {
            let authority = uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| host.as_ref().and_then(|h| h.to_str().ok()))
                .map_or("-", without_userinfo);
            tracing::info!(
                target: "strait::access",
                listener = %conn.listener,
                client = %conn.peer,
                client_id = conn.peer_identity.as_deref().unwrap_or("-"),
                method = %method,
                authority,
                path = uri.path(),
                status,
                route = exchange.rule.as_ref().map_or("-", |r| &*r.route),
                service = exchange.service.as_deref().unwrap_or("-"),
                endpoint = exchange.endpoint.as_deref().unwrap_or("-"),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                "access"
            );
        }
        response
    }
}

/// Routes the request and sends it upstream (an `async move` block, for the reason [`handle`]
/// gives).
#[allow(clippy::manual_async_fn)]
fn forward<'a>(
    mut req: Request<ClientBody>,
    conn: &'a Conn,
    active: &'a Active,
    exchange: &'a mut Exchange,
) -> impl Future<Output = Result<Reply<ResponseBody>, ProxyError>> + 'a {
    async move {
        let Some((li, listener)) = active.listener(&conn.listener) else {
            return Err(ProxyError::NoRoute);
        };
        exchange.listener = Some(li);
        let Serves::Http(table) = &listener.serves else {
            return Err(ProxyError::NoRoute);
        };
        check_limits(req.headers(), &active.snapshot.proxy)?;
        let authority = request_authority(&mut req)?;
        if let Some(tracer) = &active.tracer {
            exchange.trace = tracer.start(&mut req, authority.as_str(), conn.peer);
        }
        let host = normalize_host(authority.as_str());
        let found = {
            // In a block: a path normalised into a `String` is dropped here, not held in
            // this future's state across every await below.
            let path = normalize_path(req.uri().path());
            let view = RequestView {
                host: &host,
                path: &path,
                query: req.uri().query(),
                method: req.method(),
                headers: req.headers(),
            };
            let found = table.find(&view).cloned();
            // Set before authorizing: a request a route's policy denies counts under the route.
            exchange.rule.clone_from(&found);
            authorize(conn, active, listener, found.as_deref(), &view)?;
            found
        };
        let Some(rule) = found else {
            // Intercepted traffic no route claims goes where it was going.
            let original = conn.original.as_ref().ok_or(ProxyError::NoRoute)?;
            exchange.passthrough = true;
            exchange.service = Some(Arc::from(crate::intercept::passthrough::SERVICE));
            exchange.endpoint = Some(original.address.to_string().into());
            // Boxed: a rare path whose future would otherwise widen every request's.
            let (response, _) = Box::pin(crate::intercept::passthrough::http(
                req,
                authority,
                original,
                conn.client_id.as_deref(),
            ))
            .await?;
            return Ok(response);
        };
        apply_policies(&rule, active, conn, req.headers()).await?;
        let (position, si) = match rule.backends.single() {
            Some(si) => (0, si),
            None => rule
                .backends
                .pick_with(fastrand::u32(0..rule.backends.total())),
        };
        exchange.position = position;
        let (Some(service), Some(runtime)) =
            (active.snapshot.services.get(si), active.services.get(si))
        else {
            return Err(ProxyError::Internal("service index out of range"));
        };
        exchange.service = Some(service.name.clone());
        runtime.state.budget.record_request();
        let hash = service
            .hash_on
            .as_ref()
            .and_then(|key| affinity(req.headers(), key));

        let upgrade = req.version() == Version::HTTP_11
            && service.protocol == ServiceProtocol::Http1
            && wants_upgrade(req.headers());

        let (mut parts, body) = req.into_parts();
        // Upgrades are never retried nor mirrored: the connection becomes the client's.
        let retries = rule.policies.retries.as_ref().filter(|_| !upgrade);
        let mirror = rule
            .policies
            .mirror
            .as_ref()
            .filter(|(m, _)| !upgrade && chance(m.percent))
            .map(|&(_, target)| (target, upstream::clone_head(&parts)));
        let mirror_authority = mirror.as_ref().map(|_| format!("{host}-shadow"));
        let deferred = upstream_head(
            &mut parts,
            conn,
            &rule,
            service.protocol,
            authority,
            upgrade,
            Forwarding::ByEncoderIfPlain,
        )?;
        let keep = match (retries, &mirror) {
            (Some(p), Some(_)) => Some(p.max_body_bytes.max(mirror::MAX_MIRRORED_BODY)),
            (Some(p), None) => Some(p.max_body_bytes),
            (None, Some(_)) => Some(mirror::MAX_MIRRORED_BODY),
            (None, None) => None,
        };
        let body = match keep {
            Some(limit) => RequestBody::keep_if_small(body, limit).await?,
            None => RequestBody::Once(Some(body)),
        };
        if let (Some((target, head)), Some(shadow)) = (mirror, mirror_authority) {
            send_mirror(target, head, &shadow, &body, conn, &rule, active);
        }
        let slot = match &runtime.breaker {
            Some(breaker) => breaker.start_request()?,
            None => None,
        };
        // Built inside the call, not bound to a name: a named future moved into `within` would
        // keep its own slot in this function's state beside the one `within` holds.
        let sent = within(
            rule.request_timeout,
            send_with_retries(
                &rule,
                service,
                runtime,
                hash,
                Outgoing {
                    head: &mut parts,
                    forwarding: deferred.then_some(&conn.client),
                    body,
                },
                exchange,
            ),
        )
        .await
        .map_err(|_| ProxyError::Timeout)??;
        let Sent {
            response,
            in_flight,
            tries,
        } = sent;

        let Reply {
            status,
            mut fields,
            body: inner,
        } = for_client(response, upgrade);
        if !rule.response_headers.is_empty() {
            rule.response_headers.apply(fields.map_mut());
        }
        if retries.is_some() {
            fields
                .map_mut()
                .insert(ATTEMPTS_HEADER, HeaderValue::from(tries));
        }
        let body = ResponseBody::Upstream {
            inner,
            in_flight: Some(in_flight),
            slot,
        };
        Ok(Reply {
            status,
            fields,
            body,
        })
    }
}

/// The upstream's response made fit for the client's hop: the hop-by-hop fields stay behind
/// (but those of a 101 to a request that upgrades, which the client must see; the server
/// then joins the two connections, see [`super::tunnel`]).
pub(crate) fn for_client(
    mut reply: Reply<UpstreamResponseBody>,
    upgrade: bool,
) -> Reply<UpstreamResponseBody> {
    let switching = reply.status == StatusCode::SWITCHING_PROTOCOLS;
    reply.fields.strip_hop_by_hop(switching && upgrade);
    reply
}

/// Copies the request to the rule's mirror service, when its body was kept.
fn send_mirror(
    target: usize,
    mut head: http::request::Parts,
    shadow: &str,
    body: &RequestBody,
    conn: &Conn,
    rule: &HttpRule,
    active: &Active,
) {
    let (Some(bytes), Some(service), Some(runtime)) = (
        body.kept(),
        active.snapshot.services.get(target),
        active.services.get(target),
    ) else {
        tracing::debug!(route = %rule.route, "mirror skipped: body not kept");
        return;
    };
    let Ok(authority) = Authority::try_from(shadow) else {
        return;
    };
    head.headers.remove(HOST);
    if upstream_head(
        &mut head,
        conn,
        rule,
        service.protocol,
        authority,
        false,
        Forwarding::InMap,
    )
    .is_ok()
    {
        mirror::spawn(head, bytes.clone(), service, runtime);
    }
}

/// Header telling how many attempts a request took (when the route retries).
const ATTEMPTS_HEADER: &str = "x-strait-attempts";

/// Where [`upstream_head`] puts the forwarding fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forwarding {
    /// Into the head's header map.
    InMap,
    /// Left for the HTTP/1 encoder to write when the head is plain: an HTTP/1 service, no
    /// forwarding field of the client's to merge with, no route edits to apply after them
    /// (three map insertions saved); into the map otherwise.
    ByEncoderIfPlain,
}

/// Rewrites the request head for the next hop: framing, hop-by-hop headers, forwarding
/// headers, the route's edits, and the target form the upstream protocol wants. Returns
/// whether the forwarding fields were left for the encoder (see [`Forwarding`]).
fn upstream_head(
    parts: &mut http::request::Parts,
    conn: &Conn,
    rule: &HttpRule,
    protocol: ServiceProtocol,
    authority: Authority,
    upgrade: bool,
    forwarding_fields: Forwarding,
) -> Result<bool, ProxyError> {
    if parts.headers.contains_key(TRANSFER_ENCODING) {
        // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length; never forward both.
        parts.headers.remove(CONTENT_LENGTH);
    }
    strip_hop_by_hop(&mut parts.headers, upgrade);
    // One pass over the names for what follows asks (cheaper than a hashed lookup each).
    let (mut has_host, mut forwarding, mut client_id) = (false, false, false);
    for name in parts.headers.keys() {
        has_host |= name == HOST;
        forwarding |= ClientHeaders::is_forwarding(name);
        client_id |= name == CLIENT_ID_HEADER;
    }
    if client_id {
        // A client's own claim: only the proxy says who the peer is.
        parts.headers.remove(&CLIENT_ID_HEADER);
    }
    if let Some(id) = &conn.client_id {
        parts
            .headers
            .insert(&CLIENT_ID_HEADER, HeaderValue::clone(id));
    }
    let edited = !rule.request_headers.is_empty();
    let deferred = forwarding_fields == Forwarding::ByEncoderIfPlain
        && matches!(protocol, ServiceProtocol::Http1)
        && !edited
        && !forwarding;
    if !deferred {
        conn.client.append_to(&mut parts.headers);
    }
    if edited {
        rule.request_headers.apply(&mut parts.headers);
        has_host = parts.headers.contains_key(HOST);
    }
    match protocol {
        ServiceProtocol::Http2 | ServiceProtocol::Grpc => {
            parts.version = Version::HTTP_2;
            parts.headers.remove(HOST);
            parts.uri = Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(authority)
                .path_and_query(path_of(&parts.uri))
                .build()
                .map_err(|_| ProxyError::BadRequest("request target"))?;
        }
        ServiceProtocol::Http1 | ServiceProtocol::Tcp => {
            parts.version = Version::HTTP_11;
            // A Host the head carries is the authority already (see `request_authority`) or
            // the route's edit; a head without one (from HTTP/2, a mirror's) gets it here.
            if !has_host {
                let value = HeaderValue::from_str(authority.as_str())
                    .map_err(|_| ProxyError::BadRequest("authority"))?;
                parts.headers.insert(HOST, value);
            }
            // Origin form; a target already in it stays as it is.
            if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
                parts.uri = Uri::from(path_of(&parts.uri));
            }
        }
    }
    Ok(deferred)
}

/// The path and query of a request target (`/` for none, as an authority-form target has).
fn path_of(uri: &Uri) -> PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// The request as it goes upstream.
struct Outgoing<'a> {
    /// Its head, rewritten for the upstream.
    head: &'a mut http::request::Parts,
    /// Forwarding fields not in the head yet (see [`upstream_head`]).
    forwarding: Option<&'a ClientHeaders>,
    body: RequestBody,
}

/// A response and what produced it.
struct Sent {
    response: Reply<UpstreamResponseBody>,
    in_flight: InFlight,
    tries: u32,
}

/// Sends the request, retrying as the rule's policy allows: each retry goes to another
/// endpoint when there is one, after a jittered backoff, within the service's retry budget,
/// and only while the body can be sent again and the circuit breaker lets it through. Every
/// attempt's outcome feeds the breaker and outlier detection.
async fn send_with_retries(
    rule: &HttpRule,
    service: &strait_config::snapshot::Service,
    runtime: &ServiceRuntime,
    hash: Option<u64>,
    request: Outgoing<'_>,
    exchange: &mut Exchange,
) -> Result<Sent, ProxyError> {
    let Outgoing {
        head,
        forwarding,
        mut body,
    } = request;
    let policy = rule.policies.retries.as_ref();
    let breaker = runtime.breaker.as_ref();
    let dial = Dial {
        timeout: service.connect_timeout,
        limits: breaker,
    };
    let mut admitted = breaker.map(|b| b.admit()).transpose()?;
    let mut tries = 0u32;
    let mut previous = None;
    loop {
        tries += 1;
        // `let … else` rather than `ok_or`: an error built eagerly is dropped on every
        // success, and dropping a `ProxyError` is not free.
        let Some(index) = runtime.pick(hash, previous) else {
            return Err(ProxyError::NoHealthyEndpoints);
        };
        let Some(endpoint) = runtime.endpoints.get(index).cloned() else {
            return Err(ProxyError::NoHealthyEndpoints);
        };
        exchange.endpoint = Some(endpoint.label.clone());
        let retry_possible =
            policy.is_some_and(|p| tries <= p.attempts && body.replayable(p.max_body_bytes));
        if let Some(recording) = exchange.trace.as_deref_mut() {
            recording.begin_try(&mut head.headers);
        }
        let this_head = upstream::Lent {
            head: &mut *head,
            forwarding,
            last: !retry_possible,
        };
        let Some(this_body) = body.for_attempt() else {
            return Err(ProxyError::Internal("request body already sent"));
        };
        let in_flight = endpoint.start_request();
        let outcome = within(
            rule.per_try_timeout,
            upstream::send(&endpoint, dial, this_head, this_body),
        )
        .await
        .unwrap_or_else(|_| Err(ProxyError::Timeout));
        let failed = match &outcome {
            Ok(response) => response.status.is_server_error(),
            Err(e) => e.is_upstream(),
        };
        if let (Some(b), Some(attempt)) = (breaker, admitted.take()) {
            b.record(attempt, failed);
        }
        if let Some(outlier) = &runtime.outlier {
            outlier.record(&endpoint, failed, runtime.endpoints.len());
        }
        let outcome = outcome.map(|response| (response, in_flight));
        let retry = match policy {
            Some(p) if retry_possible && retryable(p, outcome.as_ref().map(|(r, _)| r.status)) => {
                p.budget
                    .is_none_or(|(percent, floor)| runtime.state.budget.try_retry(percent, floor))
                    && admit_retry(breaker, &mut admitted)
            }
            _ => false,
        };
        if let Some(recording) = exchange.trace.as_deref_mut() {
            recording.end_try(try_outcome(&endpoint, &outcome, tries, retry));
        }
        let (Some(p), true) = (policy, retry) else {
            return outcome.map(|(response, in_flight)| Sent {
                response,
                in_flight,
                tries,
            });
        };
        runtime.state.retries.increment(1);
        match &outcome {
            Ok((response, _)) => {
                tracing::debug!(endpoint = %endpoint.label, status = response.status.as_u16(), "retrying")
            }
            Err(e) => tracing::debug!(endpoint = %endpoint.label, error = %e, "retrying"),
        }
        drop(outcome);
        tokio::time::sleep(backoff(p, tries)).await;
        previous = Some(index);
    }
}

/// What a recorded request's client span says about one try.
fn try_outcome<'a>(
    endpoint: &'a crate::service::endpoint::Endpoint,
    outcome: &Result<(Reply<UpstreamResponseBody>, InFlight), ProxyError>,
    tries: u32,
    retry: bool,
) -> TryOutcome<'a> {
    let result = match outcome {
        Ok((response, _)) => Ok(response.status.as_u16()),
        Err(e) => Err(e.reason()),
    };
    TryOutcome {
        service: &endpoint.service,
        endpoint: &endpoint.label,
        result,
        resends: tries.saturating_sub(1),
        retry: retry.then(|| match result {
            Ok(status) => std::borrow::Cow::Owned(format!("status {status}")),
            Err(reason) => std::borrow::Cow::Borrowed(reason),
        }),
    }
}

/// Whether the breaker lets a retry through (a retry never turns into `circuit-open`: when
/// refused, the caller gets the last answer).
fn admit_retry(breaker: Option<&Arc<Breaker>>, admitted: &mut Option<Attempt>) -> bool {
    match breaker.map(|b| b.admit()) {
        None => true,
        Some(Ok(attempt)) => {
            *admitted = Some(attempt);
            true
        }
        Some(Err(_)) => false,
    }
}

/// Authorization: the listener's policies for every request on it (routed or not), then the
/// policies of the route that serves it. A denied request is answered 403 `forbidden` and
/// reaches no upstream. Listeners and routes without a policy cost one `Option` check.
fn authorize(
    conn: &Conn,
    active: &Active,
    listener: &Listener,
    rule: Option<&HttpRule>,
    view: &RequestView<'_>,
) -> Result<(), ProxyError> {
    let route = rule.and_then(|r| r.authorization.as_deref());
    if listener.authorization.is_none() && route.is_none() {
        return Ok(());
    }
    let request = AuthzRequest {
        peer_identity: conn.peer_identity.as_deref(),
        operation: Some(Operation {
            method: view.method,
            path: view.path,
        }),
    };
    for authorization in [listener.authorization.as_deref(), route]
        .into_iter()
        .flatten()
    {
        if !authz::check(authorization, &request, &active.authz) {
            return Err(ProxyError::Forbidden);
        }
    }
    Ok(())
}

/// Rate limit and fault injection: the policies that may answer before any upstream is chosen.
async fn apply_policies(
    rule: &HttpRule,
    active: &Active,
    conn: &Conn,
    headers: &HeaderMap,
) -> Result<(), ProxyError> {
    if let Some(policy) = active.rule(rule) {
        if let Some(limiter) = &policy.rate_limit {
            if let Err(limited) = limiter.check(conn.peer.ip(), headers) {
                if let Some(counter) = &policy.rate_limited {
                    counter.increment(1);
                }
                return Err(ProxyError::RateLimited(limited.retry_after));
            }
        }
    }
    if let Some(fault) = &rule.policies.fault {
        if let Some(delay) = &fault.delay {
            if chance(delay.percent) {
                tokio::time::sleep(delay.fixed.get()).await;
            }
        }
        if let Some(abort) = &fault.abort {
            if chance(abort.percent) {
                let status =
                    StatusCode::from_u16(abort.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                return Err(ProxyError::Fault(status));
            }
        }
    }
    Ok(())
}

/// True with probability `percent`/100.
fn chance(percent: f64) -> bool {
    percent > 0.0 && fastrand::f64() * 100.0 < percent
}

/// Enforces the configured header count and size limits (hyper's own limits sit above these so
/// that the answer carries a reason).
fn check_limits(headers: &HeaderMap, limits: &ProxySettings) -> Result<(), ProxyError> {
    if headers.len() > limits.max_headers {
        return Err(ProxyError::HeadersTooLarge("too many headers"));
    }
    let size: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    if size > limits.max_header_bytes {
        return Err(ProxyError::HeadersTooLarge("headers exceed maxHeaderBytes"));
    }
    Ok(())
}

/// The affinity hash of a request for ring_hash, if the request carries the key.
fn affinity(headers: &HeaderMap, key: &HashKey) -> Option<u64> {
    match key {
        HashKey::Header(name) => headers.get(name).map(|v| affinity_hash(v.as_bytes())),
        HashKey::Cookie(name) => headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| affinity_hash(v.as_bytes())),
    }
}
