//! An upstream's own bearer token from the OAuth 2.1 client-credentials
//! grant (`[upstream.oauth]`), cached per worker and per upstream server,
//! and the requests that carry it. The client's token is never passed
//! upstream (the MCP authorization spec forbids token passthrough): the
//! upstream sees this gateway's token, and only it.
//!
//! [`Credentials::token`] gives the token in force. The first need fetches
//! one; concurrent needs wait for that one fetch (single flight), which
//! runs in a task of its own, so a request that gives up does not cancel
//! it for the others. Once a token has lived [`REFRESH_AT`] of its
//! lifetime, the next use starts a refresh in the background and goes on
//! with the current token: a request never waits on a refresh while the
//! token in force is valid (an upstream nobody uses asks for nothing). A
//! token is not used in its last tenth of life (at most [`EXPIRY_MARGIN`]),
//! so it does not expire on its way.
//!
//! [`Credentials::send`] sends one request with the token; when the
//! upstream answers 401 to it, the token is dropped, a new one fetched and
//! the request sent once more (a 401 means it was not processed). A fetch
//! that fails, or a token refused right after it was issued, starts a
//! backoff ([`backoff`]: 1 s doubling to [`MAX_BACKOFF`]) during which no
//! fetch is made and requests that have no valid token get the failure at
//! once, so a broken IdP is not hammered. Each fetch is counted in
//! `mcpgw_upstream_token_fetches_total{upstream,outcome}`; failures are
//! logged with the OAuth error code. Neither tokens nor the secret are
//! ever logged.
//!
//! A reload that changes anything of `[upstream.oauth]` makes a new
//! [`crate::upstream::UpstreamServer`] (a connection change), so its
//! sessions are re-opened and the cached token is dropped with the old one.
//!
//! Submodule: [`grant`] (one exchange with the token endpoint).

pub(crate) mod grant;

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{Response, StatusCode};
use mcpgw_protocol::config::UpstreamOAuth;
use tokio::time::Instant;
use tokio_rustls::rustls::ClientConfig;
use tracing::{debug, info, warn};

use crate::http::client::{ConnError, ConnPool, Outgoing, UpstreamBody};
pub(crate) use grant::TokenError;

/// Share of a token's lifetime after which its next use refreshes it.
pub(crate) const REFRESH_AT: f64 = 0.8;
/// A token is not used in its last tenth of life, and at most this long
/// before its end.
pub(crate) const EXPIRY_MARGIN: Duration = Duration::from_secs(5);
/// Longest wait between failed fetches.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The wait after `failures` failures in a row (1 s, 2 s, 4 s, … 60 s).
pub(crate) fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(6);
    (Duration::from_secs(1) * (1 << doublings)).min(MAX_BACKOFF)
}

/// A token as sent, and when it must be refreshed and no longer used.
pub(crate) struct Token {
    /// `authorization: Bearer …\r\n`, rendered once.
    line: Box<[u8]>,
    refresh_at: Instant,
    usable_until: Instant,
    /// Fetched because the upstream refused the one before: refused in
    /// turn before the upstream took it once, it counts as a failure (the
    /// IdP issues tokens the upstream does not take), not as a reason for
    /// yet another fetch.
    after_rejection: bool,
    /// The upstream answered a request with it (not 401) at least once.
    taken: AtomicBool,
}

impl Token {
    /// `fetched`: when the request for it went out (its lifetime counts
    /// from then, never from later than the IdP's clock).
    fn new(
        access_token: &str,
        lifetime: Duration,
        fetched: Instant,
        after_rejection: bool,
    ) -> Self {
        let mut line = Vec::with_capacity(access_token.len() + 24);
        line.extend_from_slice(b"authorization: Bearer ");
        line.extend_from_slice(access_token.as_bytes());
        line.extend_from_slice(b"\r\n");
        let margin = (lifetime / 10).min(EXPIRY_MARGIN);
        Self {
            line: line.into_boxed_slice(),
            refresh_at: fetched + lifetime.mul_f64(REFRESH_AT),
            usable_until: fetched + lifetime - margin,
            after_rejection,
            taken: AtomicBool::new(false),
        }
    }

    /// The header lines of a request: the token's, then `extra`.
    fn with<'a>(&'a self, extra: &'a [u8]) -> Cow<'a, [u8]> {
        if extra.is_empty() {
            Cow::Borrowed(&self.line)
        } else {
            Cow::Owned([&self.line[..], extra].concat())
        }
    }
}

/// Why a request with credentials got no answer.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No token (the fetch failed, or is in backoff).
    Token(TokenError),
    Conn(ConnError),
}

/// The token cache of one upstream server in this worker.
pub(crate) struct Credentials {
    upstream: Arc<str>,
    grant: grant::Grant,
    state: Mutex<State>,
    /// Woken when a fetch ends (its result is in `state`).
    fetched: tokio::sync::Notify,
    /// `mcpgw_upstream_token_fetches_total` children, by [`grant::OUTCOMES`].
    counted: [prometheus::IntCounter; grant::OUTCOMES.len()],
}

