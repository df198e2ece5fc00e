//! How the supervisor reaches Redis (`[store]`): one server at the address
//! of `redis_url` (`redis://`, `unix://`, or `rediss://` with an optional CA
//! bundle and client identity), or the master that Redis Sentinel names
//! (`sentinels`, `sentinel_master`).
//!
//! [`RedisConn`] is what the store's scripts and pipelines run on. It holds
//! a [`ConnectionManager`] (which reconnects by itself after an I/O error)
//! and replaces it when the manager cannot recover by itself: after an
//! authentication failure (so a password fixed in Redis is picked up
//! without a restart) and, through Sentinel, after any connection failure
//! or a write refused by a demoted master (`READONLY`), so that the next
//! command asks the sentinels where the master is now. Every wait is
//! bounded; a failure is returned to the caller, which treats Redis as
//! down (`Shared::went_down`) as it always has.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcpgw_protocol::config::{RedisTarget, Store as StoreConfig};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Client, Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo as _, Pipeline, RedisError,
    RedisFuture, ServerErrorKind, TlsCertificates, TlsMode, Value,
};
use tracing::{error, info};

use super::RedisStoreError;

/// Longest wait for one Redis answer or connection.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1_000);

/// Longest wait for the sentinels to name a master (they are asked in
/// turn, and the master they name is asked its role).
const RESOLVE_TIMEOUT: Duration = Duration::from_millis(2_000);

/// A connection to Redis that reconnects by itself, with bounded waits;
/// cheap to clone (one shared connection).
#[derive(Clone)]
pub(crate) struct RedisConn(Arc<Inner>);

struct Inner {
    source: Source,
    config: ConnectionManagerConfig,
    /// The manager in use and its number, so that a failed command drops
    /// only the manager it ran on.
    current: Mutex<Option<(u64, ConnectionManager)>>,
    numbers: AtomicU64,
    db: i64,
    /// An authentication failure was logged and nothing succeeded since.
    refused: AtomicBool,
}

enum Source {
    Direct(Client),
    Sentinel {
        client: tokio::sync::Mutex<SentinelClient>,
        master: String,
        /// The master's address last used, to log a change once.
        last: Mutex<Option<String>>,
    },
}

/// The connection for `[store]` (a valid configuration with `redis_url`).
/// Reads the TLS files of `rediss://`; connects lazily.
pub(crate) fn connect(store: &StoreConfig, url: &str) -> Result<RedisConn, RedisStoreError> {
    let certificates = tls_certificates(store, url)?;
    let info = url.into_connection_info().map_err(RedisStoreError::Url)?;
    let db = info.redis_settings().db();
    let source = match store.redis_target() {
        RedisTarget::Direct => Source::Direct(
            match certificates {
                Some(certs) => Client::build_with_tls(info, certs),
                None => Client::open(info),
            }
            .map_err(RedisStoreError::Url)?,
        ),
        RedisTarget::Sentinel { sentinels, master } => {
            let settings = info.redis_settings();
            let tls = certificates.is_some();
            let addrs = sentinels
                .iter()
                .map(|s| sentinel_addr(s, tls))
                .collect::<Result<Vec<_>, _>>()?;
            let mut builder = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
                .map_err(RedisStoreError::Sentinel)?
                .set_client_to_redis_db(db);
            if let Some(user) = settings.username() {
                builder = builder.set_client_to_redis_username(user);
            }
            if let Some(password) = settings.password() {
                builder = builder.set_client_to_redis_password(password);
            }
            if let Some(password) = &store.sentinel_password {
                builder = builder.set_client_to_sentinel_password(password);
            }
            if let Some(certs) = certificates {
                builder = builder
                    .set_client_to_redis_tls_mode(TlsMode::Secure)
                    .set_client_to_redis_certificates(certs.clone())
                    .set_client_to_sentinel_tls_mode(TlsMode::Secure)
                    .set_client_to_sentinel_certificates(certs);
            }
            Source::Sentinel {
                client: tokio::sync::Mutex::new(
                    builder.build().map_err(RedisStoreError::Sentinel)?,
                ),
                master: master.to_owned(),
                last: Mutex::new(None),
            }
        }
    };
    Ok(RedisConn(Arc::new(Inner {
        source,
        config: manager_config(),
        current: Mutex::new(None),
        numbers: AtomicU64::new(0),
        db,
        refused: AtomicBool::new(false),
    })))
}

/// One server at `url`, with the default TLS settings (the system roots):
/// for tests and tools.
#[cfg(test)]
pub(crate) fn connect_url(url: &str) -> Result<RedisConn, RedisStoreError> {
    let store = StoreConfig {
        redis_url: Some(url.to_owned()),
        ..StoreConfig::default()
    };
    connect(&store, url)
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(RESPONSE_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500))
}

