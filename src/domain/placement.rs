//! The stable hash that places keys (and order ids) on vnodes. It is part of the on-disk
//! format (storage indexes it) and of the cluster's wire contract (every node must agree), so
//! it must never change: FNV-1a 64 finished with a splitmix64 mixer, so the top bits — which
//! pick the vnode — are well spread.

pub fn hash_name(name: &str) -> u64 {
    finish(fnv(FNV_OFFSET, name.as_bytes()))
}

/// `hash_name("{sku}/{warehouse}")` without building the string (it runs per request and
/// over every active key when a vnode is handed over).
pub fn hash_key(sku: &str, warehouse: &str) -> u64 {
    let h = fnv(FNV_OFFSET, sku.as_bytes());
    let h = fnv(h, b"/");
    finish(fnv(h, warehouse.as_bytes()))
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn finish(mut h: u64) -> u64 {
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The value storage keeps for a name: the hash without its lowest bit, so it fits SQLite's
/// signed integers and keeps the hash order (a vnode's names are one contiguous range).
pub fn stored_hash(name: &str) -> i64 {
    (hash_name(name) >> 1) as i64
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_hash_is_the_hash_of_the_storage_name() {
        for (s, w) in [("sku-1", "wh-1"), ("", ""), ("a.b:c", "Z_9")] {
            assert_eq!(super::hash_key(s, w), super::hash_name(&format!("{s}/{w}")));
        }
    }
}
