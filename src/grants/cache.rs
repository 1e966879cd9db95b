//! The L1 cache behind the Redis store: bounded (quick_cache), stamped entries, O(1)
//! invalidation by tenant, and single-flight loads.
//!
//! Every invalidation advances one logical clock; an entry carries the clock value read when
//! its load *started*. That makes the rules race-free without locks on the hot path:
//!
//! - tenant invalidation records `tenant_gen[tenant] = clock`: entries stamped earlier are
//!   gone (never served, not even stale during an outage: the data is known to have changed);
//! - a flush (subscription lost, reconnected) records `flushed_at = clock`: entries stamped
//!   earlier must be refreshed before use, but may still answer within `max_stale` if Redis
//!   cannot (a flush says "we may have missed messages", not "this changed");
//! - a purge (`FLUSHDB` seen through client tracking) records `purged_at`: everything is gone;
//! - a load whose stamp is no longer the clock when it completes is returned to its callers
//!   but not cached (an invalidation raced it), and invalidations drop in-flight loads, so a
//!   request arriving after an invalidation never joins a load that started before it.
//!
//! INVARIANT: nothing is inserted while `caching` is off (not subscribed to invalidations).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use quick_cache::Equivalent;

use super::GrantsError;

/// The logical clock and the invalidation marks, shared by every cache of one store.
#[derive(Debug, Default)]
pub(crate) struct Clocks {
    clock: AtomicU64,
    flushed_at: AtomicU64,
    purged_at: AtomicU64,
    tenant_gen: RwLock<HashMap<Box<str>, u64>>,
    /// On only while invalidations can reach us (subscribed).
    caching: AtomicBool,
}

/// How a cached entry may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// Younger than `cache_ttl` and not flushed: serve without asking Redis.
    Fresh,
    /// Must be refreshed; may answer only if Redis cannot (within `max_stale`).
    Stale,
}

impl Clocks {
    fn now(&self) -> u64 {
        self.clock.load(Ordering::Acquire)
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::AcqRel) + 1
    }

    pub(crate) fn set_caching(&self, on: bool) {
        self.caching.store(on, Ordering::Release);
    }

    /// `None`: the entry was invalidated and must not be used at all.
    pub(crate) fn usable<V>(
        &self,
        entry: &Entry<V>,
        tenant: Option<&str>,
        ttl: Duration,
    ) -> Option<Use> {
        if entry.stamp < self.purged_at.load(Ordering::Acquire) {
            return None;
        }
        if let Some(tenant) = tenant {
            let tenants = self
                .tenant_gen
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if tenants.get(tenant).is_some_and(|&g| entry.stamp < g) {
                return None;
            }
        }
        if entry.stamp < self.flushed_at.load(Ordering::Acquire) || entry.fetched.elapsed() >= ttl {
            Some(Use::Stale)
        } else {
            Some(Use::Fresh)
        }
    }

    /// Everything of `tenant` loaded before now is gone.
    pub(crate) fn invalidate_tenant(&self, tenant: &str) {
        let now = self.tick();
        self.tenant_gen
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tenant.into(), now);
    }

    /// A single key changed: callers remove it; the tick keeps racing loads out of the cache.
    pub(crate) fn invalidate_one(&self) {
        self.tick();
    }

    /// Messages may have been missed: everything must be refreshed before it is trusted.
    pub(crate) fn flush(&self) {
        let now = self.tick();
        self.flushed_at.store(now, Ordering::Release);
    }

    /// The data is gone (`FLUSHDB`): nothing may be served, not even stale.
    pub(crate) fn purge(&self) {
        let now = self.tick();
        self.purged_at.store(now, Ordering::Release);
    }
}

/// A cached value and when its load started.
#[derive(Debug, Clone)]
pub(crate) struct Entry<V> {
    pub value: V,
    pub fetched: Fetched,
    stamp: u64,
}

/// When an entry was stored: nanoseconds of the monotonic clock since the first use of any
/// cache in the process. 8 bytes where an `Instant` takes 16 (issue 7: one per cached
/// principal); the same clock, so ages compare exactly as `Instant::elapsed` would.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fetched(u64);

/// The origin of every `Fetched`; taken before the first one is.
static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

impl Fetched {
    fn since_origin() -> u64 {
        // 2^64 ns is 584 years of uptime: saturating never happens in practice, and would
        // only make new entries look older (stale sooner), never fresher.
        u64::try_from(ORIGIN.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn now() -> Fetched {
        Fetched(Self::since_origin())
    }

    /// Time since the entry was stored, like `Instant::elapsed`.
    pub(crate) fn elapsed(self) -> Duration {
        Duration::from_nanos(Self::since_origin().saturating_sub(self.0))
    }
}

/// One load in progress; every concurrent miss for the key awaits the same cell.
struct Flight<V> {
    cell: tokio::sync::OnceCell<Result<V, GrantsError>>,
    stamp: u64,
}

/// A bounded map of stamped entries plus the loads in flight.
pub(crate) struct L1<K, V> {
    entries: quick_cache::sync::Cache<K, Entry<V>>,
    flights: Mutex<HashMap<K, Arc<Flight<V>>>>,
}

impl<K, V> L1<K, V>
where
    K: Eq + Hash + Clone,
    V: Clone,
{
    pub(crate) fn new(capacity: usize) -> L1<K, V> {
        L1 {
            entries: quick_cache::sync::Cache::new(capacity.max(1)),
            flights: Mutex::new(HashMap::new()),
        }
    }

    /// Hot path: one sharded read, one `Arc` clone, no allocation.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<Entry<V>>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        self.entries.get(key)
    }

    pub(crate) fn remove<Q>(&self, key: &Q)
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        self.entries.remove(key);
    }

