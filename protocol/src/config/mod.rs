//! The gateway configuration: TOML shape, defaults, validation.
//!
//! The supervisor parses and validates the file; workers receive the
//! validated [`Config`] over their control channel (bincode), so both sides
//! share these types. Every field has a default, so an empty file (or no file)
//! is the embedded default: listen on `127.0.0.1:8080`, one worker per core.
//! Unknown keys are errors: a typo must not silently fall back to a default.
//!
//! Beside this file: `error` (why a file was refused, and on which line),
//! `admin_token` (the admin API's bearer token), `auth` (the OAuth front
//! door's settings), `authz` (an endpoint's authorization rules and rate
//! limits), `upstream_oauth` (an upstream's own OAuth client credentials),
//! `store` (`[store]`, where session records live, and `[cluster]`, several
//! hosts sharing them), `tracing` (OTLP export of request spans), `tests`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod admin_token;
mod auth;
mod authz;
mod error;
mod store;
mod tracing;
mod upstream_oauth;
mod validate;

pub use admin_token::AdminToken;
pub use auth::{Auth, AuthSetting};
pub use authz::{AuthzRule, Effect, Rate, RateLimit, When};
pub use error::ConfigError;
use error::{invalid, with_reason_prefix};
pub use store::{Cluster, RedisTarget, Store};
pub use tracing::Tracing;
pub use upstream_oauth::{ClientAuthMethod, UpstreamOAuth};

/// An address a listener binds: an IP address and a port. Host names are
/// refused, with a hint, rather than resolved: a name can stand for several
/// addresses (`localhost` for 127.0.0.1 and ::1), and which of them is
/// bound should be written down, not left to the resolver.
pub fn parse_listen_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        let hint = if text.contains(':') && !text.starts_with('[') {
            "host names are not resolved: use an IP address and a port, e.g. 127.0.0.1:8080 \
             (or [::1]:8080; 0.0.0.0:8080 for every interface)"
        } else {
            "use an IP address and a port, e.g. 127.0.0.1:8080 (IPv6: [::1]:8080)"
        };
        format!("{text:?} is not an IP address and port; {hint}")
    })
}

/// serde helpers for listener addresses: strings through
/// [`parse_listen_addr`] in TOML; the plain encoding in bincode (the
/// control channel), which is not human-readable.
mod listen_addr {
    use std::net::SocketAddr;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer};

    pub(super) fn one<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        if !d.is_human_readable() {
            return SocketAddr::deserialize(d);
        }
        let text = String::deserialize(d)?;
        super::parse_listen_addr(&text).map_err(D::Error::custom)
    }

    pub(super) fn opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        if !d.is_human_readable() {
            return Option::<SocketAddr>::deserialize(d);
        }
        Option::<String>::deserialize(d)?
            .map(|text| super::parse_listen_addr(&text).map_err(D::Error::custom))
            .transpose()
    }

    pub(super) fn many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
        if !d.is_human_readable() {
            return Vec::<SocketAddr>::deserialize(d);
        }
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|text| super::parse_listen_addr(text).map_err(D::Error::custom))
            .collect()
    }
}

