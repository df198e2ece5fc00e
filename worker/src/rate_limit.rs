//! Rate limits of one endpoint (`rate_limit`): token buckets per caller and
//! one for the whole endpoint, in this worker. Every JSON-RPC request (not
//! notifications or responses; each request of a batch) takes a token from
//! its caller's bucket and from the endpoint's before anything else is done
//! for it; without one it is refused with 429 (`crate::front`).
//!
//! Workers share nothing, so each enforces its share: the configured rate
//! and burst divided by the number of workers (a burst rounded up, at least
//! 1). Stateless requests and new sessions spread over the workers, and so
//! do their tokens; the requests of one session all reach its owner worker,
//! so a caller working through one session gets about 1/N of its budget.
//! The limit is never exceeded on this host; it may bite early.
//!
//! A caller is its principal (`[auth]`), else its client IP address (a
//! forwarded request carries it from the worker that received it), so
//! anonymous callers behind one proxy share a bucket. Memory is bounded: a bucket that
//! has refilled completely is the same as no bucket and is dropped by the
//! periodic sweep; past [`MAX_BUCKETS`] callers, the sweep runs at once
//! and, if every bucket is still in use, one is dropped (its caller gets a
//! fresh bucket: a flood of distinct callers can cost it its limit, never
//! the worker its memory).

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use foldhash::HashMap;
use mcpgw_protocol::config::{Rate, RateLimit};

/// Callers tracked per endpoint and worker at most.
pub(crate) const MAX_BUCKETS: usize = 65_536;

/// How often buckets that refilled are dropped, at most.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// A bucket's rate and size, in this worker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Shape {
    per_sec: f64,
    burst: f64,
}

impl Shape {
    /// `rate` and `burst` (default: the rate's count) split over `workers`.
    pub(crate) fn new(rate: Rate, burst: Option<u32>, workers: u16) -> Self {
        let n = f64::from(workers.max(1));
        let burst = f64::from(burst.unwrap_or(rate.tokens));
        Self {
            per_sec: rate.per_second() / n,
            burst: (burst / n).ceil().max(1.0),
        }
    }

    /// How long a bucket of this shape takes to refill from empty.
    fn refill(self) -> Duration {
        Duration::from_secs_f64(self.burst / self.per_sec)
    }
}

/// One token bucket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn full(shape: Shape, now: Instant) -> Self {
        Self {
            tokens: shape.burst,
            at: now,
        }
    }

    fn refilled(&self, shape: Shape, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * shape.per_sec).min(shape.burst)
    }

    /// Take `n` tokens at `now`, or say how long until there are `n`.
    pub(crate) fn take(&mut self, shape: Shape, n: u32, now: Instant) -> Result<(), Duration> {
        let tokens = self.refilled(shape, now);
        let n = f64::from(n);
        if tokens >= n {
            self.tokens = tokens - n;
            self.at = now;
            return Ok(());
        }
        self.tokens = tokens;
        self.at = now;
        if n > shape.burst {
            // More than the bucket ever holds: wait for a full bucket, and
            // the client learns it must send fewer at once.
            return Err(shape.refill());
        }
        Err(Duration::from_secs_f64((n - tokens) / shape.per_sec))
    }

    /// Full again at `now` (indistinguishable from a new bucket).
    fn is_full(&self, shape: Shape, now: Instant) -> bool {
        self.refilled(shape, now) >= shape.burst
    }
}

/// Who a bucket belongs to (borrowed: a look-up allocates nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Caller<'a> {
    /// [`crate::auth::Principal::id`].
    Principal(&'a str),
    Addr(IpAddr),
}

/// Which bucket refused a request (`mcpgw_rate_limited_total{scope}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Scope {
    Principal = 0,
    Endpoint = 1,
}

impl Scope {
    pub(crate) const LABELS: [&'static str; 2] = ["principal", "endpoint"];

    pub(crate) fn label(self) -> &'static str {
        Self::LABELS[self as usize]
    }
}

/// A refusal: which bucket, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limited {
    pub(crate) scope: Scope,
    pub(crate) retry_after: Duration,
}

struct Callers {
    principals: HashMap<Box<str>, Bucket>,
    addrs: HashMap<IpAddr, Bucket>,
    swept: Instant,
}

