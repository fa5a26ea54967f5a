//! A sampled request's spans: the server span (the request as the proxy received it) and one
//! client span per upstream try, built as OpenTelemetry [`SpanData`] with attributes named by
//! the HTTP semantic conventions, and queued for export when they end.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, Method, Version};
use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::context::Incoming;
use super::export::SpanQueue;
use super::propagate::{self, Outgoing, REQUEST_ID};
use super::random_span_id;

/// A sampled request's trace while it is served.
#[derive(Debug)]
pub struct Recording {
    queue: Arc<SpanQueue>,
    incoming: Incoming,
    trace_id: u128,
    /// The server span's id: every try's client span is its child.
    span_id: u64,
    start: SystemTime,
    method: Method,
    attributes: Vec<KeyValue>,
    /// The try under way: its span id and start.
    current: Option<(u64, SystemTime)>,
}

/// How one upstream try ended, for its client span.
#[derive(Debug, Clone)]
pub struct TryOutcome<'a> {
    /// The service tried.
    pub service: &'a str,
    /// The endpoint tried, `ip:port` or `host:port` as configured.
    pub endpoint: &'a str,
    /// Its response status, or the proxy's reason for having none (`connect-failure`...).
    pub result: Result<u16, &'static str>,
    /// Tries before this one.
    pub resends: u32,
    /// Why another try follows, if one does.
    pub retry: Option<Cow<'static, str>>,
}

/// How the request ended, for the server span.
#[derive(Debug, Clone, Copy)]
pub struct Answered<'a> {
    /// The status answered.
    pub status: u16,
    /// `x-strait-reason`, when the proxy answered itself.
    pub reason: Option<&'static str>,
    /// The listener, route and service that served it (`""`: none).
    pub listener: &'a str,
    /// See `listener`.
    pub route: &'a str,
    /// See `listener`.
    pub service: &'a str,
}

impl Recording {
    /// Starts the server span of a request (its headers as received, with `x-request-id`).
    pub(super) fn start<B>(
        queue: Arc<SpanQueue>,
        incoming: Incoming,
        trace_id: u128,
        request: &http::Request<B>,
        authority: &str,
        peer: SocketAddr,
    ) -> Self {
        let mut attributes = Vec::with_capacity(10);
        attributes.push(KeyValue::new(
            "http.request.method",
            request.method().as_str().to_owned(),
        ));
        attributes.push(KeyValue::new("url.path", request.uri().path().to_owned()));
        attributes.push(KeyValue::new("server.address", authority.to_owned()));
        attributes.push(KeyValue::new(
            "network.protocol.version",
            protocol_version(request.version()),
        ));
        attributes.push(KeyValue::new("client.address", peer.ip().to_string()));
        if let Some(id) = request_id(request.headers()) {
            attributes.push(KeyValue::new("http.request.header.x-request-id", id));
        }
        Self {
            queue,
            incoming,
            trace_id,
            span_id: random_span_id(),
            start: SystemTime::now(),
            method: request.method().clone(),
            attributes,
            current: None,
        }
    }

    /// Starts a try's client span and writes its context into the upstream request's headers.
    pub fn begin_try(&mut self, headers: &mut HeaderMap) {
        let span_id = random_span_id();
        self.current = Some((span_id, SystemTime::now()));
        let out = Outgoing {
            trace_id: self.trace_id,
            span_id,
            sampled: true,
        };
        propagate::write(headers, &self.incoming, out);
    }