    pub(crate) fn retain(&self, keep: impl Fn(&K, &V) -> bool) {
        self.entries.retain(|k, e| keep(k, &e.value));
    }

    pub(crate) fn clear(&self) {
        self.entries.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Drop in-flight loads matching `pred` so later requests start a fresh one.
    pub(crate) fn forget_flights(&self, pred: impl Fn(&K) -> bool) {
        self.flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|k, _| !pred(k));
    }

    /// Load `key` once for all concurrent callers and cache the result if no invalidation raced
    /// it. If the caller that runs `fetch` is cancelled, the next waiter runs its own.
    pub(crate) async fn load<F, Fut>(
        &self,
        clocks: &Clocks,
        key: K,
        fetch: F,
    ) -> Result<V, GrantsError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, GrantsError>>,
    {
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            flights
                .entry(key.clone())
                .or_insert_with(|| {
                    Arc::new(Flight {
                        cell: tokio::sync::OnceCell::new(),
                        stamp: clocks.now(),
                    })
                })
                .clone()
        };
        let result = flight
            .cell
            .get_or_init(|| async {
                let result = fetch().await;
                if let Ok(value) = &result {
                    self.insert_if_current(clocks, key.clone(), value.clone(), flight.stamp);
                }
                result
            })
            .await
            .clone();
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if flights.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            flights.remove(&key);
        }
        result
    }

    fn insert_if_current(&self, clocks: &Clocks, key: K, value: V, stamp: u64) {
        if !clocks.caching.load(Ordering::Acquire) || clocks.now() != stamp {
            return;
        }
        let entry = Entry {
            value,
            fetched: Fetched::now(),
            stamp,
        };
        self.entries.insert(key.clone(), entry);
        // An invalidation between the check and the insert: take the entry back out.
        if clocks.now() != stamp {
            self.entries.remove_if(&key, |e| e.stamp == stamp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clocks() -> Clocks {
        let c = Clocks::default();
        c.set_caching(true);
        c
    }

    #[tokio::test]
    async fn tenant_invalidation_and_flush_follow_the_stamps() {
        let c = clocks();
        let l1: L1<(String, String), u32> = L1::new(10);
        let key = ("acme".to_owned(), "bob".to_owned());
        assert_eq!(
            l1.load(&c, key.clone(), || async { Ok(1) }).await.ok(),
            Some(1)
        );
        let e = l1.get(&key).unwrap();
        let ttl = Duration::from_secs(60);
        assert_eq!(c.usable(&e, Some("acme"), ttl), Some(Use::Fresh));
        c.flush();
        assert_eq!(c.usable(&e, Some("acme"), ttl), Some(Use::Stale));
        c.invalidate_tenant("other");
        assert_eq!(c.usable(&e, Some("acme"), ttl), Some(Use::Stale));
        c.invalidate_tenant("acme");
        assert_eq!(c.usable(&e, Some("acme"), ttl), None);
        assert_eq!(c.usable(&e, Some("acme"), Duration::ZERO), None);
    }

    #[test]
    fn an_entry_costs_its_value_plus_16_bytes() {
        // Stored once per cached principal (`Compiled` is an epoch and an `Arc`).
        assert_eq!(std::mem::size_of::<Entry<(u64, Arc<u8>)>>(), 32);
    }

    #[test]
    fn fetched_ages_like_an_instant() {
        let instant = Instant::now();
        let fetched = Fetched::now();
        std::thread::sleep(Duration::from_millis(30));
        let (age, reference) = (fetched.elapsed(), instant.elapsed());
        assert!(age >= Duration::from_millis(30), "{age:?}");
        assert!(age <= reference, "{age:?} > {reference:?}");
        assert!(Fetched::now().elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_load_raced_by_an_invalidation_is_not_cached() {
        let c = clocks();
        let l1: L1<u8, u32> = L1::new(10);
        let got = l1
            .load(&c, 1, || async {
                c.invalidate_one();
                Ok(7)
            })
            .await;
        assert_eq!(got.ok(), Some(7));
        assert!(l1.get(&1).is_none());
    }

    #[tokio::test]
    async fn nothing_is_cached_while_caching_is_off() {
        let c = Clocks::default();
        let l1: L1<u8, u32> = L1::new(10);
        assert_eq!(l1.load(&c, 1, || async { Ok(7) }).await.ok(), Some(7));
        assert!(l1.get(&1).is_none());
    }

    #[tokio::test]
    async fn concurrent_loads_share_one_fetch() {
        let c = clocks();
        let l1: L1<u8, u32> = L1::new(10);
        let calls = AtomicU64::new(0);
        let gate = tokio::sync::Notify::new();
        let loads = (0..20).map(|_| {
            l1.load(&c, 1, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                gate.notified().await;
                Ok(3)
            })
        });
        let all = futures_join(loads.collect(), &gate).await;
        assert!(all.iter().all(|r| r.as_ref().ok() == Some(&3)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// Poll every load once (they all register on the flight), then release the fetch.
    async fn futures_join<F: Future<Output = Result<u32, GrantsError>>>(
        loads: Vec<F>,
        gate: &tokio::sync::Notify,
    ) -> Vec<Result<u32, GrantsError>> {
        let mut set: Vec<_> = loads.into_iter().map(Box::pin).collect();
        let mut out: Vec<Option<Result<u32, GrantsError>>> = set.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            for (i, f) in set.iter_mut().enumerate() {
                if out[i].is_none()
                    && let std::task::Poll::Ready(r) = f.as_mut().poll(cx)
                {
                    out[i] = Some(r);
                }
            }
            gate.notify_one();
            if out.iter().all(Option::is_some) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        out.into_iter().flatten().collect()
    }
}