/// The admin listener's default port (on 127.0.0.1). Not 9090: that is
/// Prometheus's own port (a Prometheus on the same host would scrape itself),
/// and 9091-9999 are the Prometheus exporters' range; 8080, 8081 and 8443
/// are every other HTTP service's. 8411 is, as far as we know, unassigned.
pub const DEFAULT_ADMIN_PORT: u16 = 8411;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Plaintext listeners.
    #[serde(deserialize_with = "listen_addr::many")]
    pub listen: Vec<SocketAddr>,
    /// Metrics and the admin API; never on a public listener.
    #[serde(deserialize_with = "listen_addr::one")]
    pub admin_listen: SocketAddr,
    /// A file whose content (trimmed) is the admin API's bearer token.
    /// Required by state-changing admin endpoints, and by every endpoint
    /// when `admin_listen` is not a loopback address.
    pub admin_token_file: Option<PathBuf>,
    /// TLS listeners, terminated in the workers.
    pub tls_listener: Vec<TlsListener>,
    /// Worker processes; `None` means one per core.
    pub workers: Option<u16>,
    /// Where the private directory for internal sockets is made (a fresh
    /// `mcpgw.XXXXXX`, mode 0700, removed at exit). It must belong to the
    /// gateway's user and not be writable by group or others; it is made
    /// (0700) when missing. Unset: `$XDG_RUNTIME_DIR`, else the temp dir.
    pub runtime_dir: Option<PathBuf>,
    /// Joins an upstream id and a tool/prompt name on multi-upstream endpoints.
    pub namespace_separator: String,
    pub limits: Limits,
    pub sessions: Sessions,
    pub diagnostics: Diagnostics,
    pub log: Log,
    /// `[tracing]`: OTLP export of request spans (off by default).
    pub tracing: Tracing,
    pub security: Security,
    pub shutdown: Shutdown,
    pub store: Store,
    /// `[cluster]`: several gateway hosts on one Redis.
    pub cluster: Cluster,
    /// `[auth]` (bearer tokens on every MCP request), `"off"`, or unset
    /// (allowed only while every listener is on loopback).
    pub auth: AuthSetting,
    pub upstream: Vec<Upstream>,
    pub endpoint: Vec<Endpoint>,
    /// The configuration as written, when it had `${…}` references (see
    /// [`crate::secrets`]): what `/admin/config` shows. Not serialized:
    /// workers need the resolved values only.
    #[serde(skip)]
    pub as_written: Option<Box<Config>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            admin_listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_ADMIN_PORT)),
            admin_token_file: None,
            tls_listener: Vec::new(),
            workers: None,
            runtime_dir: None,
            namespace_separator: "__".to_owned(),
            limits: Limits::default(),
            sessions: Sessions::default(),
            diagnostics: Diagnostics::default(),
            log: Log::default(),
            tracing: Tracing::default(),
            security: Security::default(),
            shutdown: Shutdown::default(),
            store: Store::default(),
            cluster: Cluster::default(),
            auth: AuthSetting::Unset,
            upstream: Vec::new(),
            endpoint: Vec::new(),
            as_written: None,
        }
    }
}

/// A TLS listener: its address and PEM files (certificate chain, leaf
/// first, and private key). Files are re-read on every reload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListener {
    #[serde(deserialize_with = "listen_addr::one")]
    pub addr: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Request limits, enforced before any work is done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request head the supervisor peeks at (and workers accept).
    pub max_head_bytes: u32,
    /// Largest request body a worker reads.
    pub max_body_bytes: u32,
    /// Time a client has to send a complete request head. It also bounds how
    /// long a keep-alive connection may sit idle between requests (the timer
    /// runs whenever the connection waits for a head).
    pub header_timeout_ms: u64,
    /// Open connections per worker; beyond it new connections get 503.
    pub max_connections_per_worker: u32,
    /// How long a connection for a restarting worker waits in the supervisor.
    pub dispatch_wait_ms: u64,
    /// Time a client has to send a whole request body, from the end of its
    /// head; past it the request gets 408 and the connection closes.
    pub body_timeout_ms: u64,
    /// Connections the supervisor holds at once while it reads their request
    /// heads (before it can route them); beyond it new ones get 503.
    pub max_pending_connections: u32,
    /// Largest upstream answer a worker holds in memory at once (answers it
    /// must read whole: JSON answers it checks or rewrites, merged lists).
    pub max_answer_bytes: u32,
    /// Upstream answer bytes one worker holds in memory, all requests
    /// together; a request that would pass it waits for room, bounded by
    /// its deadline, then fails with an error.
    pub max_buffered_answer_bytes: u64,
    /// Largest `initialize` params a session keeps (client info and
    /// capabilities, kept for the session's life); larger ones get -32602.
    pub max_session_params_bytes: u32,
    /// Live sessions on this gateway host, all workers together; past it
    /// `initialize` gets an error (no other session is evicted).
    pub max_sessions: u32,
    /// Live sessions on one worker.
    pub max_sessions_per_worker: u32,
    /// Live sessions opened from one client IP address; 0 (the default):
    /// no such cap. Off by default because behind a reverse proxy or load
    /// balancer every client has the proxy's address, and a per-address
    /// cap would then be a second, smaller total.
    pub max_sessions_per_client: u32,
    /// Messages in one JSON-RPC batch; longer batches get -32600.
    pub max_batch_len: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: 16 * 1024,
            max_body_bytes: 4 * 1024 * 1024,
            header_timeout_ms: 10_000,
            max_connections_per_worker: 10_000,
            dispatch_wait_ms: 5_000,
            body_timeout_ms: 30_000,
            max_pending_connections: 1_024,
            max_answer_bytes: 64 * 1024 * 1024,
            max_buffered_answer_bytes: 256 * 1024 * 1024,
            max_session_params_bytes: 64 * 1024,
            max_sessions: 100_000,
            max_sessions_per_worker: 50_000,
            max_sessions_per_client: 0,
            max_batch_len: 100,
        }
    }
}

