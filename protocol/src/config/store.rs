//! `[store]` (where session records live: the embedded store or Redis,
//! directly, over TLS or through Sentinel) and `[cluster]` (several gateway
//! hosts sharing one Redis): their shape, defaults and validation.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::invalid;
use super::{ConfigError, is_key_safe, listen_addr};

/// Where session records live (see [`crate::store`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Store {
    /// `redis://[user:password@]host:port/db`, `rediss://…` (TLS) or
    /// `unix:///path/redis.sock`; unset keeps the records in the
    /// supervisor's memory (one host, lost on restart). With `sentinels`,
    /// its host is `sentinel_master` and Sentinel tells the address.
    pub redis_url: Option<String>,
    /// `rediss://` only: a PEM bundle of the certificate authorities the
    /// Redis server's certificate must chain to, instead of the system roots.
    pub redis_ca_file: Option<PathBuf>,
    /// `rediss://` only: the certificate chain (PEM, leaf first) presented
    /// to a Redis that asks for one (`tls-auth-clients`). Set with
    /// `redis_client_key_file` or not at all.
    pub redis_client_cert_file: Option<PathBuf>,
    /// `rediss://` only: the private key (PEM) of `redis_client_cert_file`.
    pub redis_client_key_file: Option<PathBuf>,
    /// Redis Sentinel: `host:port` of each sentinel. The master's address
    /// is asked of them, and asked again after a connection failure or a
    /// write refused by a demoted master.
    pub sentinels: Vec<String>,
    /// Redis Sentinel: the name of the master the sentinels monitor.
    pub sentinel_master: Option<String>,
    /// Redis Sentinel: the password of the sentinels themselves
    /// (`requirepass` in their configuration); unset: they ask none.
    pub sentinel_password: Option<String>,
    /// Prefix of every Redis key, so that several gateways can share one
    /// Redis without seeing each other's records.
    pub prefix: String,
    /// This gateway's name in worker ids (`host/slot/generation`); must be
    /// unique among the gateways that share a Redis. Defaults to the host name.
    pub host: Option<String>,
}

/// How the supervisor reaches Redis, as [`Store::redis_target`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisTarget<'a> {
    /// One server at the address of `redis_url`.
    Direct,
    /// The master named `master`, whose address the sentinels tell.
    Sentinel {
        sentinels: &'a [String],
        master: &'a str,
    },
}

impl Store {
    /// The TLS files for `rediss://` (CA bundle, client certificate and
    /// key); `None` for each unset one.
    pub fn redis_tls_files(&self) -> crate::tls::UpstreamTlsFiles<'_> {
        crate::tls::UpstreamTlsFiles {
            ca_file: self.redis_ca_file.as_deref(),
            identity: self
                .redis_client_cert_file
                .as_deref()
                .zip(self.redis_client_key_file.as_deref()),
        }
    }

    /// Direct or through Sentinel (valid configurations only: `sentinels`
    /// and `sentinel_master` go together).
    pub fn redis_target(&self) -> RedisTarget<'_> {
        match &self.sentinel_master {
            Some(master) if !self.sentinels.is_empty() => RedisTarget::Sentinel {
                sentinels: &self.sentinels,
                master,
            },
            _ => RedisTarget::Direct,
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let tls = match &self.redis_url {
            None => false,
            Some(url) if url.starts_with("redis://") || url.starts_with("unix://") => false,
            Some(url) if url.starts_with("rediss://") => true,
            Some(url) => {
                return Err(invalid(
                    "store.redis_url",
                    format!(
                        "{:?}: must start with redis://, rediss:// (TLS) or unix://",
                        crate::redact::url(url)
                    ),
                ));
            }
        };
        for (key, set) in [
            ("store.redis_ca_file", self.redis_ca_file.is_some()),
            (
                "store.redis_client_cert_file",
                self.redis_client_cert_file.is_some(),
            ),
            (
                "store.redis_client_key_file",
                self.redis_client_key_file.is_some(),
            ),
        ] {
            if set && !tls {
                return Err(invalid(key, "needs a rediss:// store.redis_url"));
            }
        }
        match (&self.redis_client_cert_file, &self.redis_client_key_file) {
            (Some(_), None) => {
                return Err(invalid(
                    "store.redis_client_key_file",
                    "required with store.redis_client_cert_file",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "store.redis_client_cert_file",
                    "required with store.redis_client_key_file",
                ));
            }
            _ => {}
        }
        self.validate_sentinel()?;
        if !self.prefix.is_empty()
            && !self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
        {
            return Err(invalid(
                "store.prefix",
                "must be printable ASCII without spaces or braces",
            ));
        }
        if let Some(host) = &self.host
            && !is_key_safe(host)
        {
            return Err(invalid(
                "store.host",
                format!("{host:?}: must be 1 to 64 characters of A-Z a-z 0-9 . _ -"),
            ));
        }
        Ok(())
    }

    /// `sentinels`, `sentinel_master` and `sentinel_password` go together,
    /// and `redis_url` then names the master by its Sentinel name.
    fn validate_sentinel(&self) -> Result<(), ConfigError> {
        let Some(master) = &self.sentinel_master else {
            if !self.sentinels.is_empty() {
                return Err(invalid(
                    "store.sentinel_master",
                    "required with store.sentinels: the name the sentinels know the master by",
                ));
            }
            if self.sentinel_password.is_some() {
                return Err(invalid("store.sentinel_password", "needs store.sentinels"));
            }
            return Ok(());
        };
        if self.sentinels.is_empty() {
            return Err(invalid(
                "store.sentinels",
                "required with store.sentinel_master: host:port of each sentinel",
            ));
        }
        if master.is_empty() || !master.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "store.sentinel_master",
                format!("{master:?}: must be printable ASCII without spaces"),
            ));
        }
        for (i, s) in self.sentinels.iter().enumerate() {
            if !is_host_port(s) || s.contains('@') {
                return Err(invalid(
                    format!("store.sentinels[{i}]"),
                    format!(
                        "{s:?} must be host:port (a name or an IP address, and a port 1-65535)"
                    ),
                ));
            }
        }
        let example = format!("e.g. redis://user:password@{master}/0 or rediss://…@{master}/0");
        let Some(url) = &self.redis_url else {
            return Err(invalid(
                "store.redis_url",
                format!(
                    "required with store.sentinels: it gives the scheme, credentials and \
                     database of the master, whose host is the master's name ({example})"
                ),
            ));
        };
        let Some(rest) = url
            .strip_prefix("redis://")
            .or_else(|| url.strip_prefix("rediss://"))
        else {
            return Err(invalid(
                "store.redis_url",
                format!(
                    "{:?}: with store.sentinels it must be redis:// or rediss:// ({example})",
                    crate::redact::url(url)
                ),
            ));
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if host != master {
            return Err(invalid(
                "store.redis_url",
                format!(
                    "{:?}: with store.sentinels its host must be the master's name {master:?}, \
                     without a port (Sentinel tells the address; {example})",
                    crate::redact::url(url)
                ),
            ));
        }
        Ok(())
    }
}
impl Default for Store {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_ca_file: None,
            redis_client_cert_file: None,
            redis_client_key_file: None,
            sentinels: Vec::new(),
            sentinel_master: None,
            sentinel_password: None,
            prefix: "mcpgw:".to_owned(),
            host: None,
        }
    }
}

