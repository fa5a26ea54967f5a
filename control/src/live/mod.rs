//! The live view: what the proxies report every few seconds over their push connection
//! (`POST /v1/push/report`: per (listener, route, service) cumulative latency-bucket and
//! failure counts, their services' endpoints with health and breaker state, their applied
//! version), turned into per-edge rates over a window ([`window`]) and served with the proxies'
//! ACK/NACK and the bus's recent mesh events as one JSON view: `GET /v1/live`, live as
//! Server-Sent Events on `GET /v1/live/stream`, drawn by the page at `/ui` ([`api`]). An edge
//! starts at the proxy's workload (`spec.workload`) when it names one, so the replicas of a
//! workload make one edge, their traffic summed; at the proxy's node otherwise.
//!
//! Bounded: at most [`MAX_NODES`] proxies, [`MAX_EDGES`] edges and [`MAX_SERVICES`] services
//! per proxy are kept; a proxy silent for [`STALE_MS`] leaves the view.

pub mod api;
pub mod report;
pub mod window;

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{json, Value};

use report::Report;
use window::{EdgeWindow, Sample, Traffic};

/// Most proxies kept (the least recently heard from goes first).
pub const MAX_NODES: usize = 1024;
/// Most edges kept per proxy.
pub const MAX_EDGES: usize = 256;
/// Most services kept per proxy.
pub const MAX_SERVICES: usize = 256;
/// A proxy that has not reported for this long is left out of the view.
pub const STALE_MS: u64 = 30_000;

/// What the control knows of one proxy's traffic.
#[derive(Debug, Default)]
struct NodeState {
    reported_at: u64,
    /// Where its edges start: its workload, else its node name.
    source: String,
    version: Option<u64>,
    bounds: Vec<f64>,
    /// By (listener, route, service).
    edges: BTreeMap<(String, String, String), EdgeWindow>,
    services: Vec<Value>,
}

/// Every proxy's recent figures.
#[derive(Debug, Default)]
pub struct Live {
    nodes: Mutex<BTreeMap<String, NodeState>>,
}

impl Live {
    /// Takes one proxy's report, received at `now_ms`.
    pub fn ingest(&self, report: Report, now_ms: u64) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        if !nodes.contains_key(&report.node) && nodes.len() >= MAX_NODES {
            let oldest = nodes
                .iter()
                .min_by_key(|(_, n)| n.reported_at)
                .map(|(name, _)| name.clone());
            if let Some(oldest) = oldest {
                nodes.remove(&oldest);
            }
        }
        let source = match report.workload {
            Some(workload) if strait_config::compile::is_workload_name(&workload) => workload,
            _ => report.node.clone(),
        };
        let node = nodes.entry(report.node).or_default();
        node.source = source;
        node.reported_at = now_ms;
        node.version = report.version;
        node.bounds = report.bounds;
        let mut services = report.services;
        services.truncate(MAX_SERVICES);
        node.services = services;
        for edge in report.edges.into_iter().take(MAX_EDGES) {
            let key = (edge.listener, edge.route, edge.service);
            if !node.edges.contains_key(&key) && node.edges.len() >= MAX_EDGES {
                continue;
            }
            node.edges.entry(key).or_default().push(Sample {
                at_ms: now_ms,
                buckets: edge.buckets,
                failures: edge.failures,
            });
        }
        // Edges the proxy no longer reports (a route removed) leave once out of the window.
        node.edges.retain(|_, w| {
            w.last_at()
                .is_some_and(|at| at + window::WINDOW_MS >= now_ms)
        });
    }

    /// Edges (source workload or node → destination service, per listener and route) with
    /// their rates summed over the proxies they start from, the services' endpoints as each
    /// proxy sees them, and what each proxy reported last, at `now_ms`.
    pub fn view(&self, now_ms: u64) -> (Vec<Value>, Vec<Value>, BTreeMap<String, Value>) {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let mut merged: BTreeMap<EdgeKey<'_>, MergedEdge<'_>> = BTreeMap::new();
        let mut services = Vec::new();
        let mut reports = BTreeMap::new();
        for (name, node) in nodes.iter() {
            if node.reported_at + STALE_MS < now_ms {
                continue;
            }
            reports.insert(
                name.clone(),
                json!({"reportedVersion": node.version, "reportedAt": node.reported_at}),
            );
            for ((listener, route, service), w) in &node.edges {
                let key = (
                    node.source.as_str(),
                    service.as_str(),
                    listener.as_str(),
                    route.as_str(),
                );
                let edge = merged.entry(key).or_insert_with(|| MergedEdge {
                    traffic: Traffic::default(),
                    bounds: &node.bounds,
                    nodes: Vec::new(),
                });
                if let Some(traffic) = w.traffic(now_ms) {
                    edge.traffic.add(&traffic);
                }
                edge.nodes.push(name);
            }
            for service in &node.services {
                let mut service = service.clone();
                service["node"] = Value::from(name.as_str());
                services.push(service);
            }
        }
        let edges = merged
            .into_iter()
            .map(|((source, destination, listener, route), edge)| {
                let mut json = json!({
                    "source": source,
                    "destination": destination,
                    "listener": listener,
                    "route": route,
                    "nodes": edge.nodes,
                });
                if let (Some(e), Ok(Value::Object(r))) = (
                    json.as_object_mut(),
                    serde_json::to_value(edge.traffic.rates(edge.bounds)),
                ) {
                    e.extend(r);
                }
                json
            })
            .collect();
        (edges, services, reports)
    }
}