/// The most `sessions.input_wait_secs` may be: a parked call holds an
/// upstream session and its connection.
pub const MAX_INPUT_WAIT_SECS: u64 = 3600;

/// The most `sessions.stateless_warm_sessions` may be.
pub const MAX_WARM_SESSIONS: u32 = 64;

/// Session lifetime policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sessions {
    /// A session unused this long ends and its upstream sessions are closed.
    pub idle_timeout_secs: u64,
    /// An upstream session idle this long is probed before it is reused.
    pub upstream_probe_after_secs: u64,
    /// Grace period for closing one upstream session (DELETE upstream).
    pub upstream_close_grace_ms: u64,
    /// How often a worker reports that it is alive.
    pub heartbeat_ms: u64,
    /// A worker silent this long is taken for hung: it is killed and its
    /// sessions move to its replacement.
    pub heartbeat_ttl_ms: u64,
    /// The most upstream sessions opened ahead of need for stateless
    /// (2026-07-28) clients, per upstream and kind of client (its
    /// capabilities and info): a stateless request takes one instead of
    /// waiting for an `initialize` round trip. A kind starts with one and
    /// doubles it whenever a request finds none ready, up to this. Each
    /// serves one request and is closed; 0 opens them on demand.
    pub stateless_warm_sessions: u32,
    /// How long a stateless client's call whose upstream asked it
    /// something (MRTR) waits, parked, for the client's retry.
    pub input_wait_secs: u64,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            idle_timeout_secs: 30 * 60,
            upstream_probe_after_secs: 60,
            upstream_close_grace_ms: 2_000,
            heartbeat_ms: 1_000,
            heartbeat_ttl_ms: 3_000,
            stateless_warm_sessions: 8,
            input_wait_secs: 300,
        }
    }
}

/// Whether `name` may appear in a store key: non-empty, at most 64 bytes of
/// `[A-Za-z0-9._-]`.
pub fn is_key_safe(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Which `Host` and `Origin` headers requests may carry (DNS rebinding
/// protection, as the MCP transport spec asks of servers).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Security {
    /// Host names (no port) a request's `Host` may name. Unset: when every
    /// listener is on a loopback address only `localhost`, `127.0.0.1` and
    /// `::1`; otherwise any.
    pub allowed_hosts: Option<Vec<String>>,
    /// Origins (`scheme://host[:port]`) a browser request's `Origin` may be.
    /// Empty: an origin whose host is an allowed host.
    pub allowed_origins: Vec<String>,
}

/// What the workers log beyond their own events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// One line per MCP message handled, with target `mcpgw::access`: the
    /// endpoint, method, tool/prompt name or resource URI, upstream, a
    /// session id prefix, outcome, HTTP status and duration (µs). Structured
    /// fields in JSON mode. Applies on reload.
    pub access: bool,
}