impl Callers {
    fn len(&self) -> usize {
        self.principals.len() + self.addrs.len()
    }

    fn knows(&self, caller: Caller<'_>) -> bool {
        match caller {
            Caller::Principal(id) => self.principals.contains_key(id),
            Caller::Addr(ip) => self.addrs.contains_key(&ip),
        }
    }

    /// Take `n` tokens from the caller's bucket (a full one if it had none).
    fn take(
        &mut self,
        caller: Caller<'_>,
        shape: Shape,
        n: u32,
        now: Instant,
    ) -> Result<(), Duration> {
        match caller {
            Caller::Principal(id) => match self.principals.get_mut(id) {
                Some(bucket) => bucket.take(shape, n, now),
                None => {
                    let mut bucket = Bucket::full(shape, now);
                    let taken = bucket.take(shape, n, now);
                    self.principals.insert(Box::from(id), bucket);
                    taken
                }
            },
            Caller::Addr(ip) => self
                .addrs
                .entry(ip)
                .or_insert_with(|| Bucket::full(shape, now))
                .take(shape, n, now),
        }
    }

    /// Drop the buckets that are full again.
    fn sweep(&mut self, shape: Shape, now: Instant) {
        self.principals.retain(|_, b| !b.is_full(shape, now));
        self.addrs.retain(|_, b| !b.is_full(shape, now));
        self.swept = now;
    }

    /// Drop some bucket (the table is full of busy ones).
    fn drop_one(&mut self) {
        if let Some(victim) = self.principals.keys().next().cloned() {
            self.principals.remove(&victim);
        } else if let Some(victim) = self.addrs.keys().next().copied() {
            self.addrs.remove(&victim);
        }
    }
}

/// One endpoint's buckets in this worker.
pub(crate) struct Limiter {
    per_caller: Option<Shape>,
    endpoint: Option<(Shape, Mutex<Bucket>)>,
    callers: Mutex<Callers>,
    max_buckets: usize,
}

impl Limiter {
    /// The limiter for `limit` in one of `workers` workers.
    pub(crate) fn new(limit: &RateLimit, workers: u16, now: Instant) -> Self {
        Self::with_capacity(limit, workers, now, MAX_BUCKETS)
    }

    fn with_capacity(limit: &RateLimit, workers: u16, now: Instant, max_buckets: usize) -> Self {
        let per_caller = limit
            .per_principal
            .map(|r| Shape::new(r, limit.burst, workers));
        let endpoint = limit.endpoint.map(|r| {
            let shape = Shape::new(r, limit.endpoint_burst, workers);
            (shape, Mutex::new(Bucket::full(shape, now)))
        });
        Self {
            per_caller,
            endpoint,
            callers: Mutex::new(Callers {
                principals: HashMap::default(),
                addrs: HashMap::default(),
                swept: now,
            }),
            max_buckets,
        }
    }

    /// Take `n` tokens for `caller` (and from the endpoint) at `now`. The
    /// caller's bucket is asked first: a caller over its own limit does
    /// not use up the endpoint's budget.
    pub(crate) fn take(
        &self,
        caller: Option<Caller<'_>>,
        n: u32,
        now: Instant,
    ) -> Result<(), Limited> {
        if let (Some(shape), Some(caller)) = (self.per_caller, caller) {
            let mut c = self
                .callers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !c.knows(caller) {
                self.make_room(&mut c, shape, now);
            }
            c.take(caller, shape, n, now)
                .map_err(|retry_after| Limited {
                    scope: Scope::Principal,
                    retry_after,
                })?;
        }
        if let Some((shape, bucket)) = &self.endpoint {
            let mut b = bucket
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            b.take(*shape, n, now).map_err(|retry_after| Limited {
                scope: Scope::Endpoint,
                retry_after,
            })?;
        }
        Ok(())
    }

    /// Before a new caller's bucket is made: drop the full buckets (every
    /// [`SWEEP_EVERY`], or at once when the table is full), and if the
    /// table is still full, one bucket.
    fn make_room(&self, c: &mut Callers, shape: Shape, now: Instant) {
        let full = c.len() >= self.max_buckets;
        let since = now.saturating_duration_since(c.swept);
        // When full of busy callers, at most once a second: a sweep is a
        // walk of the whole table.
        if since >= SWEEP_EVERY || (full && since >= Duration::from_secs(1)) {
            c.sweep(shape, now);
        }
        if c.len() >= self.max_buckets {
            c.drop_one();
        }
    }

