//! A fixed-size bitset over a compiled universe (permissions or features).
//!
//! Out-of-range bits read as unset and are ignored on write, so an id from another compiled
//! policy can only ever deny, never panic.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BitSet {
    words: Box<[u64]>,
}

impl BitSet {
    pub(crate) fn new(len: usize) -> BitSet {
        BitSet {
            words: vec![0; len.div_ceil(64)].into_boxed_slice(),
        }
    }

    pub(crate) fn get(&self, i: usize) -> bool {
        self.words
            .get(i / 64)
            .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }

    pub(crate) fn set(&mut self, i: usize) {
        if let Some(w) = self.words.get_mut(i / 64) {
            *w |= 1u64 << (i % 64);
        }
    }

    /// `self |= other`. Sets of different sizes combine over the common prefix; `Default`
    /// (empty) sets grow to the other's size.
    pub(crate) fn union_with(&mut self, other: &BitSet) {
        if self.words.len() < other.words.len() {
            let mut words = vec![0; other.words.len()];
            for (dst, src) in words.iter_mut().zip(self.words.iter()) {
                *dst = *src;
            }
            self.words = words.into_boxed_slice();
        }
        for (dst, src) in self.words.iter_mut().zip(other.words.iter()) {
            *dst |= *src;
        }
    }

    /// Indices of set bits, ascending.
    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            (0..64)
                .filter(move |b| w & (1u64 << b) != 0)
                .map(move |b| wi * 64 + b)
        })
    }
}