/// An edge in the view: (source, destination, listener, route).
type EdgeKey<'a> = (&'a str, &'a str, &'a str, &'a str);

/// An edge's traffic summed over the proxies it starts from.
struct MergedEdge<'a> {
    traffic: Traffic,
    /// The buckets' bounds (the first proxy's: one binary's, the same for all).
    bounds: &'a [f64],
    /// The proxies it starts from.
    nodes: Vec<&'a String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use report::EdgeCounts;

    fn report(node: &str, edges: usize, count: u64) -> Report {
        Report {
            node: node.into(),
            workload: None,
            version: Some(3),
            bounds: vec![0.001],
            edges: (0..edges)
                .map(|i| EdgeCounts {
                    listener: "web".into(),
                    route: format!("r{i}"),
                    service: format!("s{i}"),
                    buckets: vec![count, 0],
                    failures: 0,
                })
                .collect(),
            services: vec![json!({"name": "s0", "circuit": {"state": "open"}})],
        }
    }

    #[test]
    fn two_reports_make_a_rate_per_edge() {
        let live = Live::default();
        live.ingest(report("pod-a", 1, 0), 1_000);
        live.ingest(report("pod-a", 1, 40), 3_000);
        let (edges, services, reports) = live.view(3_000);
        assert_eq!(edges.len(), 1);
        assert_eq!(edges[0]["source"], "pod-a");
        assert_eq!(edges[0]["destination"], "s0");
        assert_eq!(edges[0]["rps"], 20.0);
        assert_eq!(services[0]["node"], "pod-a");
        assert_eq!(services[0]["circuit"]["state"], "open");
        assert_eq!(reports["pod-a"]["reportedVersion"], 3);
    }

    #[test]
    fn the_replicas_of_a_workload_make_one_edge() {
        let live = Live::default();
        let replica = |node: &str, count| Report {
            workload: Some("productpage".into()),
            ..report(node, 1, count)
        };
        live.ingest(replica("pp-1", 0), 1_000);
        live.ingest(replica("pp-2", 0), 1_000);
        live.ingest(report("other", 1, 0), 1_000);
        live.ingest(replica("pp-1", 40), 3_000);
        live.ingest(replica("pp-2", 20), 3_000);
        live.ingest(report("other", 1, 10), 3_000);
        let (edges, _, reports) = live.view(3_000);
        assert_eq!(reports.len(), 3);
        assert_eq!(edges.len(), 2, "{edges:?}");
        let pp = edges.iter().find(|e| e["source"] == "productpage").unwrap();
        assert_eq!(pp["destination"], "s0");
        assert_eq!(pp["rps"], 30.0);
        assert_eq!(pp["requests"], 60);
        assert_eq!(pp["nodes"], json!(["pp-1", "pp-2"]));
        let other = edges.iter().find(|e| e["source"] == "other").unwrap();
        assert_eq!(other["rps"], 5.0);
    }

    #[test]
    fn edges_per_proxy_and_proxies_are_bounded() {
        let live = Live::default();
        live.ingest(report("pod-a", MAX_EDGES + 50, 1), 1_000);
        assert_eq!(live.view(1_000).0.len(), MAX_EDGES);
        for i in 0..MAX_NODES + 5 {
            live.ingest(report(&format!("n{i}"), 0, 0), 2_000 + i as u64);
        }
        let nodes = live.nodes.lock().unwrap();
        assert_eq!(nodes.len(), MAX_NODES);
        assert!(
            !nodes.contains_key("pod-a"),
            "the least recently heard from went"
        );
    }

    #[test]
    fn a_silent_proxy_leaves_the_view() {
        let live = Live::default();
        live.ingest(report("pod-a", 1, 0), 1_000);
        assert_eq!(live.view(1_000 + STALE_MS).2.len(), 1);
        assert!(live.view(2_000 + STALE_MS).2.is_empty());
    }
}