/// Several gateway hosts on one Redis (`[cluster]`, see
/// [`crate::cluster`]): a request for a session another live host owns is
/// forwarded to that host's internal listener, signed with the shared key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// The internal listener other hosts forward to (an IP address and a
    /// port; port 0 picks one). Unset: this host neither forwards to nor
    /// takes requests from others.
    #[serde(deserialize_with = "listen_addr::opt")]
    pub listen: Option<SocketAddr>,
    /// `host:port` other hosts reach `listen` at, published in Redis with
    /// this host's heartbeat. Default: the address `listen` is bound to
    /// (required when that is 0.0.0.0 or [::]).
    pub advertise: Option<String>,
    /// A file holding the key shared by every host (at least 32 bytes;
    /// e.g. `openssl rand -hex 32`): it signs forwarded requests and tags
    /// session ids.
    pub key_file: Option<PathBuf>,
    /// On SIGTERM (a drain), hand this host's sessions over to the live
    /// members of the cluster instead of keeping them for this host's next
    /// run: for rolling upgrades, so that nothing moves twice. Default
    /// false: a host back within `sessions.heartbeat_ttl_ms` keeps them.
    pub handover_on_stop: bool,
}

impl Cluster {
    pub(super) fn validate(&self, store: &Store) -> Result<(), ConfigError> {
        let Some(listen) = self.listen else {
            for (key, set) in [
                ("cluster.advertise", self.advertise.is_some()),
                ("cluster.key_file", self.key_file.is_some()),
                ("cluster.handover_on_stop", self.handover_on_stop),
            ] {
                if set {
                    return Err(invalid(key, "needs cluster.listen"));
                }
            }
            return Ok(());
        };
        if store.redis_url.is_none() {
            return Err(invalid(
                "cluster.listen",
                "needs store.redis_url: the hosts of a cluster share their sessions through Redis",
            ));
        }
        if self.key_file.is_none() {
            return Err(invalid(
                "cluster.key_file",
                "required with cluster.listen: forwarding between hosts is authenticated",
            ));
        }
        match &self.advertise {
            None if listen.ip().is_unspecified() => Err(invalid(
                "cluster.advertise",
                format!("required because cluster.listen ({listen}) names no single address"),
            )),
            None => Ok(()),
            Some(a) if !is_host_port(a) => Err(invalid(
                "cluster.advertise",
                format!("{a:?} must be host:port (a name or an IP address, and a port 1-65535)"),
            )),
            Some(_) => Ok(()),
        }
    }

    /// Read `key_file`, if set. Separate from [`Config::validate`] because
    /// it touches the file system; run at start, on each reload and by
    /// `check-config`.
    pub fn read_key(&self) -> Result<Option<crate::cluster::ClusterKey>, ConfigError> {
        self.key_file
            .as_deref()
            .map(crate::cluster::ClusterKey::read)
            .transpose()
            .map_err(|reason| invalid("cluster.key_file", reason))
    }
}

/// `host:port` with a non-empty host of printable ASCII and a port 1-65535.
fn is_host_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
        && port.parse::<u16>().is_ok_and(|p| p != 0)
}
