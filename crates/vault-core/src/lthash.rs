//! The state commitment: LtHash16, a homomorphic multiset hash.
//!
//! The state's commitment must change in O(1) per changed item (it is
//! kept up to date by every apply and read on every `Status` call) and be
//! collision resistant: the HSM checkpoint records it, and a node whose
//! disk holds another state with the same commitment would pass the
//! checkpoint's check.
//!
//! The first version summed SHA-256 item hashes mod 2^256. That is a
//! *k*-sum problem: Wagner's generalised birthday algorithm finds a set of
//! junk items whose hashes sum to any chosen difference in about
//! 2^(256/(1+lg k)) work (2^32 with k = 128 lists), so a forged state with
//! the right digest was within a laptop's reach (`tests` below builds one
//! for a narrowed sum, with the same algorithm).
//!
//! LtHash16 (Bellare–Micciancio's lattice hash in the parameters Facebook
//! uses for database update integrity, Lewi et al. 2019): each item is
//! expanded to 1024 coordinates of 16 bits by an extendable-output
//! function (SHA-512 in counter mode, domain separated), and the
//! commitment is the coordinate-wise sum mod 2^16. Finding a collision
//! means finding a short vector in a random 1024-dimensional lattice mod
//! 2^16 (SIS), for which the best known attacks cost well over 2^200.
//! Adding and removing an item are 1024 additions; the 2048-byte sum is
//! hashed with SHA-256 into the 32 bytes the checkpoint holds.

use sha2::{Digest, Sha256, Sha512};

/// Coordinates of the sum.
const N: usize = 1024;

/// An LtHash16 sum of items.
#[derive(Clone, PartialEq, Eq)]
pub struct LtHash(Box<[u16; N]>);

impl Default for LtHash {
    fn default() -> Self {
        LtHash(Box::new([0; N]))
    }
}

impl std::fmt::Debug for LtHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LtHash({})", hex32(&self.checksum()))
    }
}

fn hex32(b: &[u8; 32]) -> String {
    b.iter().take(8).map(|x| format!("{x:02x}")).collect()
}

impl LtHash {
    /// The item's seed: what the state keeps per item so that it can take
    /// the item out again without its value.
    pub fn seed(key: &[u8], value: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"bkv-lthash16-item");
        h.update((key.len() as u64).to_be_bytes());
        h.update(key);
        h.update((value.len() as u64).to_be_bytes());
        h.update(value);
        h.finalize().into()
    }

    /// The 1024 coordinates of an item with this seed.
    fn expand(seed: &[u8; 32]) -> impl Iterator<Item = u16> {
        // 32 blocks of SHA-512 (64 bytes each) give the 2048 bytes.
        (0u32..32).flat_map(move |block| {
            let mut h = Sha512::new();
            h.update(b"bkv-lthash16-xof");
            h.update(seed);
            h.update(block.to_be_bytes());
            let out = h.finalize();
            let words: Vec<u16> = out
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            words.into_iter()
        })
    }

    /// Adds the item with this seed.
    pub fn add(&mut self, seed: &[u8; 32]) {
        for (x, y) in self.0.iter_mut().zip(Self::expand(seed)) {
            *x = x.wrapping_add(y);
        }
    }

    /// Takes out the item with this seed (added before).
    pub fn remove(&mut self, seed: &[u8; 32]) {
        for (x, y) in self.0.iter_mut().zip(Self::expand(seed)) {
            *x = x.wrapping_sub(y);
        }
    }

    /// The 32 bytes that stand for the sum (what checkpoints record).
    pub fn checksum(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"backup-key-vault state v3 lthash16");
        for x in self.0.iter() {
            h.update(x.to_le_bytes());
        }
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sum_is_of_the_set_not_the_order_and_removal_undoes() {
        let seeds: Vec<[u8; 32]> = (0u8..20).map(|i| LtHash::seed(&[i], b"v")).collect();
        let mut a = LtHash::default();
        let mut b = LtHash::default();
        for s in &seeds {
            a.add(s);
        }
        for s in seeds.iter().rev() {
            b.add(s);
        }
        assert_eq!(a.checksum(), b.checksum());
        let extra = LtHash::seed(b"junk", b"");
        a.add(&extra);
        assert_ne!(a.checksum(), b.checksum());
        a.remove(&extra);
        assert_eq!(a, b);
        // Key and value boundaries are part of the seed.
        assert_ne!(LtHash::seed(b"ab", b"c"), LtHash::seed(b"a", b"bc"));
    }

    /// The old commitment, narrowed to 48 bits so a test can run the
    /// attack: Wagner's 4-list algorithm finds four junk items whose
    /// hashes sum to zero mod 2^48 (so adding them to a state leaves its
    /// digest unchanged) in about 3 · 2^16 hashes. For the full 256-bit sum
    /// the same algorithm with 128 lists needs about 2^32 per list: a
    /// day on one core, not a wall. The same four items move an LtHash16
    /// sum.
    #[test]
    fn the_additive_digest_collides_and_lthash_does_not() {
        const BITS: u32 = 48;
        const LOW: u32 = 16;
        let mask: u64 = (1 << BITS) - 1;
        let low: u64 = (1 << LOW) - 1;
        let h = |list: u8, i: u32| -> (u64, [u8; 32]) {
            let seed = LtHash::seed(&[b'j', list], &i.to_be_bytes());
            let mut b = [0u8; 8];
            b.copy_from_slice(&seed[..8]);
            (u64::from_be_bytes(b) & mask, seed)
        };
        let per_list = 1u32 << 17;
        let lists: Vec<Vec<(u64, [u8; 32])>> = (0..4)
            .map(|l| (0..per_list).map(|i| h(l, i)).collect())
            .collect();
        // Level 1: pairs (x1 + x2) with the low 16 bits zero, and pairs
        // (x3 + x4) likewise.
        let merge = |a: &[(u64, [u8; 32])], b: &[(u64, [u8; 32])]| {
            let mut by_low: std::collections::HashMap<u64, Vec<usize>> = Default::default();
            for (j, (x, _)) in b.iter().enumerate() {
                by_low.entry(x.wrapping_neg() & low).or_default().push(j);
            }
            let mut out = Vec::new();
            for (i, (x, _)) in a.iter().enumerate() {
                for &j in by_low.get(&(x & low)).into_iter().flatten() {
                    out.push(((x + b[j].0) & mask, i, j));
                }
            }
            out
        };
        let left = merge(&lists[0], &lists[1]);
        let right = merge(&lists[2], &lists[3]);
        let mut need: std::collections::HashMap<u64, (usize, usize)> = Default::default();
        for (s, i, j) in &right {
            need.insert(s.wrapping_neg() & mask, (*i, *j));
        }
        let found = left
            .iter()
            .find_map(|(s, i, j)| need.get(s).map(|(k, l)| (*i, *j, *k, *l)))
            .expect("Wagner's algorithm finds a zero-sum quadruple");
        let four = [
            lists[0][found.0],
            lists[1][found.1],
            lists[2][found.2],
            lists[3][found.3],
        ];
        let sum = four.iter().fold(0u64, |acc, (x, _)| (acc + x) & mask);
        assert_eq!(sum, 0, "the narrowed additive digest does not move");
        let mut lt = LtHash::default();
        let before = lt.checksum();
        for (_, seed) in &four {
            lt.add(seed);
        }
        assert_ne!(lt.checksum(), before, "LtHash16 moves");
    }
}