#[derive(Default)]
struct State {
    current: Option<Arc<Token>>,
    /// A fetch task is running.
    fetching: bool,
    /// Failed fetches (and fresh tokens refused) in a row.
    failures: u32,
    /// No fetch before this, after a failure.
    retry_at: Option<Instant>,
    /// Why the last fetch failed, for requests during the backoff.
    last_error: Option<TokenError>,
    /// The next token is fetched because the upstream refused the last.
    after_rejection: bool,
}

impl Credentials {
    /// The cache of upstream `upstream`; `tls` is the upstream's client
    /// configuration, used when the token endpoint is `https://`.
    pub(crate) fn new(
        upstream: &str,
        cfg: &UpstreamOAuth,
        connect_timeout: Duration,
        tls: Option<Arc<ClientConfig>>,
    ) -> Result<Self, String> {
        let counted = grant::OUTCOMES
            .map(|o| crate::metrics::TOKEN_FETCHES.with_label_values(&[upstream, o]));
        Ok(Self {
            upstream: Arc::from(upstream),
            grant: grant::Grant::new(cfg, connect_timeout, tls)?,
            state: Mutex::new(State::default()),
            fetched: tokio::sync::Notify::new(),
            counted,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The token in force, fetched first if there is none (or it is too
    /// close to its end); a fetch in backoff answers its last failure. The
    /// caller bounds the wait by its deadline.
    pub(crate) async fn token(self: &Arc<Self>) -> Result<Arc<Token>, TokenError> {
        loop {
            let done = self.fetched.notified();
            tokio::pin!(done);
            {
                let mut st = self.lock();
                let now = Instant::now();
                let backing_off = st.retry_at.is_some_and(|at| now < at);
                if let Some(t) = st.current.as_ref().filter(|t| now < t.usable_until) {
                    let t = t.clone();
                    if now >= t.refresh_at && !st.fetching && !backing_off {
                        debug!(upstream = %self.upstream, "access token refresh started in the background");
                        self.start_fetch(&mut st);
                    }
                    return Ok(t);
                }
                if backing_off && let Some(e) = &st.last_error {
                    return Err(e.clone());
                }
                if !st.fetching {
                    self.start_fetch(&mut st);
                }
                // Registered before the lock goes, so the end of the fetch
                // cannot slip between.
                done.as_mut().enable();
            }
            done.await;
        }
    }

    fn start_fetch(self: &Arc<Self>, st: &mut State) {
        st.fetching = true;
        let after_rejection = std::mem::take(&mut st.after_rejection);
        let me = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let got = me.grant.fetch().await;
            let outcome = got.as_ref().map_or_else(TokenError::outcome, |_| "ok");
            if let Some(i) = grant::OUTCOMES.iter().position(|o| *o == outcome) {
                me.counted[i].inc();
            }
            {
                let mut st = me.lock();
                st.fetching = false;
                match got {
                    Ok(issued) => {
                        debug!(upstream = %me.upstream, lifetime_s = issued.lifetime.as_secs(),
                            "access token fetched");
                        st.current = Some(Arc::new(Token::new(
                            &issued.access_token,
                            issued.lifetime,
                            started,
                            after_rejection,
                        )));
                        if !after_rejection {
                            st.failures = 0;
                        }
                        st.retry_at = None;
                        st.last_error = None;
                    }
                    Err(e) => me.failed(&mut st, e),
                }
            }
            me.fetched.notify_waiters();
        });
    }

    /// Count a failure and start (or lengthen) the backoff.
    fn failed(&self, st: &mut State, e: TokenError) {
        st.failures = st.failures.saturating_add(1);
        let wait = backoff(st.failures);
        st.retry_at = Some(Instant::now() + wait);
        warn!(upstream = %self.upstream, oauth_error = e.oauth_code().unwrap_or("-"),
            failures = st.failures, retry_in_s = wait.as_secs(), error = %e,
            "no access token for the upstream; requests that need one fail until the next attempt");
        st.last_error = Some(e);
    }

    /// The upstream answered 401 to `token`: drop it (unless another
    /// request already replaced it) so that the next use fetches anew.
    pub(crate) fn rejected(&self, token: &Arc<Token>) {
        let mut st = self.lock();
        if !st.current.as_ref().is_some_and(|c| Arc::ptr_eq(c, token)) {
            return;
        }
        st.current = None;
        if token.after_rejection && !token.taken.load(Ordering::Relaxed) {
            self.failed(&mut st, TokenError::Rejected);
            // The next token is on probation too, so a persistent refusal
            // backs off further each time instead of starting over.
            st.after_rejection = true;
        } else {
            info!(upstream = %self.upstream, "the upstream refused its access token (HTTP 401); fetching a new one");
            st.after_rejection = true;
        }
    }

    /// The upstream answered a request sent with `token` (not 401).
    fn taken(&self, token: &Token) {
        // Read first: the flag is written once per token, not per request.
        if token.taken.load(Ordering::Relaxed) {
            return;
        }
        token.taken.store(true, Ordering::Relaxed);
        if token.after_rejection {
            // The upstream takes the IdP's tokens again.
            self.lock().failures = 0;
        }
    }

    /// Send `req` on `pool` with the token; a 401 answer drops the token
    /// and the request goes once more with a new one. The caller bounds it
    /// by its deadline.
    pub(crate) async fn send(
        self: &Arc<Self>,
        pool: &ConnPool,
        req: Outgoing<'_>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let mut retried = false;
        loop {
            let token = self.token().await.map_err(SendError::Token)?;
            let lines = token.with(req.extra);
            let resp = pool
                .send(Outgoing {
                    method: req.method,
                    path: req.path,
                    headers: req.headers,
                    extra: &lines,
                    body: req.body.clone(),
                })
                .await
                .map_err(SendError::Conn)?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                self.taken(&token);
                return Ok(resp);
            }
            if retried {
                return Ok(resp);
            }
            // Its body is dropped unread (the connection with it): a 401
            // is rare, and its text is the upstream's business.
            self.rejected(&token);
            retried = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A loopback token endpoint answering every request with `answer` (a
    /// whole HTTP response, connection closed after it), counting them.
    async fn token_endpoint(answer: &'static str) -> (String, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let asked = Arc::new(AtomicU64::new(0));
        let counted = asked.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    // The grant's request fits one read on loopback.
                    if conn.read(&mut buf).await.is_ok_and(|n| n > 0) {
                        counted.fetch_add(1, Ordering::SeqCst);
                        let _ = conn.write_all(answer.as_bytes()).await;
                    }
                });
            }
        });
        (format!("http://{addr}/token"), asked)
    }

    fn credentials(token_url: &str) -> Arc<Credentials> {
        let cfg = UpstreamOAuth {
            token_url: token_url.to_owned(),
            client_id: "gw".to_owned(),
            client_secret: "s".to_owned(),
            scopes: Vec::new(),
            resource: None,
            auth_method: mcpgw_protocol::config::ClientAuthMethod::ClientSecretBasic,
        };
        Arc::new(Credentials::new("up", &cfg, Duration::from_secs(5), None).expect("credentials"))
    }

    const ISSUED: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
        connection: close\r\ncontent-length: 62\r\n\r\n\
        {\"access_token\":\"t0k\",\"token_type\":\"Bearer\",\"expires_in\":3600}";
    const REFUSED: &str = "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n\
        connection: close\r\ncontent-length: 26\r\n\r\n{\"error\":\"invalid_client\"}";

    #[tokio::test]
    async fn concurrent_needs_share_one_fetch_and_the_token_is_reused() {
        assert_eq!(ISSUED.split("\r\n\r\n").nth(1).map(str::len), Some(62));
        let (url, asked) = token_endpoint(ISSUED).await;
        let creds = credentials(&url);
        let waiting: Vec<_> = (0..16)
            .map(|_| {
                let c = creds.clone();
                tokio::spawn(async move { c.token().await.map(|t| t.line.clone()) })
            })
            .collect();
        for w in waiting {
            let line = w.await.expect("task").expect("token");
            assert_eq!(&*line, b"authorization: Bearer t0k\r\n");
        }
        creds.token().await.expect("cached");
        assert_eq!(asked.load(Ordering::SeqCst), 1, "one fetch for all");
    }

    #[tokio::test]
    async fn a_refusal_backs_off_and_a_rejected_token_is_fetched_anew() {
        assert_eq!(REFUSED.split("\r\n\r\n").nth(1).map(str::len), Some(26));
        let (url, asked) = token_endpoint(REFUSED).await;
        let creds = credentials(&url);
        let e = creds.token().await.err().expect("refused");
        assert_eq!(e.oauth_code(), Some("invalid_client"));
        // Within the backoff the failure is answered without asking again.
        for _ in 0..5 {
            assert!(creds.token().await.is_err());
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);

        let (url, asked) = token_endpoint(ISSUED).await;
        let creds = credentials(&url);
        let first = creds.token().await.expect("token");
        creds.rejected(&first);
        let second = creds.token().await.expect("a new token");
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        // Refused in turn before the upstream ever took it: the IdP's tokens
        // do not work there, which is a failure, not a reason to fetch again.
        creds.rejected(&second);
        assert!(matches!(creds.token().await, Err(TokenError::Rejected)));
        assert_eq!(asked.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn a_token_is_refreshed_at_four_fifths_and_unused_near_its_end() {
        let now = Instant::now();
        let t = Token::new("abc", Duration::from_secs(100), now, false);
        assert_eq!(t.refresh_at, now + Duration::from_secs(80));
        assert_eq!(t.usable_until, now + Duration::from_secs(95));
        let short = Token::new("abc", Duration::from_secs(3), now, false);
        assert_eq!(short.refresh_at, now + Duration::from_millis(2400));
        assert_eq!(short.usable_until, now + Duration::from_millis(2700));
        assert_eq!(&*t.with(b""), b"authorization: Bearer abc\r\n");
        assert_eq!(
            &*t.with(b"traceparent: x\r\n"),
            b"authorization: Bearer abc\r\ntraceparent: x\r\n"
        );
    }
}