/// Diagnostics meant for tests and debugging, off by default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Diagnostics {
    /// Add `x-mcpgw-worker: slot/generation/pid` to every response.
    pub worker_header: bool,
}

/// Graceful stop policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Shutdown {
    /// In-flight requests get this long to finish after SIGTERM.
    pub grace_ms: u64,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self { grace_ms: 30_000 }
    }
}

/// How the gateway talks to an upstream server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transport {
    #[default]
    #[serde(rename = "streamable-http")]
    StreamableHttp,
    /// A local program speaking MCP on its stdin/stdout: one process per
    /// upstream session (never shared between client sessions).
    #[serde(rename = "stdio")]
    Stdio,
    /// The deprecated HTTP+SSE transport (2024-11-05): `url` is the event
    /// stream; one stream per upstream session.
    #[serde(rename = "sse")]
    Sse,
}

/// Which protocol era an upstream server speaks: the 2025 session protocol
/// (`initialize`, `Mcp-Session-Id`) or the stateless 2026-07-28 revision
/// (every request self-contained, `server/discover`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamEra {
    /// Ask the server (`server/discover`) on first use and remember its
    /// answer while this upstream's config is unchanged.
    #[default]
    Auto,
    /// Always `initialize` a session; never ask.
    Stateful,
    /// Always speak 2026-07-28 (a legacy answer to `server/discover` is then
    /// an error). Only for `transport = "streamable-http"`.
    Stateless,
}

/// One upstream MCP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `[A-Za-z0-9_-]{1,64}`; used in namespaced names, logs and metrics.
    pub id: String,
    /// Streamable HTTP: the server's URL. Unused for stdio.
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub transport: Transport,
    /// Which protocol era it speaks (`auto` asks it).
    #[serde(default)]
    pub era: UpstreamEra,
    /// stdio: the program to run (a path, or a name looked up in `PATH`).
    #[serde(default)]
    pub command: Option<String>,
    /// stdio: its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// stdio: variables added to the gateway's environment for it
    /// (credentials often live here: `/admin/config` redacts the values).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// stdio: its working directory (the gateway's by default).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// stdio: live processes of this upstream per worker at most; a new
    /// session beyond it is refused with a clear error.
    #[serde(default = "default_max_processes")]
    pub max_processes: u32,
    /// Extra request headers (credentials for this upstream live here).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Bound on one request to this upstream, streaming answers included.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// `https://` only: a PEM bundle of the certificate authorities this
    /// upstream's certificate must chain to, instead of the system roots.
    /// Re-read on every reload; a changed file re-opens the upstream's
    /// sessions.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `https://` only: the certificate chain (PEM, leaf first) this
    /// gateway presents to an upstream that asks for one (mTLS). Set with
    /// `client_key_file` or not at all.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// `https://` only: the private key (PEM) of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// `[upstream.oauth]`: a bearer token of the gateway's own from the
    /// OAuth 2.1 client-credentials grant, on every request to this
    /// upstream (not with a static `Authorization` header).
    #[serde(default)]
    pub oauth: Option<UpstreamOAuth>,
}

impl Upstream {
    /// A Streamable HTTP upstream with every other setting at its default.
    pub fn http(id: &str, url: &str) -> Self {
        Self {
            id: id.to_owned(),
            url: url.to_owned(),
            transport: Transport::StreamableHttp,
            era: UpstreamEra::Auto,
            command: None,
            args: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
            max_processes: default_max_processes(),
            headers: BTreeMap::new(),
            connect_timeout_ms: default_connect_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            oauth: None,
        }
    }

    /// Whether this upstream is reached over TLS (an `https://` URL, for
    /// Streamable HTTP and legacy HTTP+SSE).
    pub fn is_https(&self) -> bool {
        self.transport != Transport::Stdio && self.url.starts_with("https://")
    }

