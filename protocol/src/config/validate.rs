//! Checks of a parsed config that serde cannot make: ranges, references
//! between sections, uniqueness, URL shapes. Every refusal names the real
//! key path (see [`super::error`]).

use super::*;

impl Config {
    /// Check everything serde cannot: ranges, references, uniqueness.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(invalid("listen", "at least one address is required"));
        }
        let admin = self.admin_listen;
        if admin.port() != 0 && self.listen.contains(&admin) {
            return Err(invalid(
                "admin_listen",
                format!("{admin} is also a public listener"),
            ));
        }
        if !admin.ip().is_loopback() && self.admin_token_file.is_none() {
            return Err(invalid(
                "admin_token_file",
                format!(
                    "required because admin_listen ({admin}) is not a loopback address: \
                     every admin request must then carry its token"
                ),
            ));
        }
        let mut addrs: Vec<SocketAddr> = self
            .listen
            .iter()
            .copied()
            .filter(|a| a.port() != 0)
            .collect();
        addrs.push(admin);
        for (i, t) in self.tls_listener.iter().enumerate() {
            if t.addr.port() != 0 && addrs.contains(&t.addr) {
                return Err(invalid(
                    format!("tls_listener[{i}].addr"),
                    format!("{} is already used by another listener", t.addr),
                ));
            }
            addrs.push(t.addr);
        }
        if let Some(w) = self.workers
            && !(1..=256).contains(&w)
        {
            return Err(invalid("workers", format!("must be 1..=256, got {w}")));
        }
        if self.namespace_separator.is_empty()
            || !self
                .namespace_separator
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'/')
        {
            return Err(invalid(
                "namespace_separator",
                "must be non-empty printable ASCII without '/'",
            ));
        }
        self.store.validate()?;
        self.tracing.validate()?;
        self.cluster.validate(&self.store)?;
        self.validate_auth()?;
        self.validate_authz()?;
        for (i, h) in self.security.allowed_hosts.iter().flatten().enumerate() {
            if h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic()) || h.contains('/') {
                return Err(invalid(
                    format!("security.allowed_hosts[{i}]"),
                    format!("{h:?} is not a host name"),
                ));
            }
        }
        for (i, o) in self.security.allowed_origins.iter().enumerate() {
            if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                return Err(invalid(
                    format!("security.allowed_origins[{i}]"),
                    format!("{o:?} must be scheme://host[:port], without a path"),
                ));
            }
        }
        let l = &self.limits;
        if !(1024..=1024 * 1024).contains(&l.max_head_bytes) {
            return Err(invalid("limits.max_head_bytes", "must be 1024..=1048576"));
        }
        for (key, v) in [
            ("limits.max_body_bytes", u64::from(l.max_body_bytes)),
            ("limits.header_timeout_ms", l.header_timeout_ms),
            (
                "limits.max_connections_per_worker",
                u64::from(l.max_connections_per_worker),
            ),
            ("limits.body_timeout_ms", l.body_timeout_ms),
            (
                "limits.max_pending_connections",
                u64::from(l.max_pending_connections),
            ),
            ("limits.max_answer_bytes", u64::from(l.max_answer_bytes)),
            (
                "limits.max_buffered_answer_bytes",
                l.max_buffered_answer_bytes,
            ),
            (
                "limits.max_session_params_bytes",
                u64::from(l.max_session_params_bytes),
            ),
            ("limits.max_sessions", u64::from(l.max_sessions)),
            (
                "limits.max_sessions_per_worker",
                u64::from(l.max_sessions_per_worker),
            ),
            ("limits.max_batch_len", u64::from(l.max_batch_len)),
            (
                "sessions.idle_timeout_secs",
                self.sessions.idle_timeout_secs,
            ),
            (
                "sessions.upstream_close_grace_ms",
                self.sessions.upstream_close_grace_ms,
            ),
            ("sessions.heartbeat_ms", self.sessions.heartbeat_ms),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, u) in self.upstream.iter().enumerate() {
            let key = |field: &str| format!("upstream[{i}].{field}");
            if u.id.is_empty()
                || u.id.len() > 64
                || !u
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(invalid(
                    key("id"),
                    format!("{:?} must match [A-Za-z0-9_-]{{1,64}}", u.id),
                ));
            }
            if !seen.insert(u.id.as_str()) {
                return Err(invalid(
                    key("id"),
                    format!("duplicate upstream id {:?}", u.id),
                ));
            }
            // The cap on live backends applies to the transports behind the
            // worker's adapter (stdio processes, legacy event streams).
            if u.transport != Transport::StreamableHttp && u.max_processes == 0 {
                return Err(invalid(key("max_processes"), "must be greater than 0"));
            }
            // stdio children and legacy event streams sit behind the
            // worker's session adapter: only the session protocol reaches them.
            if u.era == UpstreamEra::Stateless && u.transport != Transport::StreamableHttp {
                return Err(invalid(
                    key("era"),
                    "era = \"stateless\" needs transport = \"streamable-http\"",
                ));
            }
            match u.transport {
                Transport::StreamableHttp | Transport::Sse => {
                    check_upstream_url(&u.url).map_err(|reason| invalid(key("url"), reason))?;
                    let stdio_only = if u.command.is_some() {
                        Some("command")
                    } else if !u.args.is_empty() {
                        Some("args")
                    } else if !u.env.is_empty() {
                        Some("env")
                    } else {
                        None
                    };
                    check_upstream_tls(u).map_err(|(field, reason)| invalid(key(field), reason))?;
                    if let Some(field) = stdio_only {
                        return Err(invalid(
                            key(field),
                            "command, args and env are for transport = \"stdio\"",
                        ));
                    }
                }
                Transport::Stdio => {
                    if !u.url.is_empty() {
                        return Err(invalid(key("url"), "a stdio upstream has no url"));
                    }
                    check_upstream_tls(u).map_err(|(field, reason)| invalid(key(field), reason))?;
                    match &u.command {
                        Some(c) if !c.trim().is_empty() && !c.contains('\0') => {}
                        _ => {
                            return Err(invalid(
                                key("command"),
                                "transport = \"stdio\" needs the program to run",
                            ));
                        }
                    }
                    if let Some(name) = u
                        .env
                        .keys()
                        .find(|k| k.is_empty() || k.contains(['=', '\0']))
                    {
                        return Err(invalid(
                            key("env"),
                            format!("{name:?} is not a variable name"),
                        ));
                    }
                }
            }
            for (name, value) in &u.headers {
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
                {
                    return Err(invalid(
                        key("headers"),
                        format!("{name:?} is not a header name"),
                    ));
                }
                if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
                    return Err(invalid(
                        key("headers"),
                        format!("value of {name:?} contains control characters"),
                    ));
                }
            }
            if let Some(oauth) = &u.oauth {
                if u.transport == Transport::Stdio {
                    return Err(invalid(
                        key("oauth"),
                        "[upstream.oauth] is for upstreams reached over HTTP (a stdio upstream \
                         gets its credentials through env)",
                    ));
                }
                if let Some(name) = u
                    .headers
                    .keys()
                    .find(|k| k.eq_ignore_ascii_case("authorization"))
                {
                    return Err(invalid(
                        key("oauth"),
                        format!(
                            "[upstream.oauth] and a static {name:?} header are mutually \
                             exclusive: the grant's token is this upstream's Authorization"
                        ),
                    ));
                }
                oauth
                    .validate()
                    .map_err(|(field, reason)| invalid(key(&format!("oauth.{field}")), reason))?;
            }
            if u.connect_timeout_ms == 0 {
                return Err(invalid(key("connect_timeout_ms"), "must be greater than 0"));
            }
            if u.request_timeout_ms == 0 {
                return Err(invalid(key("request_timeout_ms"), "must be greater than 0"));
            }
        }
        if self.sessions.heartbeat_ttl_ms < 2 * self.sessions.heartbeat_ms {
            return Err(invalid(
                "sessions.heartbeat_ttl_ms",
                "must be at least twice sessions.heartbeat_ms",
            ));
        }
        if !(1..=MAX_INPUT_WAIT_SECS).contains(&self.sessions.input_wait_secs) {
            return Err(invalid(
                "sessions.input_wait_secs",
                "must be 1 to 3600 (a waiting call holds an upstream session)",
            ));
        }
        if self.sessions.stateless_warm_sessions > MAX_WARM_SESSIONS {
            return Err(invalid(
                "sessions.stateless_warm_sessions",
                "must be at most 64 (each one is an open upstream session per kind of client)",
            ));
        }
        let mut paths = std::collections::BTreeSet::new();
        for (i, e) in self.endpoint.iter().enumerate() {
            let key = |field: &str| format!("endpoint[{i}].{field}");
            if !e.path.starts_with('/')
                || e.path.contains(['?', '#'])
                || e.path.bytes().any(|b| !b.is_ascii_graphic())
            {
                return Err(invalid(
                    key("path"),
                    format!("{:?} must be an absolute path without query", e.path),
                ));
            }
            if !paths.insert(e.path.as_str()) {
                return Err(invalid(key("path"), format!("duplicate path {:?}", e.path)));
            }
            if e.upstreams.is_empty() {
                return Err(invalid(key("upstreams"), "must name at least one upstream"));
            }
            for name in &e.upstreams {
                if !seen.contains(name.as_str()) {
                    return Err(invalid(
                        key("upstreams"),
                        format!("{name:?} is not a configured upstream id"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The TLS keys of an upstream: only for an `https://` URL, and the client
/// certificate and key together. `Err((key, reason))`. The files
/// themselves are read by [`Config::check_tls_files`].
fn check_upstream_tls(u: &Upstream) -> Result<(), (&'static str, String)> {
    let set = [
        ("ca_file", u.ca_file.is_some()),
        ("client_cert_file", u.client_cert_file.is_some()),
        ("client_key_file", u.client_key_file.is_some()),
    ];
    if !u.needs_tls()
        && let Some((field, _)) = set.iter().find(|(_, is_set)| *is_set)
    {
        return Err((
            field,
            format!(
                "{field} is for upstreams with an https:// url or oauth.token_url \
                 (this one's url is {:?})",
                crate::redact::url(&u.url)
            ),
        ));
    }
    match (&u.client_cert_file, &u.client_key_file) {
        (Some(cert), None) => Err((
            "client_key_file",
            format!(
                "missing: client_cert_file ({}) is set, and mTLS needs its private key too \
                 (set both or neither)",
                cert.display()
            ),
        )),
        (None, Some(key)) => Err((
            "client_cert_file",
            format!(
                "missing: client_key_file ({}) is set, and mTLS needs the certificate too \
                 (set both or neither)",
                key.display()
            ),
        )),
        _ => Ok(()),
    }
}

/// `http://` or `https://` `host[:port]/path`: the reason says what is
/// wrong. Reasons show the URL with user info and query values redacted.
pub(super) fn check_upstream_url(url: &str) -> Result<(), String> {
    let shown = crate::redact::url(url);
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return Err(format!("{shown:?} must start with http:// or https://"));
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{shown:?} needs a host (and no user info)"));
    }
    if url.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(format!("{shown:?} contains spaces or non-ASCII characters"));
    }
    Ok(())
}
