//! Stopping: the first stop signal closes the listeners, lets connections
//! already accepted reach their worker, and tells every worker to drain
//! (keeping its sessions in Redis when there is one: for this host's next
//! run, or, with `cluster.handover_on_stop`, for the other hosts, to which
//! the store hands them once the workers are gone); a second signal or
//! the drain deadline kills what is left. The main loop decides when the
//! supervisor itself exits.

use std::time::Duration;

use mcpgw_protocol::control::{AfterStop, ToWorker};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::{Phase, Supervisor, kill};

impl Supervisor {
    /// First stop signal: drain. A second one: stop now.
    pub(crate) async fn on_stop_signal(
        &mut self,
        name: &str,
        deadline: Option<Instant>,
    ) -> Instant {
        if self.phase == Phase::Draining {
            warn!(signal = name, "second stop signal; killing workers now");
            self.kill_all();
            return deadline.unwrap_or_else(Instant::now);
        }
        info!(
            signal = name,
            "stopping: no new connections; draining workers"
        );
        self.phase = Phase::Draining;
        self.notifier.notify("STOPPING=1\nSTATUS=draining");
        let _ = self.stop_accepting.send(true);
        for (_, stop) in &self.listeners {
            let _ = stop.send(true);
        }
        // Connections already accepted get to their worker before it is told
        // to stop, so none is accepted and then dropped.
        self.in_flight
            .wait_idle(self.config.limits.header_timeout() + Duration::from_secs(1))
            .await;
        let grace_ms = self.config.shutdown.grace_ms;
        // Sessions recorded in Redis outlive this run: the next one resumes them.
        let sessions = if self.config.store.redis_url.is_some() {
            AfterStop::Keep
        } else {
            AfterStop::Close
        };
        for life in &self.life {
            let Some(w) = life.current.clone() else {
                continue;
            };
            tokio::spawn(async move {
                if w.control
                    .lock()
                    .await
                    .send(&ToWorker::Shutdown { grace_ms, sessions })
                    .await
                    .is_err()
                {
                    kill(w.pid);
                }
            });
        }
        Instant::now() + Duration::from_millis(grace_ms) + Duration::from_secs(5)
    }

    pub(crate) fn kill_all(&self) {
        for w in self.life.iter().filter_map(|l| l.current.as_ref()) {
            kill(w.pid);
        }
    }
}