    /// Whether a TLS client configuration is made for this upstream: its
    /// url or its OAuth token endpoint is `https://` (both use its
    /// `ca_file` and client identity).
    pub fn needs_tls(&self) -> bool {
        self.is_https()
            || self.transport != Transport::Stdio
                && self.oauth.as_ref().is_some_and(UpstreamOAuth::is_https)
    }

    /// The TLS files this upstream names (CA bundle, client certificate
    /// and key); `None` for each unset one.
    pub fn tls_files(&self) -> crate::tls::UpstreamTlsFiles<'_> {
        crate::tls::UpstreamTlsFiles {
            ca_file: self.ca_file.as_deref(),
            identity: self
                .client_cert_file
                .as_deref()
                .zip(self.client_key_file.as_deref()),
        }
    }
}

fn default_max_processes() -> u32 {
    64
}

fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_request_timeout_ms() -> u64 {
    300_000
}

/// A path that serves a chosen set of upstreams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub path: String,
    pub upstreams: Vec<String>,
    /// With `[auth]`: the audience tokens for this endpoint must carry,
    /// instead of `auth.audience`.
    #[serde(default)]
    pub auth_audience: Option<String>,
    /// With `[auth]`: the scopes tokens for this endpoint must carry,
    /// instead of `auth.required_scopes` (`[]`: none).
    #[serde(default)]
    pub auth_required_scopes: Option<Vec<String>>,
    /// What a call no `authz` rule covers gets (`allow` by default).
    #[serde(default)]
    pub authz_default: Effect,
    /// `[[endpoint.authz]]`: rules on tools, prompts and resources by
    /// caller; the first that covers a call decides.
    #[serde(default)]
    pub authz: Vec<AuthzRule>,
    /// Token buckets per principal and for the whole endpoint.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

/// The default endpoint when none is configured.
pub const DEFAULT_ENDPOINT_PATH: &str = "/mcp";

