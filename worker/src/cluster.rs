//! This worker's part in a cluster of gateway hosts (`[cluster]`, the
//! contract is [`mcpgw_protocol::cluster`]): checking the requests other
//! hosts forward to it (signature, clock skew, replayed nonces), signing
//! the ones it forwards, and remembering which host owns a session another
//! host holds ([`Owners`]). Forwarding itself is [`crate::forward`]'s.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::HeaderValue;
use http::request::Parts;
use mcpgw_mcp::headers::MCP_SESSION_ID;
use mcpgw_protocol::cluster::{
    ClusterKey, MAX_SKEW_MS, NONCE, Refusal, SIGNATURE, Signed, TIMESTAMP, now_ms,
};
use mcpgw_protocol::headers::CLIENT_ADDR;
use mcpgw_protocol::session_id::SessionId;
use tokio::time::Instant;

use crate::auth::PRINCIPAL_HEADER;

/// Another gateway host, as the store named it for a session it owns.
#[derive(Debug)]
pub(crate) struct Peer {
    /// Its `[store] host` (the metrics' `peer` label).
    pub host: Arc<str>,
    /// `host:port` of its cluster listener.
    pub addr: Arc<str>,
}

/// Sessions of other hosts remembered at once; past it the oldest go.
const OWNERS_CAP: usize = 16_384;

/// Which host owns each session of another host this worker forwarded
/// lately, so that only the first request of such a session asks the store.
/// An entry is dropped on any miss (the host unreachable, or answering that
/// it does not own the session, or 404), and the next request asks again.
#[derive(Default)]
pub(crate) struct Owners {
    inner: Mutex<OwnersInner>,
}

#[derive(Default)]
struct OwnersInner {
    by_id: HashMap<SessionId, Arc<Peer>>,
    order: VecDeque<SessionId>,
}

impl Owners {
    fn lock(&self) -> MutexGuard<'_, OwnersInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn get(&self, id: &SessionId) -> Option<Arc<Peer>> {
        self.lock().by_id.get(id).cloned()
    }

    pub(crate) fn insert(&self, id: SessionId, peer: Arc<Peer>) {
        let mut inner = self.lock();
        if inner.by_id.insert(id, peer).is_some() {
            return;
        }
        inner.order.push_back(id);
        // `order` may hold ids already forgotten; they are skipped here.
        while inner.by_id.len() > OWNERS_CAP || inner.order.len() > 2 * OWNERS_CAP {
            match inner.order.pop_front() {
                Some(old) if old != id => {
                    inner.by_id.remove(&old);
                }
                Some(_) => {}
                None => break,
            }
        }
    }

    pub(crate) fn forget(&self, id: &SessionId) {
        self.lock().by_id.remove(id);
    }
}

/// Nonces remembered at once. Past it the oldest are forgotten before their
/// time (a replay of one of those within the skew window would pass), so it
/// is sized for several thousand forwarded requests a second per worker.
const REPLAY_CAP: usize = 131_072;
/// How long a nonce is remembered: as long as its timestamp can pass.
const REPLAY_WINDOW: Duration = Duration::from_millis(2 * MAX_SKEW_MS);
/// A nonce is 128 bits in hex.
const NONCE_LEN: usize = 32;

/// The nonces of signed requests seen within [`REPLAY_WINDOW`].
#[derive(Default)]
pub(crate) struct Replays {
    inner: Mutex<ReplaysInner>,
}

#[derive(Default)]
struct ReplaysInner {
    seen: HashSet<[u8; NONCE_LEN]>,
    order: VecDeque<([u8; NONCE_LEN], Instant)>,
}

impl Replays {
    /// True the first time `nonce` is seen within the window.
    fn first_sight(&self, nonce: [u8; NONCE_LEN], now: Instant) -> bool {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some((old, at)) = inner.order.front().copied() {
            if now.saturating_duration_since(at) < REPLAY_WINDOW && inner.order.len() < REPLAY_CAP {
                break;
            }
            inner.seen.remove(&old);
            inner.order.pop_front();
        }
        if !inner.seen.insert(nonce) {
            return false;
        }
        inner.order.push_back((nonce, now));
        true
    }
}

fn header(parts: &Parts, name: impl http::header::AsHeaderName) -> &[u8] {
    parts.headers.get(name).map_or(&[], HeaderValue::as_bytes)
}

fn signed<'a>(parts: &'a Parts, body: &'a [u8], timestamp_ms: u64, nonce: &'a [u8]) -> Signed<'a> {
    Signed {
        method: parts.method.as_str().as_bytes(),
        path: parts
            .uri
            .path_and_query()
            .map_or(b"/", |p| p.as_str().as_bytes()),
        body,
        timestamp_ms,
        nonce,
        session: header(parts, MCP_SESSION_ID),
        principal: header(parts, PRINCIPAL_HEADER),
        client: header(parts, CLIENT_ADDR),
    }
}

