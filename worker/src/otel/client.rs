//! The OTLP exporter's HTTP client: hyper (the worker's HTTP stack) with
//! rustls for `https://` collectors, run on the worker's runtime. The
//! SDK's batch processor calls it from its own thread, outside any
//! runtime, so each export is spawned onto the worker's runtime and
//! awaited through its join handle. Failures are logged here, at most one
//! line per [`LOG_EVERY`]: the SDK's own diagnostics are compiled out.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_http::{HttpClient, HttpError};
use tracing::warn;

/// The most of a collector's answer that is read (it is a small protobuf
/// or a status message).
const MAX_ANSWER: usize = 64 * 1024;

/// Export failures are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Posts export requests to the collector.
pub(super) struct Collector {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
    /// When the last failure was logged (ms since `born`), and the start.
    logged_ms: AtomicU64,
    born: Instant,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").finish_non_exhaustive()
    }
}

/// Why the collector client could not be made.
#[derive(Debug, thiserror::Error)]
pub(super) enum CollectorError {
    #[error("the system's CA certificates: {0}")]
    Roots(#[from] mcpgw_protocol::tls::UpstreamTlsError),
    #[error("TLS settings: {0}")]
    Tls(rustls::Error),
    #[error("not on the worker's runtime")]
    NoRuntime,
}

impl Collector {
    /// A client for `url`; system roots for `https://`. Must be called on
    /// the worker's runtime.
    pub(super) fn new(url: &str, timeout: Duration) -> Result<Self, CollectorError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| CollectorError::NoRuntime)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let tls = if url.starts_with("https://") {
            let files = mcpgw_protocol::tls::UpstreamTlsFiles {
                ca_file: None,
                identity: None,
            };
            let mut roots = mcpgw_protocol::tls::SystemRoots::default();
            (*mcpgw_protocol::tls::client_config(files, &mut roots)?.config).clone()
        } else {
            // Never used for plain http; the builder wants one.
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(CollectorError::Tls)?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            runtime,
            timeout,
            logged_ms: AtomicU64::new(u64::MAX),
            born: Instant::now(),
        })
    }

    /// Log an export failure unless one was logged within [`LOG_EVERY`].
    fn failed(&self, why: &dyn std::fmt::Display) {
        let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let last = self.logged_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64;
        if due
            && self
                .logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(error = %why, "[tracing]: span export failed; spans are dropped");
        }
    }

    async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let task = self.runtime.spawn(async move {
            let exchange = async {
                let resp = client.request(request.map(Full::new)).await?;
                let (parts, body) = resp.into_parts();
                let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
                Ok::<_, HttpError>(Response::from_parts(parts, body))
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(done) => done,
                Err(_) => Err(HttpError::from(format!("no answer within {timeout:?}"))),
            }
        });
        let result = match task.await {
            Ok(result) => result,
            Err(e) => Err(HttpError::from(e)),
        };
        match &result {
            Ok(resp) if !resp.status().is_success() => {
                self.failed(&format_args!("collector answered {}", resp.status()));
            }
            Ok(_) => {}
            Err(e) => self.failed(e),
        }
        result
    }
}

impl HttpClient for Collector {
    // What `#[async_trait]` makes of the trait's `async fn`.
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(self.send(request))
    }
}
