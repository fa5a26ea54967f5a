//! Distributed tracing: the W3C (`traceparent`, `tracestate`) and B3 trace context of each
//! proxied HTTP request is continued or started, `x-request-id` kept or made, and sampled
//! requests export a server span and a client span per upstream try over OTLP.
//!
//! ```text
//! request ─▶ context::Incoming::read ─▶ sampled? (the caller's decision, else the ratio)
//!    no  ─▶ propagate::write once (new span id, flag 00)          — no span, no clock read
//!    yes ─▶ span::Recording: per try begin_try (headers) / end_try (client span)
//!           finish (server span) ─▶ export::SpanQueue (bounded) ─▶ batch task ─▶ collector
//! ```

pub mod context;
pub mod export;
pub mod propagate;
pub mod span;

use std::net::SocketAddr;
use std::sync::Arc;

use context::Incoming;
use export::SpanQueue;
use propagate::Outgoing;
use span::Recording;

/// Tracing as one config version has it: the sampling ratio and the collector's queue (the
/// queue outlives versions that keep the same collector).
#[derive(Debug)]
pub struct Tracer {
    sampling: f64,
    queue: Arc<SpanQueue>,
}

impl Tracer {
    /// Samples `sampling` (0 to 1) of new traces into `queue`.
    pub fn new(sampling: f64, queue: Arc<SpanQueue>) -> Self {
        Self { sampling, queue }
    }

    /// The queue spans go to.
    pub fn queue(&self) -> &Arc<SpanQueue> {
        &self.queue
    }

    /// The tracing phase of a request, before it is routed: reads its trace context, keeps or
    /// makes its `x-request-id`, and decides whether it is recorded. An unrecorded request
    /// gets the upstream's context written here (nothing else happens for it); a recorded one
    /// gets it per try from the returned [`Recording`].
    pub fn start<B>(
        &self,
        request: &mut http::Request<B>,
        authority: &str,
        peer: SocketAddr,
    ) -> Option<Box<Recording>> {
        let incoming = Incoming::read(request.headers());
        propagate::request_id(request.headers_mut(), incoming.present);
        let sampled = incoming
            .sampled
            .unwrap_or_else(|| self.sampling > 0.0 && fastrand::f64() < self.sampling);
        let trace_id = incoming.parent.map_or_else(random_trace_id, |p| p.trace_id);
        if !sampled {
            let out = Outgoing {
                trace_id,
                span_id: random_span_id(),
                sampled: false,
            };
            propagate::write(request.headers_mut(), &incoming, out);
            return None;
        }
        Some(Box::new(Recording::start(
            self.queue.clone(),
            incoming,
            trace_id,
            request,
            authority,
            peer,
        )))
    }
}

/// A new trace id: random, never zero.
fn random_trace_id() -> u128 {
    fastrand::u128(1..)
}

/// A new span id: random, never zero.
fn random_span_id() -> u64 {
    fastrand::u64(1..)
}
