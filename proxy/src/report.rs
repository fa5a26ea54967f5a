//! What the proxy tells the control for its live view, every [`INTERVAL`]: per (listener,
//! route, service) the request-duration histogram's counts and the failures (read off the
//! request path: the counters are atomics the requests add to anyway), each service's
//! endpoints with their health and breaker state (as admin `/clusters` shows them), the
//! applied config version, and the workload beside the proxy (`spec.workload`), which the
//! control draws the edges from. Counts are cumulative: the control turns them into rates.
//!
//! Bounded: at most [`MAX_EDGES`] edges, [`MAX_SERVICES`] services of at most
//! [`MAX_ENDPOINTS`] endpoints each per report, and one report waiting at a time (a report
//! the session has not sent yet is replaced by nothing: the next tick sends fresher counts).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::metrics::duration;
use crate::shared::Shared;

/// How often a report is made.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Most (listener, route, service) edges in one report.
pub const MAX_EDGES: usize = 256;
/// Most services in one report.
pub const MAX_SERVICES: usize = 256;
/// Most endpoints per service in one report.
pub const MAX_ENDPOINTS: usize = 64;

/// Hands a report to the control session every [`INTERVAL`], for the life of the process.
pub async fn run(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        crate::control::report(|| build(&shared));
    }
}

/// One report (without the node name: the session adds it).
pub fn build(shared: &Shared) -> Value {
    let mut figures: Vec<_> = duration::figures()
        .into_iter()
        .filter(|f| !f.service.is_empty())
        .collect();
    // The busiest edges first, so the bound drops the quiet ones.
    figures.sort_unstable_by_key(|f| std::cmp::Reverse(f.buckets.iter().sum::<u64>()));
    let edges: Vec<Value> = figures
        .iter()
        .take(MAX_EDGES)
        .map(|f| {
            json!({
                "listener": &*f.listener,
                "route": &*f.route,
                "service": &*f.service,
                "buckets": f.buckets,
                "failures": f.failures,
            })
        })
        .collect();
    let mut clusters = crate::admin::clusters(shared);
    let services = match clusters["services"].as_array_mut() {
        Some(services) => {
            services.truncate(MAX_SERVICES);
            for service in services.iter_mut() {
                if let Some(endpoints) = service["endpoints"].as_array_mut() {
                    endpoints.truncate(MAX_ENDPOINTS);
                }
            }
            std::mem::take(services)
        }
        None => Vec::new(),
    };
    let active = shared.config.load();
    json!({
        "workload": active.snapshot.proxy.workload.as_deref(),
        "version": crate::admin::shown_version(&active),
        "bounds": duration::bounds(),
        "edges": edges,
        "services": services,
    })
}
