//! `strait_request_duration_seconds`: a histogram of fixed buckets of atomic counters, one per
//! (listener, route, service, client_id), rendered in the Prometheus text format after the exporter's
//! metrics.
//!
//! Not the exporter's histogram: that one keeps every recorded value, with a clock reading,
//! until its upkeep drains them into buckets. Between two upkeeps (5 s) a proxy at 65k
//! requests/s held ~5 MB of samples, in blocks freed through crossbeam-epoch only after enough
//! later pins, so after a burst the memory stayed: 2.2 MB still held 30 s after a 3 s,
//! 10-connection `wrk` run. Here a request adds to two counters and allocates nothing.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Upper bounds of the buckets, in seconds (`le`); a last bucket takes the rest (`+Inf`).
const BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A live-view edge: listener, route, service.
type Edge = (Arc<str>, Arc<str>, Arc<str>);

/// A histogram's labels: listener, route, service, client_id.
type Labels = (Arc<str>, Arc<str>, Arc<str>, Arc<str>);

/// Every histogram made, by its labels: kept for good, as the exporter keeps a series once
/// recorded, and shared by the route tables of successive reloads. Hashed, not ordered: a
/// reload of 10,000 routes looks up 10,000 labels; the render sorts.
static REGISTRY: Mutex<Option<HashMap<Labels, Arc<DurationHistogram>>>> = Mutex::new(None);

/// The request durations of one (listener, route, service, client_id).
#[derive(Debug)]
pub struct DurationHistogram {
    /// Observations per bucket, not cumulative: `buckets[i]` counts those in
    /// (`BOUNDS[i-1]`, `BOUNDS[i]`]; the last, those above every bound.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    /// The sum of the observations, in nanoseconds.
    sum_nanos: AtomicU64,
    /// Observations of failed requests (5xx), for the live view's success rate.
    failures: AtomicU64,
}

impl DurationHistogram {
    /// Records one request that took `seconds` (negative and NaN count as 0), `failed` when
    /// it was answered 5xx.
    pub fn record(&self, seconds: f64, failed: bool) {
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        let bucket = BOUNDS.partition_point(|&bound| bound < seconds);
        if let Some(count) = self.buckets.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        // `as` saturates: NaN and negatives give 0, overflows u64::MAX.
        let nanos = (seconds * 1e9) as u64;
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// The histogram for these labels, made on first use (at config compile time, or on a
/// client identity's first request: never twice for the same labels).
pub fn histogram(
    listener: &Arc<str>,
    route: &Arc<str>,
    service: &Arc<str>,
    client: &Arc<str>,
) -> Arc<DurationHistogram> {
    let labels = (
        listener.clone(),
        route.clone(),
        service.clone(),
        client.clone(),
    );
    let mut registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    registry
        .get_or_insert_with(HashMap::new)
        .entry(labels)
        .or_insert_with(|| {
            Arc::new(DurationHistogram {
                buckets: Default::default(),
                sum_nanos: AtomicU64::new(0),
                failures: AtomicU64::new(0),
            })
        })
        .clone()
}

/// The upper bounds of the buckets of [`Figures::buckets`] (the last bucket has none).
pub fn bounds() -> &'static [f64] {
    &BOUNDS
}

/// What one histogram has counted since the proxy started.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// Listener name.
    pub listener: Arc<str>,
    /// Route name.
    pub route: Arc<str>,
    /// Service name.
    pub service: Arc<str>,
    /// Observations per bucket (not cumulative), one more than [`bounds`].
    pub buckets: Vec<u64>,
    /// Failed (5xx) requests.
    pub failures: u64,
}

/// The counts of every (listener, route, service), its sources' histograms summed, read off
/// the request path (for the live view).
pub fn figures() -> Vec<Figures> {
    let registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(registry) = registry.as_ref() else {
        return Vec::new();
    };
    let mut summed: HashMap<Edge, Figures> = HashMap::new();
    for ((listener, route, service, _client), h) in registry {
        let key = (listener.clone(), route.clone(), service.clone());
        let entry = summed.entry(key).or_insert_with(|| Figures {
            listener: listener.clone(),
            route: route.clone(),
            service: service.clone(),
            buckets: vec![0; h.buckets.len()],
            failures: 0,
        });
        for (sum, count) in entry.buckets.iter_mut().zip(&h.buckets) {
            *sum += count.load(Ordering::Relaxed);
        }
        entry.failures += h.failures.load(Ordering::Relaxed);
    }
    summed.into_values().collect()
}

