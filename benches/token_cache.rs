//! Is the installation-token cache fast enough to sit on every request, and does it mint exactly
//! once per installation however many first requests arrive together?
//!
//! - `hit_*`: resolving an already-cached installation token through the real API
//!   (`GitHub::installation_token`, what the resolver calls, and `TokenCache::get` under it) on 1
//!   and 2 threads, for one hot installation and for 10,000 installations, beside a
//!   `Mutex<HashMap>`, an `RwLock<HashMap>` and a bare `DashMap` (the cache's map without its
//!   expiry check) holding the same `Arc<Token>`s, measured in the same run, plus the cost of one
//!   clock read. Each thread does the criterion iteration count, so `thrpt` is the aggregate
//!   lookups per second of all threads; a ratio line per case is printed at the end.
//! - `cold_storm`: 10,000 concurrent first requests for 100 installations against the in-process
//!   TLS `FakeGitHub` (fresh caches each iteration, pooled upstream client): time to serve all,
//!   and the number of mints, asserted to be exactly 100.
//!
//! `cargo bench --bench token_cache` (about a minute and a half).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The support module's own unit tests are not used here.
#[allow(unused_imports)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, RwLock};
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput, measurement::WallTime};
use dashmap::DashMap;
use futures_util::FutureExt as _;
use gh_token_proxy::credential::Token;
use gh_token_proxy::github::tokens::{Minted, TokenCache};
use gh_token_proxy::github::{GitHub, TokenError, TokenKey};
use secrecy::SecretString;
use support::{APP1_KEY, APP1_PUB, FakeGitHub, TestApp, TestConfig};

const APP_ID: u64 = 12345;
const MANY: u64 = 10_000;
const STORM_REQUESTS: usize = 10_000;
const STORM_INSTALLATIONS: u64 = 100;
/// Installation ids of the storm, disjoint from the hit benches' ones.
const STORM_BASE: u64 = 1_000_000;
const THREADS: [usize; 2] = [1, 2];

/// Everything the hit benches look tokens up in, all holding the same `Arc<Token>`s.
struct Caches {
    github: GitHub,
    cache: Arc<TokenCache<TokenKey>>,
    mutex: Mutex<HashMap<TokenKey, Arc<Token>>>,
    rwlock: RwLock<HashMap<TokenKey, Arc<Token>>>,
    /// The cache's own map type without the expiry bookkeeping: separates the cost of the map
    /// from the cost of reading the clock.
    dashmap: DashMap<TokenKey, Arc<Token>>,
}

fn key(installation: u64) -> TokenKey {
    (0, APP_ID, installation)
}

/// A mint that must never run: every lookup of the hit benches is a hit.
async fn no_mint() -> Result<Minted, TokenError> {
    Err(TokenError::BadResponse {
        context: "bench".into(),
        message: "a hit bench tried to mint".into(),
    })
}

impl Caches {
    /// Fills the GitHub cache (minting against FakeGitHub) and copies its tokens into the others.
    async fn fill(github: GitHub, installations: u64) -> Self {
        let mut tokens = HashMap::new();
        let mut set = tokio::task::JoinSet::new();
        let mut next = 1;
        while next <= installations || !set.is_empty() {
            while next <= installations && set.len() < 64 {
                let g = github.clone();
                let id = next;
                set.spawn(async move { (id, g.installation_token(0, 0, id).await) });
                next += 1;
            }
            let (id, token) = set.join_next().await.unwrap().unwrap();
            tokens.insert(key(id), token.unwrap());
        }
        let cache = Arc::new(TokenCache::new(Duration::from_secs(600)));
        for (k, t) in &tokens {
            let t = t.clone();
            let got = cache
                .get(k, move || async move {
                    // Re-wrap the same secret: TokenCache owns a fresh Arc per stored token.
                    Ok(Minted {
                        token: Token::new(SecretString::from(t.expose().to_string())).unwrap(),
                        lifetime: Duration::from_secs(3600),
                    })
                })
                .await
                .unwrap();
            assert_eq!(got.hashed(), tokens[k].hashed());
        }
        Caches {
            github,
            cache,
            mutex: Mutex::new(tokens.clone()),
            dashmap: tokens.iter().map(|(k, t)| (*k, t.clone())).collect(),
            rwlock: RwLock::new(tokens),
        }
    }
}

