//! The installation-token cache (SPEC §7.2): single-flight minting, one background refresh inside
//! the `refreshBeforeExpirySeconds` window, never a token with under 60 s left. Generic over how a
//! token is minted so it is tested with paused time and no network.
//!
//! The hit path is a `DashMap` shard read and an `Arc` clone: no lock shared across keys.

use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

use super::TokenError;
use crate::credential::Token;

/// A token with under this much life left is never sent: it could expire in flight.
pub const MIN_REMAINING: Duration = Duration::from_secs(60);
/// After a failed background refresh, the next attempt waits this long (the cached token still
/// serves meanwhile), so a GitHub outage is not hammered once per request.
const REFRESH_RETRY: Duration = Duration::from_secs(5);

/// A freshly minted token and how long it lives from now (GitHub's wall-clock `expires_at`
/// converted to a duration when the answer arrived).
pub struct Minted {
    pub token: Token,
    pub lifetime: Duration,
}

/// A minted token with under [`MIN_REMAINING`] left is a failed mint: never stored, never
/// served, and its waiters share the error instead of each minting in turn. (The production
/// minter already refuses such a token with GitHub's `expires_at` in the message.)
fn usable_minted(minted: Minted) -> Result<Minted, TokenError> {
    if minted.lifetime >= MIN_REMAINING {
        return Ok(minted);
    }
    Err(TokenError::BadResponse {
        context: "minting an installation token".into(),
        message: format!(
            "the new token has {} s left, under the 60 s a token must have to be used",
            minted.lifetime.as_secs()
        ),
    })
}

#[derive(Clone)]
struct Cached {
    token: Arc<Token>,
    minted_at: Instant,
    refresh_at: Instant,
    expires_at: Instant,
}

#[derive(Default)]
struct Flight {
    /// Held while minting: one mint per key at a time (single flight).
    lock: tokio::sync::Mutex<()>,
    refreshing: AtomicBool,
    retry_after: Mutex<Option<Instant>>,
    /// Mint attempts finished so far, and the last failure with its attempt number: callers
    /// that queued behind a failing mint share its error instead of each minting in turn
    /// (a GitHub outage must not turn 1,000 waiting requests into 1,000 serial mints).
    attempts: AtomicU64,
    last_failure: Mutex<Option<(u64, TokenError)>>,
}

impl Flight {
    fn finish(&self, result: Result<(), &TokenError>) {
        let attempt = self.attempts.fetch_add(1, Ordering::AcqRel) + 1;
        if let Err(err) = result {
            *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((attempt, err.clone()));
        }
    }

    /// The error of a mint that finished failing after attempt `seen`, if any.
    fn failed_since(&self, seen: u64) -> Option<TokenError> {
        let failure = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
        match &*failure {
            Some((attempt, err)) if *attempt > seen => Some(err.clone()),
            _ => None,
        }
    }
}

/// Counts for `gh_token_proxy_token_cache_lookups_total{result}`.
#[derive(Debug, Default)]
pub struct CacheCounters {
    pub hit: AtomicU64,
    pub miss: AtomicU64,
    pub refresh: AtomicU64,
}

/// Tokens per key `K` (integration, app, installation in production).
pub struct TokenCache<K> {
    tokens: DashMap<K, Cached>,
    flights: DashMap<K, Arc<Flight>>,
    refresh_before_expiry: Duration,
    counters: Arc<CacheCounters>,
}

impl<K> TokenCache<K>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
{
    pub fn new(refresh_before_expiry: Duration) -> Self {
        TokenCache {
            tokens: DashMap::new(),
            flights: DashMap::new(),
            refresh_before_expiry,
            counters: Arc::new(CacheCounters::default()),
        }
    }

    pub fn counters(&self) -> &CacheCounters {
        &self.counters
    }