/// Appends every histogram to `out` in the Prometheus text format (0.0.4), with its HELP and
/// TYPE lines; nothing when none has been made.
pub fn render(name: &str, help: &str, out: &mut String) {
    let mut series: Vec<(String, Arc<DurationHistogram>)> = {
        let registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(registry) = registry.as_ref().filter(|r| !r.is_empty()) else {
            return;
        };
        registry
            .iter()
            .map(|((listener, route, service, client), h)| {
                (label_text(listener, route, service, client), h.clone())
            })
            .collect()
    };
    series.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (labels, h) in &series {
        let mut cumulative = 0u64;
        for (i, count) in h.buckets.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            match BOUNDS.get(i) {
                Some(bound) => {
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// `listener="…",route="…",service="…",client_id="…"`, escaped.
fn label_text(listener: &str, route: &str, service: &str, client: &str) -> String {
    let mut text = String::new();
    for (i, (name, value)) in [
        ("listener", listener),
        ("route", route),
        ("service", service),
        ("client_id", client),
    ]
    .into_iter()
    .enumerate()
    {
        if i > 0 {
            text.push(',');
        }
        let _ = write!(text, "{name}=\"");
        escape_label_value(&mut text, value);
        text.push('"');
    }
    text
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(listener: &str, route: &str, service: &str) -> Arc<DurationHistogram> {
        super::histogram(&listener.into(), &route.into(), &service.into(), &"".into())
    }

    fn series<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn observations_land_in_cumulative_buckets_with_sum_and_count() {
        let h = histogram("l-cumulative", "r", "s");
        for seconds in [0.0002, 0.0005, 0.003, 20.0] {
            h.record(seconds, false);
        }
        let mut out = String::new();
        render("d", "help", &mut out);
        let prefix = "d_bucket{listener=\"l-cumulative\",route=\"r\",service=\"s\",client_id=\"\",";
        let buckets = series(&out, prefix);
        assert_eq!(buckets.len(), BOUNDS.len() + 1);
        // `le` is inclusive: 0.0005 is in the first bucket.
        assert_eq!(buckets[0], format!("{prefix}le=\"0.0005\"}} 2"));
        assert_eq!(buckets[1], format!("{prefix}le=\"0.001\"}} 2"));
        assert_eq!(buckets[3], format!("{prefix}le=\"0.005\"}} 3"));
        assert_eq!(buckets[13], format!("{prefix}le=\"10\"}} 3"));
        assert_eq!(buckets[14], format!("{prefix}le=\"+Inf\"}} 4"));
        let labels = "{listener=\"l-cumulative\",route=\"r\",service=\"s\",client_id=\"\"}";
        assert!(out.contains(&format!("d_count{labels} 4\n")), "{out}");
        let sum = series(&out, &format!("d_sum{labels}"));
        let sum: f64 = sum[0].rsplit(' ').next().unwrap().parse().unwrap();
        assert!((sum - 20.0037).abs() < 1e-9, "{sum}");
        assert!(out.contains("# TYPE d histogram\n"));
    }

    #[test]
    fn the_same_labels_share_one_histogram_across_reloads() {
        let a = histogram("l-shared", "r", "s");
        let b = histogram("l-shared", "r", "s");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &histogram("l-shared", "r", "other")));
    }

    #[test]
    fn label_values_are_escaped_and_odd_durations_count_as_zero() {
        let h = histogram("l-escape", "a\"b\\c\nd", "");
        h.record(f64::NAN, false);
        h.record(-1.0, true);
        let mut out = String::new();
        render("d", "help", &mut out);
        let labels =
            "{listener=\"l-escape\",route=\"a\\\"b\\\\c\\nd\",service=\"\",client_id=\"\"}";
        assert!(out.contains(&format!("d_count{labels} 2\n")), "{out}");
        assert!(out.contains(&format!("d_sum{labels} 0\n")), "{out}");
    }

    #[test]
    fn figures_count_buckets_and_failures() {
        let h = histogram("l-figures", "r", "s");
        h.record(0.0001, false);
        h.record(20.0, true);
        let all = figures();
        let one = all.iter().find(|f| &*f.listener == "l-figures").unwrap();
        assert_eq!(one.buckets.len(), bounds().len() + 1);
        assert_eq!((one.buckets[0], one.buckets[BOUNDS.len()]), (1, 1));
        assert_eq!(one.failures, 1);
    }

    #[test]
    fn figures_sum_the_sources_of_one_route_and_service() {
        let of = |client: &str| {
            super::histogram(
                &"l-sources".into(),
                &"r".into(),
                &"s".into(),
                &client.into(),
            )
        };
        of("frontend").record(0.0001, false);
        of("spiffe://td/ns/a/sa/b").record(0.0001, true);
        let all = figures();
        let mine: Vec<_> = all.iter().filter(|f| &*f.listener == "l-sources").collect();
        assert_eq!(mine.len(), 1, "one edge per (listener, route, service)");
        assert_eq!((mine[0].buckets[0], mine[0].failures), (2, 1));
    }
}
