//! Who may use the admin listener: the `Host`/`Origin` policy shared with
//! the public listeners ([`mcpgw_protocol::host_policy`]) and the bearer
//! token from `admin_token_file`. A [`Guard`] is built from the
//! configuration at start and on every reload; the admin handlers ask it
//! about every request before doing anything.
//!
//! Reading is open on loopback (a local operator, `mcpgw status`, a
//! Prometheus scrape); changing state never is without the token, because a
//! browser page can send a POST to any address the browser can reach.

use http::Method;
use mcpgw_protocol::config::{AdminToken, Config};
use mcpgw_protocol::host_policy::{HostPolicy, Refused};

#[derive(Debug)]
pub(crate) struct Guard {
    policy: HostPolicy,
    token: Option<AdminToken>,
    /// The admin listener is not on loopback: every request needs the token.
    token_for_all: bool,
}

/// Why a request was refused.
#[derive(Debug, PartialEq)]
pub(crate) enum Refusal {
    /// A `Host` or `Origin` the policy does not allow: 403.
    Header(Refused),
    /// A state-changing request, and no `admin_token_file` is set: 403.
    NoTokenConfigured,
    /// The token is needed and was missing or wrong: 401.
    BadToken,
}

impl Guard {
    pub(crate) fn new(config: &Config, token: Option<AdminToken>) -> Self {
        Self {
            policy: HostPolicy::admin(config),
            token,
            token_for_all: !config.admin_listen.ip().is_loopback(),
        }
    }

    /// `host`, `origin`: as [`HostPolicy::check`] takes them;
    /// `authorization`: the `Authorization` header, if any.
    pub(crate) fn check(
        &self,
        method: &Method,
        host: Option<&str>,
        origin: Option<&str>,
        authorization: Option<&[u8]>,
    ) -> Result<(), Refusal> {
        self.policy.check(host, origin).map_err(Refusal::Header)?;
        let changes_state = !matches!(*method, Method::GET | Method::HEAD);
        if !(changes_state || self.token_for_all) {
            return Ok(());
        }
        // Validation refuses an off-loopback admin listener without a token
        // file, so only state-changing requests on loopback get here without one.
        let Some(token) = &self.token else {
            return Err(Refusal::NoTokenConfigured);
        };
        match authorization.and_then(bearer) {
            Some(given) if constant_time_eq(token.as_bytes(), given) => Ok(()),
            _ => Err(Refusal::BadToken),
        }
    }
}

/// The credentials of `Bearer <token>` (the scheme is case-insensitive).
fn bearer(authorization: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = authorization.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

/// Equality whose time depends only on the expected token's length, not on
/// where a guess first differs, so it cannot be found a byte at a time.
fn constant_time_eq(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = u8::from(expected.len() != given.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(t: &str) -> Option<AdminToken> {
        // Tests run in parallel: one file each.
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("mcpgw-guard-test-{}-{n}", std::process::id()));
        std::fs::write(&path, format!("{t}\n")).expect("write token");
        let token = AdminToken::read(&path).expect("token");
        let _ = std::fs::remove_file(&path);
        Some(token)
    }

    const LOCAL: Option<&str> = Some("127.0.0.1:9090");

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
        assert!(!constant_time_eq(b"s3cret", b"s3crett"));
        assert!(!constant_time_eq(b"s3cret", b"S3cret"));
        assert!(!constant_time_eq(b"s3cret", b""));
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
    }

    #[test]
    fn loopback_reads_are_open_and_changes_need_the_token() {
        let config = Config::default();
        let open = Guard::new(&config, None);
        assert_eq!(open.check(&Method::GET, LOCAL, None, None), Ok(()));
        assert_eq!(
            open.check(&Method::POST, LOCAL, None, Some(b"Bearer x")),
            Err(Refusal::NoTokenConfigured)
        );
        let guarded = Guard::new(&config, token("t0ken"));
        assert_eq!(guarded.check(&Method::GET, LOCAL, None, None), Ok(()));
        assert_eq!(
            guarded.check(&Method::POST, LOCAL, None, None),
            Err(Refusal::BadToken)
        );
        assert_eq!(
            guarded.check(&Method::POST, LOCAL, None, Some(b"Bearer t0ke")),
            Err(Refusal::BadToken)
        );
        assert_eq!(
            guarded.check(&Method::DELETE, LOCAL, None, Some(b"Bearer t0ken")),
            Ok(())
        );
    }

    #[test]
    fn rebound_names_are_refused_before_the_token_is_looked_at() {
        let guard = Guard::new(&Config::default(), token("t0ken"));
        let refused = guard
            .check(
                &Method::POST,
                Some("evil.com"),
                Some("http://evil.com"),
                Some(b"Bearer t0ken"),
            )
            .expect_err("a rebound name");
        assert!(matches!(refused, Refusal::Header(Refused::Host(_))));
        let refused = guard
            .check(&Method::GET, LOCAL, Some("http://evil.com"), None)
            .expect_err("a foreign page");
        assert!(matches!(refused, Refusal::Header(Refused::Origin(_))));
    }

    #[test]
    fn off_loopback_every_request_needs_the_token() {
        let config = Config::parse(
            "admin_listen = \"10.0.0.1:9090\"\nadmin_token_file = \"/etc/mcpgw/admin.token\"",
        )
        .expect("config");
        let guard = Guard::new(&config, token("t0ken"));
        let host = Some("10.0.0.1:9090");
        assert_eq!(
            guard.check(&Method::GET, host, None, None),
            Err(Refusal::BadToken)
        );
        assert_eq!(
            guard.check(&Method::GET, host, None, Some(b"Bearer t0ken")),
            Ok(())
        );
    }
}