    /// The token for `key`: cached when it has more than the refresh margin left; cached while a
    /// background refresh runs when inside the margin (and with at least 60 s left); otherwise
    /// minted now, once, however many callers wait for it.
    ///
    /// `mint` is only called when a mint is needed; it must be `'static` because a refresh runs
    /// on a spawned task.
    pub async fn get<F, Fut>(self: &Arc<Self>, key: &K, mint: F) -> Result<Arc<Token>, TokenError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Minted, TokenError>> + Send + 'static,
    {
        let now = Instant::now();
        if let Some(cached) = self.usable(key, now) {
            if now < cached.refresh_at {
                self.counters.hit.fetch_add(1, Ordering::Relaxed);
            } else {
                self.counters.refresh.fetch_add(1, Ordering::Relaxed);
                self.spawn_refresh(key, mint, now);
            }
            return Ok(cached.token);
        }
        self.counters.miss.fetch_add(1, Ordering::Relaxed);
        let flight = self.flight(key);
        let seen = flight.attempts.load(Ordering::Acquire);
        let _guard = flight.lock.lock().await;
        // Someone else may have minted (or failed to) while we waited for the lock.
        if let Some(cached) = self.usable(key, Instant::now()) {
            return Ok(cached.token);
        }
        if let Some(err) = flight.failed_since(seen) {
            return Err(err);
        }
        let result = mint().await.and_then(usable_minted);
        flight.finish(result.as_ref().map(|_| ()));
        Ok(self.store(key, result?))
    }

    /// Drops the token for `key` (GitHub said `401`); returns how long ago it was minted.
    pub fn evict(&self, key: &K) -> Option<Duration> {
        self.tokens
            .remove(key)
            .map(|(_, cached)| cached.minted_at.elapsed())
    }

    /// Drops the token for `key` only if it is `token` (GitHub said `401` for that one; a newer
    /// token minted since stays). Returns how long ago the dropped token was minted or, when it
    /// was already replaced, how long ago its replacement was: that is the token a retry will
    /// use, and a very new one may not have replicated inside GitHub yet either.
    pub fn evict_if_same(&self, key: &K, token: &Arc<Token>) -> Option<Duration> {
        if let Some((_, cached)) = self
            .tokens
            .remove_if(key, |_, cached| Arc::ptr_eq(&cached.token, token))
        {
            return Some(cached.minted_at.elapsed());
        }
        self.tokens
            .get(key)
            .map(|cached| cached.minted_at.elapsed())
    }

    /// The cached token (whatever its state), for tests and `explain`.
    pub fn peek(&self, key: &K) -> Option<Arc<Token>> {
        self.tokens.get(key).map(|c| c.token.clone())
    }

    /// The hit path alone: the cached token when it is before its refresh time (and has at least
    /// [`MIN_REMAINING`] left), counted as a hit; `None` means "call [`TokenCache::get`]". Lets a
    /// caller skip building its `'static` mint closure (`Arc` clones) when no mint can happen.
    pub fn get_fresh(&self, key: &K) -> Option<Arc<Token>> {
        let now = Instant::now();
        let cached = self.tokens.get(key)?;
        if now < cached.refresh_at
            && cached.expires_at.saturating_duration_since(now) >= MIN_REMAINING
        {
            self.counters.hit.fetch_add(1, Ordering::Relaxed);
            Some(cached.token.clone())
        } else {
            None
        }
    }

    fn usable(&self, key: &K, now: Instant) -> Option<Cached> {
        let cached = self.tokens.get(key)?;
        if cached.expires_at.saturating_duration_since(now) >= MIN_REMAINING {
            Some(cached.clone())
        } else {
            None
        }
    }

    fn flight(&self, key: &K) -> Arc<Flight> {
        if let Some(flight) = self.flights.get(key) {
            return flight.clone();
        }
        self.flights.entry(key.clone()).or_default().clone()
    }

    fn store(&self, key: &K, minted: Minted) -> Arc<Token> {
        let now = Instant::now();
        let token = Arc::new(minted.token);
        let expires_at = now + minted.lifetime;
        // A token shorter-lived than the margin would be "due for refresh" from birth and
        // every request would start another mint; refresh such a token at half its life.
        let refresh_at = if minted.lifetime > self.refresh_before_expiry {
            expires_at - self.refresh_before_expiry
        } else {
            now + minted.lifetime / 2
        };
        self.tokens.insert(
            key.clone(),
            Cached {
                token: token.clone(),
                minted_at: now,
                refresh_at,
                expires_at,
            },
        );
        token
    }

