//! The supervisor's own metrics, and merging every worker's exposition into
//! one page under a `worker` label.
//!
//! Workers render their registries as Prometheus text; the supervisor does not
//! decode them into values. It groups sample lines by metric family (so each
//! family appears once, as the format requires) and inserts the `worker`
//! label into each sample line.

use std::collections::HashMap;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub(crate) struct Metrics {
    registry: Registry,
    /// `worker` (slot).
    pub dispatched: IntCounterVec,
    pub dispatch_seconds: Histogram,
    /// `reason` (head_too_large, head_timeout, malformed, unavailable,
    /// pending_limit).
    pub rejected: IntCounterVec,
    /// Connections held while their request heads are read.
    pub pending: IntGauge,
    /// `worker` (slot).
    pub restarts: IntCounterVec,
    pub workers_serving: IntGauge,
    /// `result` (ok, failed).
    pub reloads: IntCounterVec,
    /// `listener` (configured address).
    tls_expiry: IntGaugeVec,
    /// Sessions moved to a replacement worker by compare-and-swap.
    pub reassigned: prometheus::IntCounter,
    /// Workers killed for missing heartbeats.
    pub hung: prometheus::IntCounter,
    /// Session records this supervisor holds (its own workers' sessions).
    pub stored_sessions: IntGauge,
    /// Redis operations that failed, by `op` (write, fetch, heartbeat,
    /// reassign).
    pub store_errors: IntCounterVec,
    /// 1 while the store answers (always 1 for the embedded store).
    pub store_up: IntGauge,
    /// Full re-registrations after Redis came back without our records.
    pub store_resyncs: prometheus::IntCounter,
    /// Sessions taken over from a dead owner on their first request (after
    /// a restart of the gateway, or from another host).
    pub claimed: prometheus::IntCounter,
    /// Slots given up on after repeated start failures.
    pub slots_down: IntGauge,
    /// `[cluster]`: sessions each member host published with its last
    /// heartbeat, by `host` (bounded by the cluster's size).
    pub member_sessions: IntGaugeVec,
    /// `[cluster]`: seconds since each member's last heartbeat, by `host`.
    pub member_age: prometheus::GaugeVec,
    /// `[cluster]`: member hosts whose heartbeat is younger than the TTL.
    pub members_live: IntGauge,
    /// `[cluster]`: sessions this host took over from a dead host before
    /// any request asked, by `from_host` (bounded by the cluster's size).
    pub cluster_claimed: IntCounterVec,
}