/// The PEM files of `redis_ca_file` and the client identity, read now, for
/// a `rediss://` URL; `None` for any other (validation refused the files
/// there).
fn tls_certificates(
    store: &StoreConfig,
    url: &str,
) -> Result<Option<TlsCertificates>, RedisStoreError> {
    if !url.starts_with("rediss://") {
        return Ok(None);
    }
    let read = |key: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|cause| RedisStoreError::File {
            key,
            path: path.to_owned(),
            cause,
        })
    };
    let root_cert = store
        .redis_ca_file
        .as_deref()
        .map(|p| read("store.redis_ca_file", p))
        .transpose()?;
    let client_tls = match (&store.redis_client_cert_file, &store.redis_client_key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("store.redis_client_cert_file", cert)?,
            client_key: read("store.redis_client_key_file", key)?,
        }),
        _ => None,
    };
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// `host:port` of a sentinel (validated) as an address.
fn sentinel_addr(text: &str, tls: bool) -> Result<ConnectionAddr, RedisStoreError> {
    let bad = || RedisStoreError::SentinelAddr(text.to_owned());
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse::<u16>().map_err(|_| bad())?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok(if tls {
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host, port)
    })
}

impl RedisConn {
    /// The manager to send on, made (and, through Sentinel, the master
    /// found) when there is none.
    async fn manager(&self) -> Result<(u64, ConnectionManager), RedisError> {
        if let Some(current) = self.0.lock_current().clone() {
            return Ok(current);
        }
        let client = match &self.0.source {
            Source::Direct(client) => client.clone(),
            Source::Sentinel {
                client,
                master,
                last,
            } => {
                let asked = tokio::time::timeout(RESOLVE_TIMEOUT, async {
                    let mut client = client.lock().await;
                    // Another command may have found the master while this one
                    // waited for the lock: one question to the sentinels is enough.
                    if let Some(current) = self.0.lock_current().clone() {
                        return Ok(Err(current));
                    }
                    client.async_get_client().await.map(Ok)
                })
                .await
                .map_err(|_| {
                    RedisError::from((
                        ErrorKind::Io,
                        "the sentinels named no master in time",
                        format!("{RESOLVE_TIMEOUT:?}"),
                    ))
                })??;
                let found = match asked {
                    Ok(found) => found,
                    Err(current) => return Ok(current),
                };
                let addr = found.get_connection_info().addr().to_string();
                let mut last = match last.lock() {
                    Ok(l) => l,
                    Err(poisoned) => poisoned.into_inner(),
                };
                if last.as_deref() != Some(addr.as_str()) {
                    info!(master = %master, %addr, "Redis master from Sentinel");
                    *last = Some(addr);
                }
                found
            }
        };
        let manager = ConnectionManager::new_lazy_with_config(client, self.0.config.clone())?;
        let mut current = self.0.lock_current();
        // Another command may have made one meanwhile: use that.
        let made = current
            .get_or_insert_with(|| (self.0.numbers.fetch_add(1, Ordering::Relaxed), manager));
        Ok(made.clone())
    }

    /// What a command's result says about the manager it ran on.
    fn after<T>(&self, number: u64, result: &Result<T, RedisError>) {
        let Err(e) = result else {
            self.0.refused.store(false, Ordering::Relaxed);
            return;
        };
        if e.kind() == ErrorKind::AuthenticationFailed
            && !self.0.refused.swap(true, Ordering::Relaxed)
        {
            error!(
                error = %e,
                "Redis refused this gateway's credentials: check the user and password of \
                 store.redis_url against Redis's ACL (until then Redis counts as unreachable)"
            );
        }
        let through_sentinel = matches!(self.0.source, Source::Sentinel { .. });
        let replace = e.kind() == ErrorKind::AuthenticationFailed
            || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
            || through_sentinel
                && (e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error());
        if replace {
            let mut current = self.0.lock_current();
            if current.as_ref().is_some_and(|(n, _)| *n == number) {
                *current = None;
            }
        }
    }
}

impl Inner {
    fn lock_current(&self) -> std::sync::MutexGuard<'_, Option<(u64, ConnectionManager)>> {
        match self.current.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (number, mut manager) = self.manager().await?;
            let result = manager.req_packed_command(cmd).await;
            self.after(number, &result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (number, mut manager) = self.manager().await?;
            let result = manager.req_packed_commands(pipeline, offset, count).await;
            self.after(number, &result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.0.db
    }
}