    /// Ends the try under way: its client span is queued.
    pub fn end_try(&mut self, outcome: TryOutcome<'_>) {
        let Some((span_id, start)) = self.current.take() else {
            return;
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", self.method.as_str().to_owned()),
            KeyValue::new("strait.service", outcome.service.to_owned()),
            KeyValue::new("strait.endpoint", outcome.endpoint.to_owned()),
        ];
        if let Some((host, port)) = outcome.endpoint.rsplit_once(':') {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            attributes.push(KeyValue::new("server.address", host.to_owned()));
            if let Ok(port) = port.parse::<u16>() {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
        }
        if outcome.resends > 0 {
            attributes.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(outcome.resends),
            ));
        }
        let status = match outcome.result {
            Ok(code) => {
                attributes.push(KeyValue::new("http.response.status_code", i64::from(code)));
                if code >= 500 {
                    attributes.push(KeyValue::new("error.type", code.to_string()));
                    Status::error(format!("status {code}"))
                } else {
                    Status::Unset
                }
            }
            Err(reason) => {
                attributes.push(KeyValue::new("error.type", reason));
                Status::error(reason)
            }
        };
        let now = SystemTime::now();
        let events = outcome
            .retry
            .map(|reason| {
                vec![Event::new(
                    "retry",
                    now,
                    vec![KeyValue::new("strait.retry.reason", reason.into_owned())],
                    0,
                )]
            })
            .unwrap_or_default();
        let span = self.span(SpanFields {
            span_id,
            parent: self.span_id,
            remote_parent: false,
            kind: SpanKind::Client,
            name: Cow::Owned(self.method.as_str().to_owned()),
            start,
            attributes,
            events,
            status,
        });
        self.queue.push(span);
    }

    /// Ends the server span and queues it.
    pub fn finish(mut self, answered: Answered<'_>) {
        let mut attributes = std::mem::take(&mut self.attributes);
        attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(answered.status),
        ));
        for (key, value) in [
            ("strait.listener", answered.listener),
            ("strait.route", answered.route),
            ("strait.service", answered.service),
        ] {
            if !value.is_empty() {
                attributes.push(KeyValue::new(key, value.to_owned()));
            }
        }
        if let Some(reason) = answered.reason {
            attributes.push(KeyValue::new("strait.reason", reason));
        }
        // Server spans: a 5xx is the server's failure, a 4xx the client's (not an error).
        let status = if answered.status >= 500 {
            attributes.push(KeyValue::new("error.type", answered.status.to_string()));
            Status::error(answered.reason.unwrap_or("server error"))
        } else {
            Status::Unset
        };
        let name = match answered.route {
            "" => Cow::Owned(self.method.as_str().to_owned()),
            route => Cow::Owned(format!("{} {route}", self.method)),
        };
        let (parent, remote_parent) = match self.incoming.parent {
            Some(p) => (p.span_id, true),
            None => (0, false),
        };
        let span = self.span(SpanFields {
            span_id: self.span_id,
            parent,
            remote_parent,
            kind: SpanKind::Server,
            name,
            start: self.start,
            attributes,
            events: Vec::new(),
            status,
        });
        self.queue.push(span);
    }

    fn span(&self, f: SpanFields) -> SpanData {
        // Both are `non_exhaustive`: made by `Default`, then filled.
        let mut events = SpanEvents::default();
        events.events = f.events;
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(self.trace_id.to_be_bytes()),
                SpanId::from_bytes(f.span_id.to_be_bytes()),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: SpanId::from_bytes(f.parent.to_be_bytes()),
            parent_span_is_remote: f.remote_parent,
            span_kind: f.kind,
            name: f.name,
            start_time: f.start,
            end_time: SystemTime::now(),
            attributes: f.attributes,
            dropped_attributes_count: 0,
            events,
            links: SpanLinks::default(),
            status: f.status,
            instrumentation_scope: scope(),
        }
    }
}

/// The parts that differ between the server span and the client spans.
struct SpanFields {
    span_id: u64,
    parent: u64,
    remote_parent: bool,
    kind: SpanKind,
    name: Cow<'static, str>,
    start: SystemTime,
    attributes: Vec<KeyValue>,
    events: Vec<Event>,
    status: Status,
}

/// The instrumentation scope every span names.
fn scope() -> InstrumentationScope {
    static SCOPE: std::sync::OnceLock<InstrumentationScope> = std::sync::OnceLock::new();
    SCOPE
        .get_or_init(|| {
            InstrumentationScope::builder("strait-proxy")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build()
        })
        .clone()
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
