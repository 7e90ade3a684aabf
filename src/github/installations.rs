//! Which installations an App has (SPEC §7.2), cached per App, and the repositories of
//! `selected` installations, cached per installation.
//!
//! Lookup uses `GET /app/installations?per_page=100` (every page), not the per-owner endpoints:
//! one call answers for every owner the proxy will see (an org-wide proxy sees dozens), its
//! result is what `check` and public access need anyway (all installations, in order), and a
//! miss costs no extra request per unknown owner. The list is kept up to 10 minutes; an owner
//! not in it triggers a fresh list at most once per 60 s (so at most once per app per owner per
//! 60 s), and concurrent lookups share one request (a per-app async mutex with a double check).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

use super::TokenError;

/// The installation list is trusted this long.
pub const LIST_TTL: Duration = Duration::from_secs(600);
/// An owner missing from the list (or a repo missing from a selection) is re-checked at most
/// this often.
pub const MISS_RECHECK: Duration = Duration::from_secs(60);
/// After a failed list fetch, GitHub is not asked again for this long: requests get the stale
/// answer or the error, so an outage is not hammered by one fetch after another.
pub const FAILURE_BACKOFF: Duration = Duration::from_secs(5);

/// The facts of one installation the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    pub id: u64,
    /// The account login as GitHub spells it (shared: cloned on every lookup).
    pub account: Arc<str>,
    /// `suspended_at` was non-null.
    pub suspended: bool,
    /// `repository_selection == "selected"`.
    pub selected: bool,
}

struct Snapshot {
    /// In GitHub's order (public access uses the first admitted one).
    list: Arc<Vec<Installation>>,
    by_owner: HashMap<String, usize>,
    fetched_at: Option<Instant>,
}

impl Snapshot {
    fn empty() -> Self {
        Snapshot {
            list: Arc::new(Vec::new()),
            by_owner: HashMap::new(),
            fetched_at: None,
        }
    }

    fn new(list: Vec<Installation>, at: Instant) -> Self {
        let by_owner = list
            .iter()
            .enumerate()
            .map(|(i, inst)| (inst.account.to_ascii_lowercase(), i))
            .collect();
        Snapshot {
            list: Arc::new(list),
            by_owner,
            fetched_at: Some(at),
        }
    }

    fn find(&self, owner: &str) -> Option<Installation> {
        let i = if owner.bytes().any(|b| b.is_ascii_uppercase()) {
            self.by_owner.get(&owner.to_ascii_lowercase())
        } else {
            self.by_owner.get(owner)
        };
        i.and_then(|&i| self.list.get(i).cloned())
    }

    fn age(&self, now: Instant) -> Option<Duration> {
        self.fetched_at.map(|at| now.saturating_duration_since(at))
    }
}

/// How long lookups are trusted. The defaults are SPEC §7.2's; tests over real TLS shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// The installation list (and a selected installation's repositories) is trusted this long.
    pub list_ttl: Duration,
    /// An owner (or repo) missing from a cached list is re-checked at most this often.
    pub miss_recheck: Duration,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            list_ttl: LIST_TTL,
            miss_recheck: MISS_RECHECK,
        }
    }
}

/// The installations of one App.
pub struct Installations {
    policy: CachePolicy,
    snapshot: RwLock<Arc<Snapshot>>,
    refresh: tokio::sync::Mutex<()>,
    /// List fetches finished, and the last failed one: callers queued behind a failing fetch
    /// share its error instead of each fetching in turn.
    fetches: AtomicU64,
    last_failure: Mutex<Option<(u64, Instant, TokenError)>>,
    repos: DashMap<u64, Arc<RepoList>>,
    repo_locks: DashMap<u64, Arc<tokio::sync::Mutex<()>>>,
    /// Installations whose mint GitHub answered 404/410, and when. GitHub's list can still show
    /// an installation for a while after it is gone; without this, every request would list
    /// and mint again. A list fetched within `miss_recheck` of the 404 leaves it out (its owner
    /// reads as not installed, re-checked by the miss rule).
    gone: Mutex<HashMap<u64, Instant>>,
}

struct RepoList {
    names: HashSet<String>,
    fetched_at: Instant,
}

impl Installations {
    pub fn new(policy: CachePolicy) -> Self {
        Installations {
            policy,
            snapshot: RwLock::new(Arc::new(Snapshot::empty())),
            refresh: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
            last_failure: Mutex::new(None),
            repos: DashMap::new(),
            repo_locks: DashMap::new(),
            gone: Mutex::new(HashMap::new()),
        }
    }