impl Config {
    /// Read, parse and validate a file. Errors name the file, and the line
    /// where they can.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        Self::parse(&text).map_err(|e| e.in_file(path, Some(&text)))
    }

    /// Read and parse a file without validating it, for tools that need a
    /// few keys of a gateway's configuration (`mcpgw status`).
    pub fn read_unchecked(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        toml::from_str(&text).map_err(|cause| ConfigError::Parse {
            path: path.to_owned(),
            cause: Box::new(cause),
        })
    }

    /// Parse TOML text, resolve its `${…}` references (environment, files)
    /// and validate the result.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::parse_with(text, &crate::secrets::Process)
    }

    pub(crate) fn parse_with(
        text: &str,
        from: &dyn crate::secrets::Resolver,
    ) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|cause| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            cause: Box::new(cause),
        })?;
        config.resolve_references(from)?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration as written (references unresolved), for display.
    pub fn as_written(&self) -> &Config {
        self.as_written.as_deref().unwrap_or(self)
    }

    /// Replace `${…}` references by what they stand for, in the values that
    /// may carry credentials (see [`crate::secrets`]); keep the original for
    /// display when any was there.
    fn resolve_references(
        &mut self,
        from: &dyn crate::secrets::Resolver,
    ) -> Result<(), ConfigError> {
        let written = self.clone();
        let mut changed = false;
        let mut one = |key: String, value: &mut String| -> Result<(), ConfigError> {
            match crate::secrets::expand(value, from) {
                Ok(Some(resolved)) => {
                    *value = resolved;
                    changed = true;
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(reason) => Err(invalid(key, reason)),
            }
        };
        for (i, u) in self.upstream.iter_mut().enumerate() {
            one(format!("upstream[{i}].url"), &mut u.url)?;
            for (j, arg) in u.args.iter_mut().enumerate() {
                one(format!("upstream[{i}].args[{j}]"), arg)?;
            }
            // The map's key path stops at the table: header and variable
            // names need not be TOML bare keys; the reason names them.
            for (name, value) in &mut u.headers {
                one(format!("upstream[{i}].headers"), value)
                    .map_err(|e| with_reason_prefix(e, &format!("header {name:?}: ")))?;
            }
            for (name, value) in &mut u.env {
                one(format!("upstream[{i}].env"), value)
                    .map_err(|e| with_reason_prefix(e, &format!("variable {name:?}: ")))?;
            }
            if let Some(o) = &mut u.oauth {
                one(format!("upstream[{i}].oauth.token_url"), &mut o.token_url)?;
                one(format!("upstream[{i}].oauth.client_id"), &mut o.client_id)?;
                one(
                    format!("upstream[{i}].oauth.client_secret"),
                    &mut o.client_secret,
                )?;
            }
        }
        if let Some(url) = &mut self.store.redis_url {
            one("store.redis_url".to_owned(), url)?;
        }
        if let Some(url) = &mut self.tracing.otlp_endpoint {
            one("tracing.otlp_endpoint".to_owned(), url)?;
        }
        for (name, value) in &mut self.tracing.headers {
            one("tracing.headers".to_owned(), value)
                .map_err(|e| with_reason_prefix(e, &format!("header {name:?}: ")))?;
        }
        if let Some(password) = &mut self.store.sentinel_password {
            one("store.sentinel_password".to_owned(), password)?;
        }
        if changed {
            self.as_written = Some(Box::new(written));
        }
        Ok(())
    }

    /// Read every TLS listener's files and check that they make a usable
    /// server identity. Separate from [`Config::validate`] because it touches
    /// the file system; run at start, on each reload and by `check-config`.
    ///
    /// For `https://` upstreams it builds the client configuration each
    /// worker will build: the CA bundle (or the system roots) and the client
    /// identity, each refusal naming the upstream's key and the file.
    pub fn check_tls_files(&self) -> Result<(), ConfigError> {
        for (i, t) in self.tls_listener.iter().enumerate() {
            crate::tls::server_config(&t.cert, &t.key)
                .map_err(|e| invalid(format!("tls_listener[{i}]"), e.to_string()))?;
        }
        let mut roots = crate::tls::SystemRoots::default();
        if self
            .store
            .redis_url
            .as_deref()
            .is_some_and(|u| u.starts_with("rediss://"))
        {
            crate::tls::client_config(self.store.redis_tls_files(), &mut roots)
                .map_err(|e| invalid(format!("store.redis_{}", e.key), e.cause.to_string()))?;
        }
        for (i, u) in self.upstream.iter().enumerate() {
            if u.needs_tls() {
                crate::tls::client_config(u.tls_files(), &mut roots).map_err(|e| {
                    invalid(format!("upstream[{i}].{}", e.key), e.cause.to_string())
                })?;
            }
        }
        Ok(())
    }

    /// Read `admin_token_file`, if set. Separate from [`Config::validate`]
    /// because it touches the file system; run at start, on each reload and
    /// by `check-config`, so a changed token takes effect on reload.
    pub fn read_admin_token(&self) -> Result<Option<AdminToken>, ConfigError> {
        let Some(path) = &self.admin_token_file else {
            return Ok(None);
        };
        AdminToken::read(path)
            .map(Some)
            .map_err(|reason| invalid("admin_token_file", reason))
    }

    /// Worker count in force: the configured one, else one per core.
    pub fn worker_count(&self) -> u16 {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| u16::try_from(n.get()).unwrap_or(256).min(256))
                .unwrap_or(1)
        })
    }

    /// The endpoints in force: the configured ones, or `/mcp` serving all.
    pub fn effective_endpoints(&self) -> Vec<Endpoint> {
        if self.endpoint.is_empty() {
            vec![Endpoint {
                path: DEFAULT_ENDPOINT_PATH.to_owned(),
                upstreams: self.upstream.iter().map(|u| u.id.clone()).collect(),
                auth_audience: None,
                auth_required_scopes: None,
                authz_default: Effect::Allow,
                authz: Vec::new(),
                rate_limit: None,
            }]
        } else {
            self.endpoint.clone()
        }
    }
}

impl Limits {
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }
}

#[cfg(test)]
mod tests;