impl Metrics {
    pub(crate) fn new(slots: u16) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let dispatched = IntCounterVec::new(
            Opts::new(
                "mcpgw_connections_dispatched_total",
                "Connections handed to a worker, by worker slot.",
            ),
            &["worker"],
        )?;
        let dispatch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "mcpgw_dispatch_duration_seconds",
                "From accept to the fd handed to a worker (includes waiting for the request head).",
            )
            .buckets(vec![
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0,
            ]),
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "mcpgw_connections_rejected_total",
                "Connections the supervisor answered itself, by reason.",
            ),
            &["reason"],
        )?;
        let restarts = IntCounterVec::new(
            Opts::new(
                "mcpgw_worker_restarts_total",
                "Worker processes restarted, by slot.",
            ),
            &["worker"],
        )?;
        let workers_serving = IntGauge::new("mcpgw_workers_serving", "Worker processes serving.")?;
        let reloads = IntCounterVec::new(
            Opts::new("mcpgw_reloads_total", "Configuration reloads, by result."),
            &["result"],
        )?;
        // Bounded label sets appear from the start, so a dashboard sees zeros.
        for result in ["ok", "failed"] {
            reloads.with_label_values(&[result]);
        }
        for reason in crate::dispatch::REJECT_REASONS {
            rejected.with_label_values(&[reason]);
        }
        let pending = IntGauge::new(
            "mcpgw_connections_pending",
            "Connections the supervisor holds while it reads their request heads (capped by limits.max_pending_connections).",
        )?;
        let build = IntGaugeVec::new(
            Opts::new(
                "mcpgw_build_info",
                "Build information; the value is always 1.",
            ),
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(dispatched.clone()))?;
        // process_* of the supervisor itself; each worker exports its own,
        // under its `worker` label once merged.
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        registry.register(Box::new(dispatch_seconds.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(restarts.clone()))?;
        for slot in 0..slots {
            restarts.with_label_values(&[&slot.to_string()]);
        }
        registry.register(Box::new(workers_serving.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        let tls_expiry = IntGaugeVec::new(
            Opts::new(
                "mcpgw_tls_certificate_expiry_timestamp_seconds",
                "When each TLS listener's certificate expires (Unix time).",
            ),
            &["listener"],
        )?;
        registry.register(Box::new(tls_expiry.clone()))?;
        let reassigned = prometheus::IntCounter::new(
            "mcpgw_sessions_reassigned_total",
            "Sessions moved to a replacement worker after their owner died.",
        )?;
        let hung = prometheus::IntCounter::new(
            "mcpgw_workers_hung_total",
            "Workers killed because they stopped sending heartbeats.",
        )?;
        let stored_sessions = IntGauge::new(
            "mcpgw_store_sessions",
            "Session records held by the embedded store.",
        )?;
        let store_errors = IntCounterVec::new(
            Opts::new(
                "mcpgw_store_errors_total",
                "Session store (Redis) operations that failed, by operation.",
            ),
            &["op"],
        )?;
        let store_up = IntGauge::new(
            "mcpgw_store_up",
            "1 while the session store answers, 0 while Redis is unreachable.",
        )?;
        let store_resyncs = prometheus::IntCounter::new(
            "mcpgw_store_resyncs_total",
            "Times every live session was written again because Redis had lost them.",
        )?;
        let claimed = prometheus::IntCounter::new(
            "mcpgw_sessions_claimed_total",
            "Sessions taken over from a dead owner (earlier run or another host) on first use.",
        )?;
        let slots_down = IntGauge::new(
            "mcpgw_worker_slots_down",
            "Worker slots marked down after repeated start failures; their sessions are served elsewhere.",
        )?;
        let member_sessions = IntGaugeVec::new(
            Opts::new(
                "mcpgw_cluster_member_sessions",
                "Sessions each gateway host of the cluster holds, as of its last heartbeat.",
            ),
            &["host"],
        )?;
        let member_age = prometheus::GaugeVec::new(
            Opts::new(
                "mcpgw_cluster_member_heartbeat_age_seconds",
                "Seconds since each gateway host of the cluster last published its heartbeat.",
            ),
            &["host"],
        )?;
        let members_live = IntGauge::new(
            "mcpgw_cluster_members_live",
            "Gateway hosts of the cluster whose heartbeat has not expired (this one included).",
        )?;
        registry.register(Box::new(member_sessions.clone()))?;
        registry.register(Box::new(member_age.clone()))?;
        registry.register(Box::new(members_live.clone()))?;
        let cluster_claimed = IntCounterVec::new(
            Opts::new(
                "mcpgw_cluster_claimed_sessions_total",
                "Sessions this host claimed from a dead gateway host of the cluster (all its heartbeats expired; or, after a handover on stop, what it could not hand over), by the host they came from.",
            ),
            &["from_host"],
        )?;
        registry.register(Box::new(cluster_claimed.clone()))?;
        store_up.set(1);
        registry.register(Box::new(store_errors.clone()))?;
        registry.register(Box::new(store_up.clone()))?;
        registry.register(Box::new(store_resyncs.clone()))?;
        registry.register(Box::new(claimed.clone()))?;
        registry.register(Box::new(slots_down.clone()))?;
        registry.register(Box::new(reassigned.clone()))?;
        registry.register(Box::new(hung.clone()))?;
        registry.register(Box::new(stored_sessions.clone()))?;
        registry.register(Box::new(build))?;
        Ok(Self {
            registry,
            dispatched,
            dispatch_seconds,
            rejected,
            pending,
            restarts,
            workers_serving,
            reloads,
            tls_expiry,
            reassigned,
            hung,
            stored_sessions,
            store_errors,
            store_up,
            store_resyncs,
            claimed,
            slots_down,
            member_sessions,
            member_age,
            members_live,
            cluster_claimed,
        })
    }

    /// Re-read every TLS listener's certificate expiry (start and reload).
    pub(crate) fn set_tls_expiry(&self, config: &mcpgw_protocol::config::Config) {
        self.tls_expiry.reset();
        for t in &config.tls_listener {
            match mcpgw_protocol::tls::not_after(&t.cert) {
                Ok(at) => self
                    .tls_expiry
                    .with_label_values(&[&t.addr.to_string()])
                    .set(at),
                Err(e) => {
                    tracing::warn!(cert = %t.cert.display(), error = %e, "cannot read certificate expiry")
                }
            }
        }
    }

    pub(crate) fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// One exposition page from the supervisor's text and each worker's.
pub(crate) fn merge(own: &str, workers: &[(u16, String)]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut families: HashMap<String, Family> = HashMap::new();
    add(&mut order, &mut families, own, None);
    for (slot, text) in workers {
        add(&mut order, &mut families, text, Some(*slot));
    }
    let mut out =
        String::with_capacity(own.len() + workers.iter().map(|w| w.1.len()).sum::<usize>());
    for name in &order {
        let Some(f) = families.get(name) else {
            continue;
        };
        for line in [&f.help, &f.kind].into_iter().flatten() {
            out.push_str(line);
            out.push('\n');
        }
        for s in &f.samples {
            out.push_str(s);
            out.push('\n');
        }
    }
    out
}

#[derive(Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<String>,
}

fn add(
    order: &mut Vec<String>,
    families: &mut HashMap<String, Family>,
    text: &str,
    slot: Option<u16>,
) {
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
        {
            let name = rest.split(' ').next().unwrap_or("").to_owned();
            let f = families.entry(name.clone()).or_insert_with(|| {
                order.push(name.clone());
                Family::default()
            });
            let slot_for_line = if line.starts_with("# HELP ") {
                &mut f.help
            } else {
                &mut f.kind
            };
            slot_for_line.get_or_insert_with(|| line.to_owned());
            current = name;
        } else if line.is_empty() || line.starts_with('#') {
            continue;
        } else {
            let sample = match slot {
                None => line.to_owned(),
                Some(slot) => with_worker_label(line, slot),
            };
            families
                .entry(current.clone())
                .or_insert_with(|| {
                    order.push(current.clone());
                    Family::default()
                })
                .samples
                .push(sample);
        }
    }
}