    /// A snapshot of a freshly fetched list, without the installations GitHub recently said
    /// are gone.
    fn fresh_snapshot(&self, mut list: Vec<Installation>) -> Snapshot {
        let now = Instant::now();
        let mut gone = self.gone.lock().unwrap_or_else(|p| p.into_inner());
        gone.retain(|_, at| now.saturating_duration_since(*at) < self.policy.miss_recheck);
        if !gone.is_empty() {
            list.retain(|i| !gone.contains_key(&i.id));
        }
        Snapshot::new(list, now)
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The installation on `owner` (case-insensitive), `None` when the App is not installed there.
    /// `fetch` lists every installation; it runs only when the cache cannot answer.
    pub async fn lookup<F, Fut>(
        &self,
        owner: &str,
        fetch: F,
    ) -> Result<Option<Installation>, TokenError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<Installation>, TokenError>>,
    {
        let seen = self.current();
        if let Some(answer) = self.answer(&seen, owner, Instant::now()) {
            return Ok(answer);
        }
        let seen_fetches = self.fetches.load(Ordering::Acquire);
        let _guard = self.refresh.lock().await;
        let now_snap = self.current();
        // Another caller refreshed while we waited: its list is as fresh as it gets.
        if now_snap.fetched_at != seen.fetched_at && now_snap.fetched_at.is_some() {
            return Ok(now_snap.find(owner));
        }
        let result = match self.failed_since(seen_fetches) {
            Some(err) => Err(err),
            None => self.finish(fetch().await),
        };
        let list = match result {
            Ok(list) => list,
            // GitHub is failing: an installation we knew of keeps serving (its token mint
            // will say if it is really gone) rather than pushing every request to the PAT.
            Err(err) => return seen.find(owner).map(Some).ok_or(err),
        };
        let snap = Arc::new(self.fresh_snapshot(list));
        let found = snap.find(owner);
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = snap;
        Ok(found)
    }

    /// Every installation, in GitHub's order (public access), fetched when the list is stale.
    pub async fn all<F, Fut>(&self, fetch: F) -> Result<Arc<Vec<Installation>>, TokenError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<Installation>, TokenError>>,
    {
        let seen = self.current();
        if seen
            .age(Instant::now())
            .is_some_and(|age| age < self.policy.list_ttl)
        {
            return Ok(seen.list.clone());
        }
        let seen_fetches = self.fetches.load(Ordering::Acquire);
        let _guard = self.refresh.lock().await;
        let now_snap = self.current();
        if now_snap.fetched_at != seen.fetched_at && now_snap.fetched_at.is_some() {
            return Ok(now_snap.list.clone());
        }
        if let Some(err) = self.failed_since(seen_fetches) {
            return Err(err);
        }
        let snap = Arc::new(self.fresh_snapshot(self.finish(fetch().await)?));
        let list = snap.list.clone();
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = snap;
        Ok(list)
    }

    fn finish<T>(&self, result: Result<T, TokenError>) -> Result<T, TokenError> {
        let fetch = self.fetches.fetch_add(1, Ordering::AcqRel) + 1;
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = match &result {
            Ok(_) => None,
            Err(err) => Some((fetch, Instant::now(), err.clone())),
        };
        result
    }

    /// The error of a fetch that failed after fetch number `seen`, or within the backoff.
    fn failed_since(&self, seen: u64) -> Option<TokenError> {
        let failure = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
        match &*failure {
            Some((fetch, at, err)) if *fetch > seen || at.elapsed() < FAILURE_BACKOFF => {
                Some(err.clone())
            }
            _ => None,
        }
    }

    /// What the cache can say without GitHub: `Some(answer)`, or `None` when a fetch is due.
    fn answer(&self, snap: &Snapshot, owner: &str, now: Instant) -> Option<Option<Installation>> {
        let age = snap.age(now)?;
        if age >= self.policy.list_ttl {
            return None;
        }
        match snap.find(owner) {
            Some(found) => Some(Some(found)),
            None if age < self.policy.miss_recheck => Some(None),
            None => None,
        }
    }

    /// Forgets installation `id` (a mint answered 404/410: it was uninstalled): the next lookup
    /// fetches the list again, and for `miss_recheck` leaves `id` out of it.
    pub fn forget(&self, id: u64) {
        self.gone
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Instant::now());
        let mut slot = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
        let list: Vec<Installation> = slot.list.iter().filter(|i| i.id != id).cloned().collect();
        let mut snap = Snapshot::new(list, Instant::now());
        snap.fetched_at = None;
        *slot = Arc::new(snap);
        self.repos.remove(&id);
    }

    /// Whether `repo` is among the repositories of the `selected` installation `id`. A repo not
    /// in the cached list is re-fetched at most once per 60 s before answering `false`; the
    /// list is trusted at most 10 minutes.
    pub async fn repo_selected<F, Fut>(
        &self,
        id: u64,
        repo: &str,
        fetch: F,
    ) -> Result<bool, TokenError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<String>, TokenError>>,
    {
        let repo = repo.to_ascii_lowercase();
        let seen = self.repos.get(&id).map(|r| r.clone());
        if let Some(answer) = seen
            .as_ref()
            .and_then(|list| self.repo_answer(list, &repo, Instant::now()))
        {
            return Ok(answer);
        }
        let lock = self
            .repo_locks
            .entry(id)
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone();
        let _guard = lock.lock().await;
        if let Some(list) = self.repos.get(&id).map(|r| r.clone()) {
            let changed = seen
                .as_ref()
                .is_none_or(|s| s.fetched_at != list.fetched_at);
            if changed {
                return Ok(list.names.contains(&repo));
            }
        }
        let names: HashSet<String> = fetch()
            .await?
            .into_iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        let found = names.contains(&repo);
        self.repos.insert(
            id,
            Arc::new(RepoList {
                names,
                fetched_at: Instant::now(),
            }),
        );
        Ok(found)
    }

