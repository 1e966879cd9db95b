//! The verified-token cache (`[identity.jwt] cache_size`): a client on a keep-alive connection
//! presents the same token on every request, and verifying its signature again each time is
//! most of the cost of authentication (an RSA or ECDSA verify is tens of microseconds).
//!
//! Invariants (fail closed: a hit never accepts what the full check would refuse):
//! - Keyed by the exact token bytes. The map hashes it (ahash, randomly seeded) and compares
//!   the stored token in full on every hit: a hash collision is a miss, never another token's
//!   claims.
//! - Only tokens that passed every token-only check (signature, `exp`, `nbf`, `iss`, `aud`,
//!   subject and, with the tenant from a claim, the tenant) are inserted, and only while
//!   `nbf <= now < exp` with no leeway. A hit is served only while that still holds for the
//!   request's `now` (the authenticator's injected clock); otherwise it is a miss and the full
//!   check runs (which then applies the leeway and names the error).
//! - What depends on the request (the tenant header, trusted headers, mTLS, API keys) is not
//!   cached: the authenticator evaluates the tenant header on every hit, and everything else is
//!   decided outside `Authenticator::authenticate`.
//! - An entry verified with a public key records the generation of the key set it was
//!   verified against; after a JWKS refresh that changed the keys the generation differs and
//!   the entry is a miss (a token signed by a retired `kid` is refused although it was cached).
//!   HMAC entries need no generation: the secret lives exactly as long as the authenticator.
//! - The cache belongs to one `Authenticator`; a config reload builds a new one with an empty
//!   cache (`adopt_keys` shares the key set, never the cache).

use std::hash::BuildHasher;
use std::sync::Arc;

use quick_cache::{DefaultHashBuilder, UnitWeighter};

/// What a verified token establishes, independent of the request that carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    pub subject: Box<str>,
    /// The validated tenant claim; `None` when the tenant comes from a request header (which is
    /// then checked on every request, hit or miss).
    pub tenant: Option<Box<str>>,
    pub mfa: bool,
    pub exp: u64,
    pub nbf: Option<u64>,
    /// Generation of the public key set whose key verified the signature; `None` for HMAC.
    pub key_generation: Option<u64>,
}

impl Verified {
    /// Servable at `now`: strictly inside `[nbf, exp)`, without leeway.
    fn current(&self, now: u64) -> bool {
        now < self.exp && self.nbf.is_none_or(|nbf| nbf <= now)
    }
}

type Map<B> = quick_cache::sync::Cache<Box<[u8]>, Arc<Verified>, UnitWeighter, B>;

/// A bounded map from token to [`Verified`]; capacity 0 disables it.
pub(crate) struct TokenCache<B = DefaultHashBuilder> {
    entries: Option<Map<B>>,
}

impl TokenCache {
    pub(crate) fn new(capacity: usize) -> TokenCache {
        Self::with_hasher(capacity, DefaultHashBuilder::default())
    }
}

impl<B: BuildHasher + Clone> TokenCache<B> {
    /// With a given hasher (tests use a constant one to force collisions).
    pub(crate) fn with_hasher(capacity: usize, hasher: B) -> TokenCache<B> {
        let entries = (capacity > 0).then(|| {
            Map::with(
                capacity,
                capacity as u64,
                UnitWeighter,
                hasher,
                Default::default(),
            )
        });
        TokenCache { entries }
    }

    /// The entry for exactly `token`, if it is servable at `now` and, for a public-key entry,
    /// `key_generation()` (the key set in use now) is the one it was verified with. A stale
    /// entry is removed.
    pub(crate) fn get(
        &self,
        token: &[u8],
        now: u64,
        key_generation: impl FnOnce() -> u64,
    ) -> Option<Arc<Verified>> {
        let entries = self.entries.as_ref()?;
        let hit = entries.get(token)?;
        if hit.current(now) && hit.key_generation.is_none_or(|g| g == key_generation()) {
            return Some(hit);
        }
        // Only this entry: another thread may have inserted a fresh one meanwhile.
        entries.remove_if(token, |v| Arc::ptr_eq(v, &hit));
        None
    }

