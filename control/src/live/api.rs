//! The live view's HTTP side: proxies post reports (`POST /v1/push/report`, a proxy for its own
//! node only), operators read the view (`GET /v1/live`, and `GET /v1/live/stream`: the same
//! JSON as a Server-Sent Event every [`TICK`]), both behind the API's token; the page (`/ui`)
//! is open, as it holds no data: it asks for the token and sends it as a bearer header.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Value};

use super::report::Report;
use super::Live;
use crate::api::{caller, own_node, valid_node, ApiError, AppState};
use crate::auth::Caller;
use crate::bus::Bus;

/// How often the stream sends the view.
pub const TICK: Duration = Duration::from_secs(1);
/// The topics the mesh publishes, shown as recent events.
pub const MESH_TOPICS: [&str; 12] = [
    "mesh.config.applied",
    "mesh.config.rejected",
    "mesh.circuit.opened",
    "mesh.circuit.half-open",
    "mesh.circuit.closed",
    "mesh.endpoint.ejected",
    "mesh.endpoint.returned",
    "mesh.endpoint.healthy",
    "mesh.endpoint.unhealthy",
    "mesh.registry.registered",
    "mesh.registry.deregistered",
    "mesh.registry.expired",
];
/// Most recent events shown.
const RECENT_EVENTS: usize = 30;

/// What the live handlers share.
#[derive(Debug, Clone)]
pub struct LiveState {
    /// The API's state (push: the proxies and their ACK/NACK).
    pub app: Arc<AppState>,
    /// The event bus (recent mesh events).
    pub bus: Arc<Bus>,
    /// The proxies' reports.
    pub live: Arc<Live>,
}

impl LiveState {
    /// The token-protected routes (merged under the API's auth layer).
    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/push/report", post(report))
            .route("/v1/live", get(view))
            .route("/v1/live/stream", get(stream))
            .with_state(self)
    }

    /// The whole view: edges, services, proxies, recent mesh events.
    pub async fn snapshot(&self) -> Value {
        let now = now_ms();
        let (edges, services, reports) = self.live.view(now);
        let proxies: Vec<Value> = self
            .app
            .push
            .list_all()
            .into_iter()
            .map(|mut p| {
                let node = p["node"].as_str().unwrap_or_default().to_owned();
                if let (Some(p), Some(Value::Object(r))) = (p.as_object_mut(), reports.get(&node)) {
                    p.extend(r.clone());
                }
                p
            })
            .collect();
        json!({
            "generatedAt": now,
            "windowSeconds": super::window::WINDOW_MS / 1000,
            "edges": edges,
            "services": services,
            "proxies": proxies,
            "events": self.recent_events().await,
        })
    }

    async fn recent_events(&self) -> Vec<Value> {
        let mut events = Vec::new();
        for topic in MESH_TOPICS {
            match self.bus.history(topic, RECENT_EVENTS).await {
                Ok(found) => events.extend(found),
                Err(e) => tracing::debug!(topic, error = %e, "no history for the live view"),
            }
        }
        events.sort_unstable_by(|a, b| b.published_at.cmp(&a.published_at));
        events.truncate(RECENT_EVENTS);
        events
            .into_iter()
            .filter_map(|e| serde_json::to_value(e).ok())
            .collect()
    }
}

async fn report(
    State(s): State<LiveState>,
    who: Option<Extension<Caller>>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let report: Report = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("bad report: {e}")))?;
    if !valid_node(&report.node) {
        return Err(ApiError::BadRequest("node: invalid name".into()));
    }
    own_node(&s.app, &caller(who), &report.node)?;
    s.live.ingest(report, now_ms());
    Ok(StatusCode::NO_CONTENT)
}

async fn view(State(s): State<LiveState>) -> Json<Value> {
    Json(s.snapshot().await)
}

/// `text/event-stream`: an `event: live` with the view now and every [`TICK`].
async fn stream(State(s): State<LiveState>) -> Response {
    let frames = futures_util::stream::unfold(
        (s, tokio::time::interval(TICK)),
        |(s, mut tick)| async move {
            tick.tick().await;
            let data = s.snapshot().await.to_string();
            let frame = Bytes::from(format!("event: live\ndata: {data}\n\n"));
            Some((Ok::<_, std::convert::Infallible>(frame), (s, tick)))
        },
    );
    let mut resp = Body::from_stream(frames).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The page and what it loads, all from the control (no CDN), open: it holds no data.
pub fn page() -> Router {
    Router::new()
        .route("/ui", get(|| asset(INDEX_HTML, "text/html; charset=utf-8")))
        .route(
            "/ui/",
            get(|| asset(INDEX_HTML, "text/html; charset=utf-8")),
        )
        .route(
            "/ui/app.js",
            get(|| asset(APP_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/ui/style.css",
            get(|| asset(STYLE_CSS, "text/css; charset=utf-8")),
        )
}

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'self'"),
            ),
        ],
        body,
    )
        .into_response()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// OpenAPI 3.0 `paths` entries for the live view's routes.
pub fn openapi_paths() -> Value {
    let ok = |summary: &str, code: &str| json!({"summary": summary, "security": [{"bearer": []}], "responses": {code: {"description": "ok"}}});
    json!({
        "/v1/push/report": {"post": ok("A proxy's live-view report: per-edge cumulative counts, services, version", "204")},
        "/v1/live": {"get": ok("The live view: edges with rate, success rate and p99; services; proxies; recent mesh events", "200")},
        "/v1/live/stream": {"get": ok("The live view as a Server-Sent Event `live` every second", "200")},
        "/ui": {"get": {"summary": "The live page (no token: it asks for one)", "responses": {"200": {"description": "HTML"}}}},
    })
}