    fn repo_answer(&self, list: &RepoList, repo: &str, now: Instant) -> Option<bool> {
        let age = now.saturating_duration_since(list.fetched_at);
        if age >= self.policy.list_ttl {
            return None;
        }
        if list.names.contains(repo) {
            Some(true)
        } else if age < self.policy.miss_recheck {
            Some(false)
        } else {
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn inst(id: u64, account: &str) -> Installation {
        Installation {
            id,
            account: account.into(),
            suspended: false,
            selected: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn miss_refetches_at_most_once_a_minute_and_hits_last_ten_minutes() {
        let cache = Installations::new(CachePolicy::default());
        let calls = AtomicU64::new(0);
        let fetch = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(vec![inst(1, "Acme")])
        };
        assert_eq!(cache.lookup("acme", fetch).await.unwrap().unwrap().id, 1);
        assert_eq!(cache.lookup("ACME", fetch).await.unwrap().unwrap().id, 1);
        assert_eq!(cache.lookup("other", fetch).await.unwrap(), None);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(cache.lookup("other", fetch).await.unwrap(), None);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(cache.lookup("other", fetch).await.unwrap(), None);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        tokio::time::advance(Duration::from_secs(599)).await;
        assert!(cache.lookup("acme", fetch).await.unwrap().is_some());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(cache.lookup("acme", fetch).await.unwrap().is_some());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn forget_makes_the_next_lookup_fetch() {
        let cache = Installations::new(CachePolicy::default());
        let calls = AtomicU64::new(0);
        let fetch = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(vec![inst(1, "acme")])
        };
        cache.lookup("acme", fetch).await.unwrap();
        cache.forget(1);
        cache.lookup("acme", fetch).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_installation_gone_but_still_listed_is_not_fetched_and_minted_on_every_request() {
        // GitHub's list still shows installation 1 after its mint answered 404.
        let cache = Installations::new(CachePolicy::default());
        let calls = AtomicU64::new(0);
        let fetch = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(vec![inst(1, "acme"), inst(2, "other")])
        };
        assert_eq!(cache.lookup("acme", fetch).await.unwrap().unwrap().id, 1);
        cache.forget(1);
        // One fresh list, which leaves the gone installation out: not installed.
        assert!(cache.lookup("acme", fetch).await.unwrap().is_none());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Others in the same list are unaffected.
        assert_eq!(cache.lookup("other", fetch).await.unwrap().unwrap().id, 2);
        // The miss rule holds: no further fetch within the minute.
        for _ in 0..10 {
            assert!(cache.lookup("acme", fetch).await.unwrap().is_none());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // After it, the listed installation is believed again (its mint will tell).
        tokio::time::advance(MISS_RECHECK).await;
        assert_eq!(cache.lookup("acme", fetch).await.unwrap().unwrap().id, 1);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let all = cache.all(fetch).await.unwrap();
        assert_eq!(all.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn repo_not_in_selection_is_rechecked_at_most_once_a_minute() {
        let cache = Installations::new(CachePolicy::default());
        let calls = AtomicU64::new(0);
        let repos = std::sync::Mutex::new(vec!["widgets".to_string()]);
        let fetch = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(repos.lock().unwrap().clone())
        };
        assert!(cache.repo_selected(1, "Widgets", fetch).await.unwrap());
        assert!(!cache.repo_selected(1, "gadgets", fetch).await.unwrap());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        repos.lock().unwrap().push("gadgets".to_string());
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!cache.repo_selected(1, "gadgets", fetch).await.unwrap());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(cache.repo_selected(1, "gadgets", fetch).await.unwrap());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn failing_fetch_keeps_known_installations_and_is_shared_by_waiters() {
        let cache = Arc::new(Installations::new(CachePolicy::default()));
        cache
            .lookup("acme", || async { Ok(vec![inst(1, "acme")]) })
            .await
            .unwrap();
        tokio::time::advance(LIST_TTL).await;
        let calls = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let cache = cache.clone();
                let calls = calls.clone();
                tokio::spawn(async move {
                    let owner = if i == 0 { "acme" } else { "globex" };
                    cache
                        .lookup(owner, || async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            Err(TokenError::Transport {
                                context: "listing".into(),
                                message: "down".into(),
                            })
                        })
                        .await
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one fetch for every waiter"
        );
        assert_eq!(
            results[0].as_ref().unwrap().as_ref().unwrap().id,
            1,
            "stale but known"
        );
        assert!(results[1..].iter().all(|r| r.is_err()));

        // Within the backoff GitHub is not asked again; after it, it is.
        let counting = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(vec![inst(1, "acme"), inst(2, "globex")])
        };
        assert_eq!(cache.lookup("acme", counting).await.unwrap().unwrap().id, 1);
        assert!(cache.lookup("globex", counting).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(FAILURE_BACKOFF).await;
        assert_eq!(
            cache.lookup("globex", counting).await.unwrap().unwrap().id,
            2
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