    fn spawn_refresh<F, Fut>(self: &Arc<Self>, key: &K, mint: F, now: Instant)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Minted, TokenError>> + Send + 'static,
    {
        let flight = self.flight(key);
        {
            let retry = flight.retry_after.lock().unwrap_or_else(|p| p.into_inner());
            if retry.is_some_and(|at| now < at) {
                return;
            }
        }
        if flight.refreshing.swap(true, Ordering::AcqRel) {
            return; // exactly one background refresh per key
        }
        let cache = Arc::clone(self);
        let key = key.clone();
        tokio::spawn(async move {
            let _guard = flight.lock.lock().await;
            let fresh = cache
                .tokens
                .get(&key)
                .is_some_and(|c| Instant::now() < c.refresh_at);
            if !fresh {
                let result = mint().await.and_then(usable_minted);
                flight.finish(result.as_ref().map(|_| ()));
                match result {
                    Ok(minted) => {
                        cache.store(&key, minted);
                    }
                    Err(err) => {
                        tracing::warn!("background token refresh failed: {err}");
                        let mut retry =
                            flight.retry_after.lock().unwrap_or_else(|p| p.into_inner());
                        *retry = Some(Instant::now() + REFRESH_RETRY);
                    }
                }
            }
            flight.refreshing.store(false, Ordering::Release);
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    /// Mints `tok-N` tokens living `lifetime`, taking `delay` of (virtual) time each.
    #[derive(Clone)]
    struct FakeMint {
        count: Arc<AtomicU64>,
        lifetime: Duration,
        delay: Duration,
    }

    impl FakeMint {
        fn new(lifetime: Duration, delay: Duration) -> Self {
            FakeMint {
                count: Arc::new(AtomicU64::new(0)),
                lifetime,
                delay,
            }
        }
        fn mints(&self) -> u64 {
            self.count.load(Ordering::SeqCst)
        }
        fn mint(
            &self,
        ) -> impl FnOnce() -> std::pin::Pin<
            Box<dyn Future<Output = Result<Minted, TokenError>> + Send>,
        > + Send
        + 'static {
            let this = self.clone();
            move || {
                Box::pin(async move {
                    tokio::time::sleep(this.delay).await;
                    let n = this.count.fetch_add(1, Ordering::SeqCst) + 1;
                    Ok(Minted {
                        token: Token::new(SecretString::from(format!("tok-{n}"))).unwrap(),
                        lifetime: this.lifetime,
                    })
                })
            }
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn steady_traffic_over_three_hours_mints_four_times_and_never_waits_after_the_first() {
        let cache = Arc::new(TokenCache::<u64>::new(Duration::from_secs(600)));
        let mint = FakeMint::new(HOUR, Duration::from_secs(1));
        let start = Instant::now();
        let mut first = true;
        while start.elapsed() < 3 * HOUR {
            let before = Instant::now();
            let token = cache.get(&1, mint.mint()).await.unwrap();
            assert!(!token.expose().is_empty());
            if first {
                assert_eq!(
                    before.elapsed(),
                    Duration::from_secs(1),
                    "first waits for a mint"
                );
                first = false;
            } else {
                assert_eq!(
                    before.elapsed(),
                    Duration::ZERO,
                    "no request waits after the first"
                );
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        // Minted at 0, ~50 min, ~100 min, ~150 min; the next would be at ~200 min.
        assert_eq!(mint.mints(), 4);
        assert!(cache.counters().refresh.load(Ordering::Relaxed) >= 3);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_first_requests_mint_once() {
        let cache = Arc::new(TokenCache::<u64>::new(Duration::from_secs(600)));
        let mint = FakeMint::new(HOUR, Duration::from_millis(50));
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let cache = cache.clone();
                let m = mint.mint();
                tokio::spawn(async move { cache.get(&7, m).await.unwrap() })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().expose(), "tok-1");
        }
        assert_eq!(mint.mints(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn token_with_under_a_minute_left_is_never_served() {
        // No refresh margin: the cache would happily serve until expiry, but not the last minute.
        let cache = Arc::new(TokenCache::<u64>::new(Duration::ZERO));
        let mint = FakeMint::new(Duration::from_secs(600), Duration::from_secs(1));
        assert_eq!(cache.get(&1, mint.mint()).await.unwrap().expose(), "tok-1");
        tokio::time::advance(Duration::from_secs(539)).await; // minted at t=1 s: 61 s left
        assert_eq!(cache.get(&1, mint.mint()).await.unwrap().expose(), "tok-1");
        tokio::time::advance(Duration::from_secs(2)).await; // 59 s left
        let before = Instant::now();
        assert_eq!(cache.get(&1, mint.mint()).await.unwrap().expose(), "tok-2");
        assert_eq!(
            before.elapsed(),
            Duration::from_secs(1),
            "waited for the mint"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_window_serves_cached_token_while_one_refresh_runs() {
        let cache = Arc::new(TokenCache::<u64>::new(Duration::from_secs(600)));
        let mint = FakeMint::new(HOUR, Duration::from_secs(5));
        cache.get(&1, mint.mint()).await.unwrap();
        tokio::time::advance(Duration::from_secs(3000)).await; // inside the margin
        for _ in 0..100 {
            assert_eq!(cache.get(&1, mint.mint()).await.unwrap().expose(), "tok-1");
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(mint.mints(), 2, "exactly one background refresh");
        assert_eq!(cache.get(&1, mint.mint()).await.unwrap().expose(), "tok-2");
    }

    #[tokio::test(start_paused = true)]
    async fn evict_makes_the_next_request_mint_and_reports_age() {
        let cache = Arc::new(TokenCache::<u64>::new(Duration::from_secs(600)));
        let mint = FakeMint::new(HOUR, Duration::ZERO);
        cache.get(&1, mint.mint()).await.unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(cache.evict(&1), Some(Duration::from_secs(3)));
        assert_eq!(cache.evict(&1), None);
        assert_eq!(cache.get(&1, mint.mint()).await.unwrap().expose(), "tok-2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_rejection_of_a_replaced_token_evicts_nothing() {
        let cache = Arc::new(TokenCache::<u64>::new(Duration::from_secs(600)));
        let mint = FakeMint::new(HOUR, Duration::ZERO);
        let first = cache.get(&1, mint.mint()).await.unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            cache.evict_if_same(&1, &first),
            Some(Duration::from_secs(2))
        );
        let second = cache.get(&1, mint.mint()).await.unwrap();
        assert_eq!(second.expose(), "tok-2");
        // Another request's 401 for the first token arrives late: the second one stays, and its
        // age is what the late request's retry must wait on.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            cache.evict_if_same(&1, &first),
            Some(Duration::from_secs(1))
        );
        assert_eq!(cache.peek(&1).unwrap().expose(), "tok-2");
        assert_eq!(mint.mints(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_mint_is_an_error_and_the_next_request_retries() {
        let cache = Arc::new(TokenCache::<u64>::new(Duration::from_secs(600)));
        // Ten callers queue behind one failing mint: one attempt, ten errors.
        let attempts = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let cache = cache.clone();
                let attempts = attempts.clone();
                tokio::spawn(async move {
                    cache
                        .get(&1, move || async move {
                            attempts.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            Err(TokenError::GitHub {
                                context: "mint".into(),
                                status: 502,
                                message: "down".into(),
                            })
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap().is_err());
        }
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
        let err = cache
            .get(&1, || async {
                Err(TokenError::GitHub {
                    context: "mint".into(),
                    status: 500,
                    message: "boom".into(),
                })
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("boom"));
        let mint = FakeMint::new(HOUR, Duration::ZERO);
        assert_eq!(cache.get(&1, mint.mint()).await.unwrap().expose(), "tok-1");
    }

    #[tokio::test(start_paused = true)]
    async fn a_minted_token_with_under_a_minute_left_is_never_served_and_minted_once() {
        let cache = Arc::new(TokenCache::<u64>::new(Duration::from_secs(600)));
        let mint = FakeMint::new(Duration::from_secs(50), Duration::from_millis(100));
        let tasks: Vec<_> = (0..30)
            .map(|_| {
                let cache = cache.clone();
                let m = mint.mint();
                tokio::spawn(async move { cache.get(&1, m).await })
            })
            .collect();
        for task in tasks {
            let err = task.await.unwrap().unwrap_err();
            assert!(err.to_string().contains("under the 60 s"), "{err}");
        }
        assert_eq!(mint.mints(), 1, "the waiters shared the one failed mint");
        assert!(cache.peek(&1).is_none(), "never stored");
    }

    #[tokio::test(start_paused = true)]
    async fn token_shorter_lived_than_the_margin_refreshes_at_half_life() {
        let cache = Arc::new(TokenCache::<u64>::new(Duration::from_secs(600)));
        let mint = FakeMint::new(Duration::from_secs(300), Duration::ZERO);
        cache.get(&1, mint.mint()).await.unwrap();
        for _ in 0..149 {
            tokio::time::advance(Duration::from_secs(1)).await;
            cache.get(&1, mint.mint()).await.unwrap();
        }
        tokio::task::yield_now().await;
        assert_eq!(mint.mints(), 1, "no refresh before half-life");
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..100 {
            cache.get(&1, mint.mint()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(mint.mints(), 2, "one refresh, not one per request");
    }
}