    /// Callers with a bucket now (tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.callers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(text: &str) -> Rate {
        text.parse().expect("rate")
    }

    fn alice() -> Option<Caller<'static>> {
        Some(Caller::Principal("idp alice"))
    }

    fn bob() -> Option<Caller<'static>> {
        Some(Caller::Principal("idp bob"))
    }

    #[test]
    fn a_bucket_gives_its_burst_then_refills_at_the_rate() {
        let shape = Shape::new(rate("2/s"), Some(4), 1);
        let t0 = Instant::now();
        let mut b = Bucket::full(shape, t0);
        for _ in 0..4 {
            assert_eq!(b.take(shape, 1, t0), Ok(()));
        }
        assert_eq!(b.take(shape, 1, t0), Err(Duration::from_millis(500)));
        let later = t0 + Duration::from_millis(500);
        assert_eq!(b.take(shape, 1, later), Ok(()));
        assert_eq!(b.take(shape, 1, later), Err(Duration::from_millis(500)));
        // Never more than the burst, however long it waited.
        let much_later = later + Duration::from_secs(3600);
        assert_eq!(b.take(shape, 4, much_later), Ok(()));
        assert!(b.take(shape, 1, much_later).is_err());
        // More than a burst at once: wait for a full bucket.
        assert_eq!(b.take(shape, 5, much_later), Err(Duration::from_secs(2)));
    }

    #[test]
    fn shares_are_split_over_workers() {
        let s = Shape::new(rate("20/s"), Some(5), 4);
        assert_eq!(
            s,
            Shape {
                per_sec: 5.0,
                burst: 2.0
            }
        );
        let s = Shape::new(rate("1/m"), None, 3);
        assert_eq!(s.burst, 1.0);
        assert!((s.per_sec - 1.0 / 180.0).abs() < 1e-12);
    }

    #[test]
    fn callers_have_their_own_buckets_and_the_endpoint_one_for_all() {
        let t0 = Instant::now();
        let limit = RateLimit {
            per_principal: Some(rate("1/s")),
            burst: Some(2),
            endpoint: Some(rate("3/s")),
            endpoint_burst: None,
        };
        let l = Limiter::new(&limit, 1, t0);
        assert_eq!(l.take(alice(), 1, t0), Ok(()));
        assert_eq!(l.take(alice(), 1, t0), Ok(()));
        let over = l.take(alice(), 1, t0).expect_err("alice is over");
        assert_eq!(over.scope, Scope::Principal);
        assert_eq!(over.retry_after, Duration::from_secs(1));
        // Alice's refusal took nothing from the endpoint: bob gets the last token.
        assert_eq!(l.take(bob(), 1, t0), Ok(()));
        let c = Some(Caller::Addr("192.0.2.1".parse().expect("ip")));
        assert_eq!(l.take(c, 1, t0).map_err(|e| e.scope), Err(Scope::Endpoint));
        // Without a caller: the endpoint bucket only.
        assert!(l.take(None, 1, t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn idle_buckets_are_dropped_and_a_flood_stays_bounded() {
        let t0 = Instant::now();
        let limit = RateLimit {
            per_principal: Some(rate("1/s")),
            burst: Some(1),
            ..RateLimit::default()
        };
        let l = Limiter::with_capacity(&limit, 1, t0, 8);
        for n in 0..100 {
            let id = format!("idp u{n}");
            assert!(
                l.take(Some(Caller::Principal(&id)), 1, t0).is_ok(),
                "a new caller gets a full bucket"
            );
            assert!(l.tracked() <= 8);
        }
        // Everyone refilled after a while: the next new caller sweeps them.
        let later = t0 + SWEEP_EVERY;
        assert!(l.take(alice(), 1, later).is_ok());
        assert_eq!(l.tracked(), 1);
        // Between sweeps, buckets stay (a refilled one is only dropped late).
        assert!(l.take(alice(), 1, later).is_err());
        assert!(l.take(bob(), 1, later + SWEEP_EVERY / 2).is_ok());
        assert_eq!(l.tracked(), 2);
    }
}
