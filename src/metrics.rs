//! The gateway's metrics: one typed struct, rendered as Prometheus text by the admin API.
//!
//! Labels are bounded (STYLE §2.9): a route is labelled by its pattern as configured
//! (`GET /orders/{id}`), never by the request path, and decisions and reasons are the
//! `&'static str`s of `policy::Reason` and `Refusal::reason`. The hot path allocates nothing:
//! each generation of the gateway holds one `Arc<RouteMetrics>` per route, taken from a
//! registry keyed by the route label, so counts survive a reload for routes that stay. A
//! route's outcome counters are a short list behind a read lock; a new `(decision, reason)`
//! pair takes the write lock once.
//!
//! Figures owned by other parts (Redis counters, audit queue and spool) are read at render
//! time from the current gateway, so they are never copied or double counted.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use crate::config::{RouteEntry, Snapshot};

/// Upper bounds of the latency histograms, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A fixed-bucket histogram of durations (lock-free).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b)
            && let Some(bucket) = self.buckets.get(i)
        {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

/// One counter per `(decision, reason)` pair seen on a route.
type Outcomes = RwLock<Vec<(&'static str, &'static str, AtomicU64)>>;

/// Everything counted per route. Handles are shared by every generation that has the route.
#[derive(Debug)]
pub struct RouteMetrics {
    /// Already escaped for a label value.
    label: Box<str>,
    outcomes: Outcomes,
    shadow: RwLock<Vec<(&'static str, AtomicU64)>>,
    pub decision_latency: Histogram,
    pub upstream_latency: Histogram,
}

impl RouteMetrics {
    fn new(label: &str) -> RouteMetrics {
        RouteMetrics {
            label: escape(label).into(),
            outcomes: RwLock::default(),
            shadow: RwLock::default(),
            decision_latency: Histogram::default(),
            upstream_latency: Histogram::default(),
        }
    }

    /// One finished request. `reason` is `""` for a plain allow.
    pub fn request(&self, decision: &'static str, reason: &'static str) {
        {
            let list = self.outcomes.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, _, n)) = list.iter().find(|(d, r, _)| *d == decision && *r == reason) {
                n.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut list = self
            .outcomes
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match list.iter().find(|(d, r, _)| *d == decision && *r == reason) {
            Some((_, _, n)) => {
                n.fetch_add(1, Ordering::Relaxed);
            }
            None => list.push((decision, reason, AtomicU64::new(1))),
        }
    }

    /// A monitor-mode denial that was forwarded anyway.
    pub fn shadow_denial(&self, reason: &'static str) {
        {
            let list = self.shadow.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, n)) = list.iter().find(|(r, _)| *r == reason) {
                n.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut list = self.shadow.write().unwrap_or_else(PoisonError::into_inner);
        match list.iter().find(|(r, _)| *r == reason) {
            Some((_, n)) => {
                n.fetch_add(1, Ordering::Relaxed);
            }
            None => list.push((reason, AtomicU64::new(1))),
        }
    }
}

/// Why a WebSocket tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// Either side closed it, or an I/O error.
    Closed,
    /// The principal's grants were invalidated.
    Revoked,
    /// `websocket_max_lifetime` passed.
    Lifetime,
}

/// The gateway's counters and gauges; one per process, shared by every generation.
#[derive(Debug)]
pub struct Metrics {
    routes: Mutex<HashMap<String, Arc<RouteMetrics>>>,
    /// Requests no route matched (and refusals before routing).
    pub unrouted: Arc<RouteMetrics>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub generation: AtomicU64,
    /// Unix seconds of the last successful reload (or start).
    pub loaded_at: AtomicU64,
    pub tunnels_open: AtomicI64,
    tunnels_closed: [AtomicU64; 3],
    pub jwks_refreshes_ok: AtomicU64,
    pub jwks_refreshes_failed: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            routes: Mutex::default(),
            unrouted: Arc::new(RouteMetrics::new("")),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            loaded_at: AtomicU64::new(0),
            tunnels_open: AtomicI64::new(0),
            tunnels_closed: Default::default(),
            jwks_refreshes_ok: AtomicU64::new(0),
            jwks_refreshes_failed: AtomicU64::new(0),
        }
    }
}

/// The `route` label of an entry: its methods and pattern, as `check` and audit name it.
pub fn route_label(entry: &RouteEntry) -> String {
    let methods: Vec<&str> = entry.methods.iter().map(http::Method::as_str).collect();
    let methods = if methods.is_empty() {
        "*".to_owned()
    } else {
        methods.join(",")
    };
    format!("{methods} {}", entry.path)
}