/// Runs `op(i)` `iters` times on each of `threads` threads, started together; wall time.
fn on_threads(threads: usize, iters: u64, op: &(dyn Fn(u64) + Sync)) -> Duration {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                // Threads walk the keys from different offsets, as requests for different
                // installations would.
                let offset = t as u64 * 7919;
                for i in 0..iters {
                    op(i + offset);
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

/// `i` → an installation id in `1..=installations`, visiting them in a scattered order.
fn pick(i: u64, installations: u64) -> u64 {
    if installations == 1 {
        1
    } else {
        (i.wrapping_mul(2_654_435_761) % installations) + 1
    }
}

fn hit_group(g: &mut BenchmarkGroup<'_, WallTime>, caches: &Caches, installations: u64) {
    for threads in THREADS {
        g.throughput(Throughput::Elements(threads as u64));
        g.bench_with_input(
            BenchmarkId::new("github", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    on_threads(threads, iters, &|i| {
                        let token = caches
                            .github
                            .installation_token(0, 0, pick(i, installations))
                            .now_or_never()
                            .expect("a hit never waits")
                            .unwrap();
                        black_box(token);
                    })
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("token_cache", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    on_threads(threads, iters, &|i| {
                        let token = caches
                            .cache
                            .get(&key(pick(i, installations)), no_mint)
                            .now_or_never()
                            .expect("a hit never waits")
                            .unwrap();
                        black_box(token);
                    })
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("mutex_hashmap", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    on_threads(threads, iters, &|i| {
                        let map = caches.mutex.lock().unwrap();
                        let token = map.get(&key(pick(i, installations))).cloned().unwrap();
                        drop(map);
                        black_box(token);
                    })
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("dashmap", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    on_threads(threads, iters, &|i| {
                        let token = caches
                            .dashmap
                            .get(&key(pick(i, installations)))
                            .map(|t| t.clone())
                            .unwrap();
                        black_box(token);
                    })
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("rwlock_hashmap", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    on_threads(threads, iters, &|i| {
                        let map = caches.rwlock.read().unwrap();
                        let token = map.get(&key(pick(i, installations))).cloned().unwrap();
                        drop(map);
                        black_box(token);
                    })
                })
            },
        );
    }
}

/// Result of the last storm iteration, printed after criterion's report.
static STORM_MINTS: AtomicU64 = AtomicU64::new(0);
static STORM_NANOS: AtomicU64 = AtomicU64::new(0);

/// 10,000 concurrent first requests for 100 installations on a fresh `GitHub`; returns the time
/// from spawning the first request to the last one served, and the mints FakeGitHub saw.
async fn storm(
    fake: &FakeGitHub,
    config: &Arc<gh_token_proxy::config::Config>,
    client: &gh_token_proxy::upstream::UpstreamClient,
) -> (Duration, usize) {
    let github = GitHub::new(config.clone(), client.clone());
    let before = fake.mint_count();
    let start = Instant::now();
    let tasks: Vec<_> = (0..STORM_REQUESTS)
        .map(|i| {
            let github = github.clone();
            let id = STORM_BASE + (i as u64 % STORM_INSTALLATIONS);
            tokio::spawn(async move { github.installation_token(0, 0, id).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let elapsed = start.elapsed();
    let mints = fake.mint_count() - before;
    assert_eq!(
        mints, STORM_INSTALLATIONS as usize,
        "single flight: one mint per installation"
    );
    (elapsed, mints)
}

/// Criterion's mean estimate (ns) of one benchmark of this run, from its `estimates.json`.
fn mean_ns(id: &str) -> Option<f64> {
    let home = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("criterion"))
        })
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/criterion"));
    let text = std::fs::read_to_string(home.join(id).join("new/estimates.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

fn print_ratios() {
    println!(
        "\ntoken cache hit path, mean ns per lookup per thread (ratio = baseline / ours, >1 means ours is faster):"
    );
    for group in ["hit_1_installation", "hit_10000_installations"] {
        for threads in THREADS {
            let get = |name: &str| mean_ns(&format!("{group}/{name}/{threads}"));
            let (Some(github), Some(cache), Some(mutex), Some(rwlock), Some(dashmap)) = (
                get("github"),
                get("token_cache"),
                get("mutex_hashmap"),
                get("rwlock_hashmap"),
                get("dashmap"),
            ) else {
                println!("  {group} threads={threads}: not measured in this run");
                continue;
            };
            println!(
                "  {group} threads={threads}: github {github:.1} ns, token_cache {cache:.1} ns, mutex {mutex:.1} ns, rwlock {rwlock:.1} ns, dashmap {dashmap:.1} ns; \
                 ratio mutex/github {:.2}, rwlock/github {:.2}, mutex/token_cache {:.2}, rwlock/token_cache {:.2}",
                mutex / github,
                rwlock / github,
                mutex / cache,
                rwlock / cache
            );
        }
    }
    if let Some(now) = mean_ns("clock/tokio_instant_now") {
        println!("  one tokio::time::Instant::now() (test-util build): {now:.1} ns");
    }
    let mints = STORM_MINTS.load(Ordering::Relaxed);
    if mints > 0 {
        let ms = STORM_NANOS.load(Ordering::Relaxed) as f64 / 1e6;
        println!(
            "cold storm: {STORM_REQUESTS} concurrent first requests for {STORM_INSTALLATIONS} installations served in {ms:.1} ms (last iteration), mints = {mints} (expected {STORM_INSTALLATIONS})"
        );
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut builder = FakeGitHub::builder().app(APP_ID, APP1_PUB);
    for id in 1..=MANY {
        builder = builder.installation(APP_ID, id, &format!("owner-{id}"));
    }
    for id in STORM_BASE..STORM_BASE + STORM_INSTALLATIONS {
        builder = builder.installation(APP_ID, id, &format!("storm-{id}"));
    }
    let fake = rt.block_on(builder.start());
    let config = Arc::new(
        TestConfig::new(&fake)
            .app(TestApp::new(APP_ID, APP1_KEY))
            .build(),
    );
    let client = gh_token_proxy::upstream::build(&config.proxy.upstream).unwrap();

    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .without_plots()
        .configure_from_args();

    let filling = Instant::now();
    let one = rt.block_on(Caches::fill(GitHub::new(config.clone(), client.clone()), 1));
    let many = rt.block_on(Caches::fill(
        GitHub::new(config.clone(), client.clone()),
        MANY,
    ));
    println!(
        "setup: minted {} tokens from FakeGitHub in {:.1} s",
        MANY + 1,
        filling.elapsed().as_secs_f64()
    );
    {
        let mut g = c.benchmark_group("hit_1_installation");
        hit_group(&mut g, &one, 1);
        g.finish();
        let mut g = c.benchmark_group("hit_10000_installations");
        hit_group(&mut g, &many, MANY);
        g.finish();
        // What the cache pays per lookup to know a token is still fresh (tokio's clock; in
        // benches tokio has `test-util`, which adds a thread-local check the binary does not).
        let mut g = c.benchmark_group("clock");
        g.bench_function("tokio_instant_now", |b| {
            b.iter(|| black_box(tokio::time::Instant::now()))
        });
        g.finish();
    }
    {
        let mut g = c.benchmark_group("cold_storm");
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5))
            .throughput(Throughput::Elements(STORM_REQUESTS as u64));
        g.bench_function("10000_requests_100_installations", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (elapsed, mints) = rt.block_on(storm(&fake, &config, &client));
                    total += elapsed;
                    STORM_MINTS.store(mints as u64, Ordering::Relaxed);
                    STORM_NANOS.store(elapsed.as_nanos() as u64, Ordering::Relaxed);
                }
                total
            })
        });
        g.finish();
    }
    c.final_summary();
    print_ratios();
}