fn with_worker_label(sample: &str, slot: u16) -> String {
    let name_end = sample.find(['{', ' ']).unwrap_or(sample.len());
    let (name, rest) = sample.split_at(name_end);
    match rest.strip_prefix('{') {
        Some(labels) => format!("{name}{{worker=\"{slot}\",{labels}"),
        None => format!("{name}{{worker=\"{slot}\"}}{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_appear_once_with_worker_labels() {
        let own = "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n";
        let w = "# HELP b B.\n# TYPE b gauge\nb 2\n# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_sum 4\nh_count 3\n";
        let merged = merge(own, &[(0, w.to_owned()), (1, w.to_owned())]);
        assert_eq!(merged.matches("# TYPE b gauge").count(), 1, "{merged}");
        assert!(merged.contains("a_total 1\n"));
        assert!(
            merged.contains("b{worker=\"0\"} 2\nb{worker=\"1\"} 2\n"),
            "{merged}"
        );
        assert!(
            merged.contains("h_bucket{worker=\"1\",le=\"1\"} 3\n"),
            "{merged}"
        );
        assert!(merged.contains("h_count{worker=\"0\"} 3\n"));
        // Families stay contiguous: h's samples follow h's TYPE line.
        let h = merged.find("# TYPE h").expect("h");
        assert!(
            merged[h..]
                .lines()
                .skip(1)
                .take(6)
                .all(|l| l.starts_with('h')),
            "{merged}"
        );
    }
}