impl Metrics {
    /// Handles for every route of `snapshot`, indexed like `route_entries`.
    pub fn routes_for(&self, snapshot: &Snapshot) -> Vec<Arc<RouteMetrics>> {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        snapshot
            .route_entries
            .iter()
            .map(|entry| {
                let label = route_label(entry);
                routes
                    .entry(label)
                    .or_insert_with_key(|label| Arc::new(RouteMetrics::new(label)))
                    .clone()
            })
            .collect()
    }

    pub fn tunnel_closed(&self, end: TunnelEnd) {
        let i = match end {
            TunnelEnd::Closed => 0,
            TunnelEnd::Revoked => 1,
            TunnelEnd::Lifetime => 2,
        };
        if let Some(n) = self.tunnels_closed.get(i) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        self.tunnels_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition (version 0.0.4) of everything, reading the live figures
    /// from `gateway`.
    pub fn render(&self, gateway: &crate::proxy::Gateway) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let mut routes: Vec<Arc<RouteMetrics>> = self
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        routes.sort_by(|a, b| a.label.cmp(&b.label));
        routes.push(self.unrouted.clone());

        header(
            &mut out,
            "portcullis_requests_total",
            "counter",
            "Requests by route, decision (allow, deny, error) and reason.",
        );
        for r in &routes {
            let list = r.outcomes.read().unwrap_or_else(PoisonError::into_inner);
            for (decision, reason, n) in list.iter() {
                let _ = writeln!(
                    out,
                    "portcullis_requests_total{{route=\"{}\",decision=\"{decision}\",reason=\"{reason}\"}} {}",
                    r.label,
                    n.load(Ordering::Relaxed)
                );
            }
        }
        header(
            &mut out,
            "portcullis_authz_shadow_denials_total",
            "counter",
            "Monitor-mode denials that were forwarded anyway (what enforce mode would refuse).",
        );
        for r in &routes {
            let list = r.shadow.read().unwrap_or_else(PoisonError::into_inner);
            for (reason, n) in list.iter() {
                let _ = writeln!(
                    out,
                    "portcullis_authz_shadow_denials_total{{route=\"{}\",reason=\"{reason}\"}} {}",
                    r.label,
                    n.load(Ordering::Relaxed)
                );
            }
        }
        header(
            &mut out,
            "portcullis_decision_duration_seconds",
            "histogram",
            "From request arrival to the authorization decision.",
        );
        for r in &routes {
            if r.decision_latency.count() > 0 {
                let labels = format!("route=\"{}\"", r.label);
                r.decision_latency.render(
                    &mut out,
                    "portcullis_decision_duration_seconds",
                    &labels,
                );
            }
        }
        header(
            &mut out,
            "portcullis_upstream_duration_seconds",
            "histogram",
            "From the decision to the upstream response head (building the upstream request included).",
        );
        for r in &routes {
            if r.upstream_latency.count() > 0 {
                let labels = format!("route=\"{}\"", r.label);
                r.upstream_latency.render(
                    &mut out,
                    "portcullis_upstream_duration_seconds",
                    &labels,
                );
            }
        }

        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        simple(
            &mut out,
            "portcullis_config_reloads_total",
            "counter",
            "Config reloads by result.",
            &[
                ("result=\"success\"", load(&self.reloads_ok)),
                ("result=\"failure\"", load(&self.reloads_failed)),
            ],
        );
        simple(
            &mut out,
            "portcullis_config_generation",
            "gauge",
            "Generation of the active config (1 at start, +1 per applied reload).",
            &[("", load(&self.generation))],
        );
        simple(
            &mut out,
            "portcullis_config_last_reload_timestamp_seconds",
            "gauge",
            "When the active config was loaded (Unix time).",
            &[("", load(&self.loaded_at))],
        );
        let open = u64::try_from(self.tunnels_open.load(Ordering::Relaxed)).unwrap_or(0);
        simple(
            &mut out,
            "portcullis_websocket_tunnels_open",
            "gauge",
            "WebSocket tunnels currently open.",
            &[("", open)],
        );
        let closed = |i: usize| self.tunnels_closed.get(i).map_or(0, load);
        simple(
            &mut out,
            "portcullis_websocket_tunnels_closed_total",
            "counter",
            "WebSocket tunnels ended, by cause.",
            &[
                ("cause=\"closed\"", closed(0)),
                ("cause=\"revoked\"", closed(1)),
                ("cause=\"lifetime\"", closed(2)),
            ],
        );
        simple(
            &mut out,
            "portcullis_jwks_refreshes_total",
            "counter",
            "JWKS downloads from `jwks_url` by result.",
            &[
                ("result=\"success\"", load(&self.jwks_refreshes_ok)),
                ("result=\"failure\"", load(&self.jwks_refreshes_failed)),
            ],
        );

        if let Some(redis) = gateway.store.redis() {
            let health = redis.health();
            simple(
                &mut out,
                "portcullis_grants_cache_hits_total",
                "counter",
                "Grant lookups answered from the in-process cache.",
                &[("", redis.cache_hits())],
            );
            simple(
                &mut out,
                "portcullis_grants_cache_misses_total",
                "counter",
                "Grant lookups that had to ask Redis.",
                &[("", redis.cache_misses())],
            );
            simple(
                &mut out,
                "portcullis_grants_cached_principals",
                "gauge",
                "Principals in the grant cache.",
                &[("", redis.cached_principals() as u64)],
            );
            simple(
                &mut out,
                "portcullis_redis_round_trips_total",
                "counter",
                "Round trips to Redis for lookups.",
                &[("", redis.round_trips())],
            );
            simple(
                &mut out,
                "portcullis_redis_errors_total",
                "counter",
                "Redis lookups that failed (timeouts, connection errors).",
                &[("", redis.errors())],
            );
            simple(
                &mut out,
                "portcullis_redis_data_errors_total",
                "counter",
                "Malformed grant data read from Redis.",
                &[("", redis.data_errors())],
            );
            simple(
                &mut out,
                "portcullis_redis_invalidations_total",
                "counter",
                "Invalidation messages applied.",
                &[("", redis.invalidations())],
            );
            simple(
                &mut out,
                "portcullis_redis_up",
                "gauge",
                "1 when connected and subscribed to invalidations.",
                &[("", u64::from(health.ready()))],
            );
        }

        let audit = gateway.audit.stats();
        simple(
            &mut out,
            "portcullis_audit_events_written_total",
            "counter",
            "Audit events appended to the spool.",
            &[("", audit.written)],
        );
        simple(
            &mut out,
            "portcullis_audit_events_dropped_total",
            "counter",
            "Audit events that never reached the spool (`on_full = \"drop\"`).",
            &[("", audit.dropped)],
        );
        simple(
            &mut out,
            "portcullis_audit_events_refused_total",
            "counter",
            "Requests refused because the audit spool was full.",
            &[("", audit.refused)],
        );
        simple(
            &mut out,
            "portcullis_audit_spool_bytes",
            "gauge",
            "Bytes held in the audit spool.",
            &[("", audit.spool_bytes)],
        );
        simple(
            &mut out,
            "portcullis_audit_spool_head",
            "gauge",
            "Sequence number of the last spooled event.",
            &[("", audit.head)],
        );
        let sink_rows: Vec<(String, u64)> = audit
            .sinks
            .iter()
            .map(|s| (format!("sink=\"{}\"", escape(&s.name)), s.delivered))
            .collect();
        let lag_rows: Vec<(String, u64)> = audit
            .sinks
            .iter()
            .map(|s| {
                (
                    format!("sink=\"{}\"", escape(&s.name)),
                    audit.head.saturating_sub(s.cursor),
                )
            })
            .collect();
        let dead_rows: Vec<(String, u64)> = audit
            .sinks
            .iter()
            .map(|s| (format!("sink=\"{}\"", escape(&s.name)), s.dead_lettered))
            .collect();
        simple(
            &mut out,
            "portcullis_audit_sink_delivered_total",
            "counter",
            "Events a sink acknowledged.",
            &rows(&sink_rows),
        );
        simple(
            &mut out,
            "portcullis_audit_sink_lag_events",
            "gauge",
            "Spooled events a sink has not acknowledged yet.",
            &rows(&lag_rows),
        );
        simple(
            &mut out,
            "portcullis_audit_sink_dead_lettered_total",
            "counter",
            "Events a sink rejected permanently.",
            &rows(&dead_rows),
        );
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A metric with one sample per `(labels, value)` row.
fn simple(out: &mut String, name: &str, kind: &str, help: &str, rows: &[(&str, u64)]) {
    header(out, name, kind, help);
    for (labels, value) in rows {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

fn rows(v: &[(String, u64)]) -> Vec<(&str, u64)> {
    v.iter().map(|(l, n)| (l.as_str(), *n)).collect()
}

/// Prometheus label-value escaping: backslash, double quote, newline.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(30));
        let mut out = String::new();
        h.render(&mut out, "x", "route=\"r\"");
        assert!(
            out.contains("x_bucket{route=\"r\",le=\"0.0005\"} 1"),
            "{out}"
        );
        assert!(out.contains("x_bucket{route=\"r\",le=\"0.05\"} 2"), "{out}");
        assert!(out.contains("x_bucket{route=\"r\",le=\"+Inf\"} 2"), "{out}");
        assert!(out.contains("x_count{route=\"r\"} 2"), "{out}");
    }

    #[test]
    fn outcomes_count_per_pair() {
        let r = RouteMetrics::new("GET /a\"b");
        r.request("allow", "");
        r.request("allow", "");
        r.request("deny", "missing_permission");
        let list = r.outcomes.read().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].2.load(Ordering::Relaxed), 2);
        assert_eq!(&*r.label, "GET /a\\\"b");
    }
}