    /// Remember a token that passed every token-only check at `now`. Not stored unless
    /// servable at `now` (inside the leeway, or before `nbf`, the full check runs every time).
    pub(crate) fn insert(&self, token: &[u8], verified: &Arc<Verified>, now: u64) {
        if let Some(entries) = &self.entries
            && verified.current(now)
        {
            entries.insert(token.into(), verified.clone());
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, Map::len)
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.entries.as_ref().map_or(0, Map::capacity)
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use std::hash::Hasher;

    /// Every key hashes to the same value: every lookup is a collision.
    #[derive(Clone, Default)]
    struct Colliding;

    struct Zero;

    impl Hasher for Zero {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, _: &[u8]) {}
    }

    impl BuildHasher for Colliding {
        type Hasher = Zero;
        fn build_hasher(&self) -> Zero {
            Zero
        }
    }

    fn verified(subject: &str, exp: u64, nbf: Option<u64>, gen_: Option<u64>) -> Arc<Verified> {
        Arc::new(Verified {
            subject: subject.into(),
            tenant: Some("acme".into()),
            mfa: false,
            exp,
            nbf,
            key_generation: gen_,
        })
    }

    #[test]
    fn colliding_hashes_never_serve_another_tokens_claims() {
        let cache = TokenCache::with_hasher(16, Colliding);
        cache.insert(b"token-a", &verified("alice", 100, None, None), 10);
        cache.insert(b"token-b", &verified("bob", 100, None, None), 10);
        let gen_ = || unreachable!("HMAC entries do not look at the key set");
        assert_eq!(&*cache.get(b"token-a", 10, gen_).unwrap().subject, "alice");
        assert_eq!(&*cache.get(b"token-b", 10, gen_).unwrap().subject, "bob");
        assert!(cache.get(b"token-c", 10, gen_).is_none());
        assert!(cache.get(b"token-", 10, gen_).is_none());
        assert!(cache.get(b"token-aa", 10, gen_).is_none());
    }

    #[test]
    fn entries_expire_at_exp_without_leeway() {
        let cache = TokenCache::new(16);
        cache.insert(b"t", &verified("alice", 100, None, None), 10);
        assert!(cache.get(b"t", 99, || 0).is_some());
        assert!(cache.get(b"t", 100, || 0).is_none(), "served at exp");
        assert_eq!(cache.len(), 0, "the stale entry is removed");
        // Not inserted when already at or past exp (the leeway window is never cached).
        cache.insert(b"t", &verified("alice", 100, None, None), 100);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn not_before_is_respected() {
        let cache = TokenCache::new(16);
        cache.insert(b"t", &verified("alice", 100, Some(50), None), 40);
        assert_eq!(cache.len(), 0, "nbf in the future is not cached");
        cache.insert(b"t", &verified("alice", 100, Some(50), None), 50);
        assert!(cache.get(b"t", 50, || 0).is_some());
        // A clock that steps back before nbf: miss (the full check decides).
        assert!(cache.get(b"t", 49, || 0).is_none());
    }

    #[test]
    fn public_key_entries_need_the_same_key_generation() {
        let cache = TokenCache::new(16);
        cache.insert(b"t", &verified("alice", 100, None, Some(7)), 10);
        assert!(cache.get(b"t", 10, || 7).is_some());
        assert!(cache.get(b"t", 10, || 8).is_none());
        assert!(
            cache.get(b"t", 10, || 7).is_none(),
            "removed on a generation miss"
        );
    }

    #[test]
    fn capacity_zero_disables_and_the_size_is_bounded() {
        let off = TokenCache::new(0);
        off.insert(b"t", &verified("alice", 100, None, None), 10);
        assert!(off.get(b"t", 10, || 0).is_none());
        assert_eq!(off.len(), 0);

        let small = TokenCache::new(4);
        for i in 0..100 {
            small.insert(
                format!("t{i}").as_bytes(),
                &verified("alice", 100, None, None),
                10,
            );
        }
        assert!(small.len() <= small.capacity() as usize && small.len() > 0);
    }
}
