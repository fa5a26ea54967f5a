//! Long-lived per-service state (kept across reloads while the service exists).

use std::sync::Arc;

use super::retry_budget::RetryBudget;

/// What a service accumulates over time, beyond any one config version.
#[derive(Debug)]
pub struct ServiceState {
    /// Recent requests and retries, for retry budgets.
    pub budget: RetryBudget,
    /// `strait_upstream_retries_total{service}`.
    pub retries: metrics::Counter,
}

impl ServiceState {
    /// Fresh state for service `name`.
    pub fn new(name: &Arc<str>) -> Self {
        Self {
            budget: RetryBudget::default(),
            retries: metrics::counter!(crate::metrics::UPSTREAM_RETRIES, "service" => name.clone()),
        }
    }
}
