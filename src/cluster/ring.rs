//! Keys to vnodes. A key's vnode depends only on the key and V (fixed at cluster creation), so
//! keys never change vnode; only vnode -> node ownership moves.
//! The hash (`domain::placement`) is stable across versions and machines; changing it would
//! move every key.

use crate::domain::StockKey;

pub type Vnode = u32;

/// The default number of vnodes of a new cluster.
pub const DEFAULT_VNODES: u32 = 1024;
/// The largest V a cluster may be created with.
pub const MAX_VNODES: u32 = 1 << 16;

pub use crate::domain::placement::{hash_name, stored_hash};

/// The vnode of a hash: its top log2(V) bits. Keys of one vnode are therefore one contiguous
/// range of hashes, which storage can index and scan.
pub fn vnode_of_hash(hash: u64, vnodes: u32) -> Vnode {
    debug_assert!(is_valid_vnode_count(vnodes));
    let bits = vnodes.trailing_zeros();
    if bits == 0 {
        0
    } else {
        (hash >> (64 - bits)) as Vnode
    }
}

/// The half-open hash range `[lo, hi)` of a vnode, as the 63-bit values storage keeps
/// (`hash >> 1`, so they fit SQLite's signed integers and keep their order). `hi` is `None`
/// for the last vnode.
pub fn stored_hash_range(vnode: Vnode, vnodes: u32) -> (i64, Option<i64>) {
    let bits = vnodes.trailing_zeros();
    if bits == 0 {
        return (0, None);
    }
    let shift = 63 - bits;
    let lo = ((vnode as u64) << shift) as i64;
    let hi = if vnode + 1 == vnodes {
        None
    } else {
        Some((((vnode as u64) + 1) << shift) as i64)
    };
    (lo, hi)
}

pub fn vnode_of_key(key: &StockKey, vnodes: u32) -> Vnode {
    let hash = crate::domain::placement::hash_key(key.sku.as_str(), key.warehouse.as_str());
    vnode_of_hash(hash, vnodes)
}

pub fn vnode_of_name(name: &str, vnodes: u32) -> Vnode {
    vnode_of_hash(hash_name(name), vnodes)
}

pub fn is_valid_vnode_count(v: u32) -> bool {
    v.is_power_of_two() && v <= MAX_VNODES
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED_SKU1: u64 = 0xc4bb_4528_7e89_b4f6;

    #[test]
    fn hash_is_stable() {
        // Part of the on-disk format: these values must never change.
        assert_eq!(hash_name("sku-1/wh-1"), PINNED_SKU1);
        assert_eq!(
            vnode_of_name("sku-1/wh-1", 1024),
            (PINNED_SKU1 >> 54) as u32
        );
    }

    #[test]
    fn stored_range_contains_exactly_the_vnodes_keys() {
        for vnodes in [1u32, 2, 8, 1024, 65536] {
            for i in 0..2000 {
                let name = format!("sku-{i}/wh-{}", i % 7);
                let v = vnode_of_name(&name, vnodes);
                assert!(v < vnodes);
                let (lo, hi) = stored_hash_range(v, vnodes);
                let h = stored_hash(&name);
                assert!(h >= lo && hi.is_none_or(|hi| h < hi), "{name} {vnodes}");
            }
        }
    }

    #[test]
    fn keys_spread_over_vnodes() {
        let vnodes = 64;
        let mut counts = vec![0u32; vnodes as usize];
        for i in 0..64_000 {
            counts[vnode_of_name(&format!("sku-{i}/w1"), vnodes) as usize] += 1;
        }
        // 1000 expected per vnode; a decent hash stays well within ±20 %.
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }
}