/// Check a request that arrived on the cluster listener.
pub(crate) fn check(
    key: &ClusterKey,
    replays: &Replays,
    parts: &Parts,
    body: &[u8],
) -> Result<(), Refusal> {
    let (Some(signature), Some(ts), Some(nonce)) = (
        parts.headers.get(SIGNATURE),
        parts.headers.get(TIMESTAMP),
        parts.headers.get(NONCE),
    ) else {
        return Err(Refusal::Missing);
    };
    let ts: u64 = ts
        .to_str()
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(Refusal::Missing)?;
    let nonce: [u8; NONCE_LEN] = nonce.as_bytes().try_into().map_err(|_| Refusal::Missing)?;
    key.verify(
        &signed(parts, body, ts, &nonce),
        signature.as_bytes(),
        now_ms(),
    )?;
    // Only a correctly signed nonce is remembered: forged requests cannot
    // fill the table.
    if !replays.first_sight(nonce, Instant::now()) {
        return Err(Refusal::Replay);
    }
    Ok(())
}

/// Sign a request this worker forwards to another host: its headers are
/// final (the forwarding contract's), `body` is what will be sent.
pub(crate) fn sign(
    key: &ClusterKey,
    parts: &mut Parts,
    body: &[u8],
) -> Result<(), getrandom::Error> {
    let nonce = mcpgw_protocol::cluster::nonce()?;
    let ts = now_ms();
    let signature = key.sign(&signed(parts, body, ts, nonce.as_bytes()));
    parts.headers.insert(TIMESTAMP, HeaderValue::from(ts));
    // Hex digits and `v1=`: always valid header values.
    if let (Ok(n), Ok(sig)) = (
        HeaderValue::from_str(&nonce),
        HeaderValue::from_str(&signature),
    ) {
        parts.headers.insert(NONCE, n);
        parts.headers.insert(SIGNATURE, sig);
    }
    Ok(())
}

/// Refusals on the cluster listener can come as fast as an attacker sends
/// them: one log line a second at most, with how many since the last.
#[derive(Default)]
pub(crate) struct RefusalLog {
    inner: Mutex<(Option<std::time::Instant>, u64)>,
}

impl RefusalLog {
    pub(crate) fn note(&self, why: Refusal) {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.1 += 1;
        let now = std::time::Instant::now();
        if inner
            .0
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            tracing::warn!(
                reason = %why,
                refused_since_last_line = inner.1,
                "forwarded request refused on the cluster listener (403)"
            );
            *inner = (Some(now), 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &'static [u8]) -> (Parts, &'static [u8]) {
        let (parts, ()) = http::Request::post("/mcp?x=1")
            .header(MCP_SESSION_ID, "abcdefghijklmnopqrstuvwxyz")
            .header(CLIENT_ADDR, "10.0.0.9")
            .body(())
            .expect("request")
            .into_parts();
        (parts, body)
    }

    #[test]
    fn a_signed_request_passes_once_and_changes_fail() {
        let key = ClusterKey::from_bytes(&[7u8; 32]);
        let replays = Replays::default();
        let (mut parts, body) = request(b"{\"jsonrpc\":\"2.0\"}");
        assert_eq!(check(&key, &replays, &parts, body), Err(Refusal::Missing));
        sign(&key, &mut parts, body).expect("sign");
        assert_eq!(check(&key, &replays, &parts, body), Ok(()));
        assert_eq!(
            check(&key, &replays, &parts, body),
            Err(Refusal::Replay),
            "the same nonce twice"
        );
        let mut other = parts.clone();
        sign(&key, &mut other, body).expect("sign");
        assert_eq!(
            check(&key, &replays, &other, b"{}"),
            Err(Refusal::BadSignature)
        );
        other
            .headers
            .insert(CLIENT_ADDR, HeaderValue::from_static("10.6.6.6"));
        assert_eq!(
            check(&key, &replays, &other, body),
            Err(Refusal::BadSignature)
        );
        let wrong = ClusterKey::from_bytes(&[8u8; 32]);
        let mut forged = request(b"").0;
        sign(&wrong, &mut forged, b"").expect("sign");
        assert_eq!(
            check(&key, &replays, &forged, b""),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn nonces_expire_after_the_window_and_owners_are_bounded() {
        let replays = Replays::default();
        let now = Instant::now();
        let n = [b'a'; NONCE_LEN];
        assert!(replays.first_sight(n, now));
        assert!(!replays.first_sight(n, now + Duration::from_secs(1)));
        assert!(replays.first_sight(n, now + REPLAY_WINDOW + Duration::from_secs(1)));

        let owners = Owners::default();
        let peer = Arc::new(Peer {
            host: "b".into(),
            addr: "127.0.0.1:1".into(),
        });
        let first = SessionId::mint_for_slot(0, 1).expect("id");
        owners.insert(first, peer.clone());
        assert!(owners.get(&first).is_some());
        owners.forget(&first);
        assert!(owners.get(&first).is_none());
        owners.insert(first, peer.clone());
        for _ in 0..OWNERS_CAP {
            owners.insert(SessionId::mint_for_slot(0, 1).expect("id"), peer.clone());
        }
        assert!(owners.get(&first).is_none(), "the oldest went first");
        assert_eq!(owners.lock().by_id.len(), OWNERS_CAP);
    }
}
