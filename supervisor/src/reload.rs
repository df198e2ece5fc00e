//! Reloading the configuration (SIGHUP, `POST /admin/reload`): read it
//! again, keep what cannot change without a restart, rebind the listeners
//! that changed, resize the pool, and have every worker apply it, with a
//! restart for any worker that could not. Nothing changes until the new
//! configuration has validated and its new listeners are bound.

use std::sync::Arc;

use mcpgw_protocol::control::ToWorker;
use tracing::{error, info, warn};

use crate::listeners::{self, ListenerKey};
use crate::{Phase, Supervisor, admin, admin_guard, kill, systemd};

impl Supervisor {
    /// SIGHUP or `POST /admin/reload`: read the configuration again and, if
    /// it is valid, apply it everywhere without dropping a request. An
    /// invalid one is logged and counted, and the running one stays.
    pub(crate) async fn reload(&mut self) -> Result<String, String> {
        if self.phase == Phase::Draining {
            return Err("the gateway is stopping".to_owned());
        }
        self.notifier.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            systemd::monotonic_usec()
        ));
        let result = self.apply_reload().await;
        match &result {
            Ok(message) => {
                info!(%message, "reload applied");
                self.metrics.reloads.with_label_values(&["ok"]).inc();
            }
            Err(error) => {
                error!(%error, "reload refused; the running configuration stays in force");
                self.metrics.reloads.with_label_values(&["failed"]).inc();
            }
        }
        self.notifier.notify("READY=1");
        self.report_status();
        result
    }

    async fn apply_reload(&mut self) -> Result<String, String> {
        let mut new = (self.source)()?;
        let mut kept = Vec::new();
        // What cannot change without a restart keeps its running value, and
        // the log says so.
        // Workers learn the effective count from the config they are sent.
        new.workers = Some(new.worker_count());
        if new.admin_listen != self.config.admin_listen {
            kept.push(format!(
                "admin_listen stays {} (restart to apply)",
                self.config.admin_listen
            ));
            new.admin_listen = self.config.admin_listen;
        }
        if new.store != self.config.store {
            kept.push("[store] stays (restart to apply)".to_owned());
            new.store.clone_from(&self.config.store);
        }
        if new.cluster.listen != self.config.cluster.listen
            || new.cluster.advertise != self.config.cluster.advertise
        {
            // The key file may change (it is re-read below and by workers).
            kept.push("cluster.listen and cluster.advertise stay (restart to apply)".to_owned());
            new.cluster.listen = self.config.cluster.listen;
            new.cluster
                .advertise
                .clone_from(&self.config.cluster.advertise);
        }
        if new.runtime_dir != self.config.runtime_dir {
            kept.push("runtime_dir stays (restart to apply)".to_owned());
            new.runtime_dir.clone_from(&self.config.runtime_dir);
        }
        if self.socket_activated && new.listen != self.config.listen {
            kept.push("listen is ignored: the sockets come from systemd".to_owned());
            new.listen.clone_from(&self.config.listen);
        }
        // Again, with the kept values: e.g. a file that moved admin_listen to
        // loopback and dropped the token file, while the listener stays put.
        new.validate().map_err(|e| e.to_string())?;
        // Re-read on every reload, so that a rotated token takes effect.
        let admin_token = new.read_admin_token().map_err(|e| e.to_string())?;
        new.cluster.read_key().map_err(|e| e.to_string())?;
        for k in &kept {
            warn!("reload: {k}");
        }
        // Bind new listeners first: if that fails nothing has changed yet.
        let wanted: Vec<ListenerKey> = ListenerKey::all(&new)
            .into_iter()
            .filter(|k| !(self.socket_activated && matches!(k, ListenerKey::Plain(_))))
            .collect();
        let added: Vec<ListenerKey> = wanted
            .iter()
            .filter(|k| !self.listeners.iter().any(|(have, _)| have == *k))
            .copied()
            .collect();
        let addrs: Vec<std::net::SocketAddr> = added.iter().map(|k| k.addr()).collect();
        let bound = listeners::bind_all(&addrs).map_err(|e| e.to_string())?;
        let config = Arc::new(new);
        self.config = config.clone();
        self.config_generation += 1;
        self.dispatcher.set_limits(&config.limits);
        if let Ok(mut json) = self.config_json.lock() {
            *json = admin::redacted_config(&config);
        }
        if let Ok(mut guard) = self.admin_guard.lock() {
            *guard = Arc::new(admin_guard::Guard::new(&config, admin_token));
        }
        for life in self.life.iter_mut().filter(|l| l.current.is_some()) {
            life.config_generation = self.config_generation;
        }
        self.listeners.retain(|(key, stop)| {
            let keep = wanted.contains(key)
                || matches!(key, ListenerKey::Cluster(_))
                || (self.socket_activated && matches!(key, ListenerKey::Plain(_)));
            if !keep {
                info!(addr = %key.addr(), "reload: no longer listening");
                let _ = stop.send(true);
            }
            keep
        });
        for (key, listener) in added.into_iter().zip(bound) {
            self.listeners.push(listeners::serve_listener(
                key,
                listener,
                self.dispatcher.clone(),
                self.in_flight.clone(),
            ));
        }
        self.metrics.set_tls_expiry(&config);
        let resized = self.resize(config.worker_count());

        let answers = self
            .gatherer
            .scatter(&self.pool, |id| ToWorker::Reload {
                id,
                config: Box::new((*config).clone()),
            })
            .await;
        let mut failed = Vec::new();
        for (worker, answer) in &answers {
            match answer {
                Some(admin::Answer::Reloaded(None)) => {}
                Some(admin::Answer::Reloaded(Some(e))) => {
                    failed.push(format!("{}: {e}", worker.id))
                }
                _ => failed.push(format!("{}: no answer", worker.id)),
            }
        }
        if !failed.is_empty() {
            // A worker that could not apply it would serve the old
            // configuration: restart it, and it starts with the new one.
            for (worker, answer) in &answers {
                if !matches!(answer, Some(admin::Answer::Reloaded(None))) {
                    kill(worker.pid);
                }
            }
            return Err(format!(
                "applied, but these workers were restarted to pick it up: {}",
                failed.join("; ")
            ));
        }
        let mut message = format!("applied in {} workers", answers.len());
        if let Some(change) = resized {
            message.push_str("; ");
            message.push_str(&change);
        }
        if !kept.is_empty() {
            message.push_str("; ");
            message.push_str(&kept.join("; "));
        }
        Ok(message)
    }
}
