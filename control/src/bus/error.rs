//! The bus's errors, and the one place they become HTTP answers.

use axum::response::{IntoResponse, Response};
use http::StatusCode;

/// Everything that can go wrong in the event bus. Each error knows its HTTP status
/// ([`BusError::status`]); the message is written for the client that caused it.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// A topic that does not follow the syntax.
    #[error("invalid topic `{topic}`: {reason}; topics are 1 to 16 dot-separated segments of letters, digits, `_` and `-`, at most 256 characters, e.g. `mesh.config.applied`")]
    InvalidTopic {
        /// The topic as given.
        topic: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A subscription pattern that does not follow the syntax.
    #[error("invalid pattern `{pattern}`: {reason}; a pattern is a topic whose segments may also be `*` (exactly one segment) or, last only, `>` (one or more segments), e.g. `mesh.*.applied` or `mesh.>`")]
    InvalidPattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A request that is malformed or out of bounds (bad JSON, a bad field value).
    #[error("{0}")]
    BadRequest(String),
    /// A request body above the limit.
    #[error("request body is larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// No durable subscription of that name.
    #[error("no durable subscription named `{0}`")]
    NoSubscription(String),
    /// The request contradicts existing state.
    #[error("{0}")]
    Conflict(String),
    /// A bound was reached (subscribers, durable subscriptions).
    #[error("{0}")]
    Overloaded(String),
    /// The embedded store failed.
    #[error("event store: {context}: {source}")]
    Store {
        /// What the bus was doing.
        context: &'static str,
        /// The underlying error (boxed: redb's error is large).
        #[source]
        source: Box<redb::Error>,
    },
    /// Something stored or to be stored could not be (de)serialised.
    #[error("event store: {context}: {source}")]
    Encoding {
        /// What the bus was doing.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// A commit failed; the change it carried was not made.
    #[error("event store: the change was not saved: {0}")]
    BatchFailed(String),
    /// The writer thread could not be started.
    #[error("starting the event bus writer thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The NATS JetStream server failed or could not be reached.
    #[error("event bus (NATS JetStream): {context}: {message}")]
    Nats {
        /// What the bus was doing.
        context: &'static str,
        /// What the client library said.
        message: String,
    },
    /// The bus's writer is gone (the bus is shutting down, or its thread failed).
    #[error("the event bus is shutting down")]
    Closed,
}

impl BusError {
    /// Wraps a redb error with what the bus was doing.
    pub(crate) fn store<E: Into<redb::Error>>(context: &'static str) -> impl FnOnce(E) -> BusError {
        move |e| BusError::Store {
            context,
            source: Box::new(e.into()),
        }
    }

    /// Wraps a JSON error with what the bus was doing.
    pub(crate) fn encoding(context: &'static str) -> impl FnOnce(serde_json::Error) -> BusError {
        move |source| BusError::Encoding { context, source }
    }

    /// Wraps a NATS client error with what the bus was doing.
    pub(crate) fn nats<E: std::fmt::Display>(context: &'static str) -> impl FnOnce(E) -> BusError {
        move |e| BusError::Nats {
            context,
            message: e.to_string(),
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            BusError::InvalidTopic { .. }
            | BusError::InvalidPattern { .. }
            | BusError::BadRequest(_) => StatusCode::BAD_REQUEST,
            BusError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BusError::NoSubscription(_) => StatusCode::NOT_FOUND,
            BusError::Conflict(_) => StatusCode::CONFLICT,
            BusError::Overloaded(_) | BusError::Closed | BusError::Nats { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            BusError::Store { .. }
            | BusError::Encoding { .. }
            | BusError::BatchFailed(_)
            | BusError::Spawn(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for BusError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "event bus request failed");
        }
        let body = serde_json::json!({ "error": self.to_string() });
        (status, axum::Json(body)).into_response()
    }
}
