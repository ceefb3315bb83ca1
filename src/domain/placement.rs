//! The stable hash that places keys (and order ids) on vnodes. It is part of the on-disk
//! format (storage indexes it) and of the cluster's wire contract (every node must agree), so
//! it must never change: FNV-1a 64 finished with a splitmix64 mixer, so the top bits — which
//! pick the vnode — are well spread.

pub fn hash_name(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The value storage keeps for a name: the hash without its lowest bit, so it fits SQLite's
/// signed integers and keeps the hash order (a vnode's names are one contiguous range).
pub fn stored_hash(name: &str) -> i64 {
    (hash_name(name) >> 1) as i64
}
