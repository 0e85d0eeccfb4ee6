//! Gradual rollout: a stable bucket per task id, so a task never changes path while the
//! percentage stays put, and raising the percentage only adds tasks.
//!
//! The bucket is Unleash's gradual-rollout normalisation:
//! `murmur3_x86_32("<group>:<task id>", seed 0) % 100 + 1`, so the same ids land in the
//! same buckets as in an Unleash-managed flag with the same group id.

/// Number of rollout buckets; buckets are numbered `1..=BUCKETS`.
pub const BUCKETS: u32 = 100;

/// The rollout bucket (1..=100) of `task_id` within `group`.
pub fn rollout_bucket(group: &str, task_id: &str) -> u32 {
    // The key's parts are hashed in place: no `<group>:<id>` string per request.
    murmur3_x86_32(&[group.as_bytes(), b":", task_id.as_bytes()]) % BUCKETS + 1
}

/// MurmurHash3 x86_32 with seed 0 of the concatenation of `parts`.
fn murmur3_x86_32(parts: &[&[u8]]) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mix = |k: u32| k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    let mut h: u32 = 0;
    let mut block = [0u8; 4];
    let mut filled = 0;
    let mut len: u32 = 0;
    for &byte in parts.iter().flat_map(|p| p.iter()) {
        block[filled] = byte;
        filled += 1;
        len = len.wrapping_add(1);
        if filled == 4 {
            h ^= mix(u32::from_le_bytes(block));
            h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
            filled = 0;
        }
    }
    if filled > 0 {
        block[filled..].fill(0);
        h ^= mix(u32::from_le_bytes(block));
    }
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Whether a task in `bucket` is inside a rollout of `percent` (0 admits nobody, 100 everybody).
pub fn in_rollout(bucket: u32, percent: u32) -> bool {
    bucket <= percent
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_match_unleash_published_vectors() {
        // From Unleash's client specification tests for normalizedValue.
        assert_eq!(rollout_bucket("gr1", "123"), 73);
        assert_eq!(rollout_bucket("groupX", "999"), 25);
    }

    #[test]
    fn buckets_are_pinned_for_the_default_group() {
        // Pinned so a change of hashing (which would flip running tasks) fails loudly.
        assert_eq!(rollout_bucket("multi_agent", "a"), 41);
        assert_eq!(rollout_bucket("multi_agent", "TASK-1"), 62);
        assert_eq!(rollout_bucket("multi_agent", "TEST-BUG-001"), 47);
        assert_eq!(rollout_bucket("multi_agent", "TEST-FEATURE-001"), 95);
    }

    #[test]
    fn zero_percent_admits_nobody_and_hundred_admits_everybody() {
        for b in 1..=BUCKETS {
            assert!(!in_rollout(b, 0));
            assert!(in_rollout(b, 100));
        }
    }

    #[test]
    fn buckets_are_near_uniform_over_100k_ids() {
        let n = 100_000u32;
        let mut counts = [0u32; BUCKETS as usize];
        for i in 0..n {
            let b = rollout_bucket("multi_agent", &format!("task-{i}"));
            counts[(b - 1) as usize] += 1;
        }
        let expected = f64::from(n) / f64::from(BUCKETS);
        let chi2: f64 = counts
            .iter()
            .map(|&c| (f64::from(c) - expected).powi(2) / expected)
            .sum();
        // 99 degrees of freedom: the 99.9th percentile is about 148.2.
        assert!(chi2 < 148.2, "chi-square {chi2} too high: {counts:?}");
        for &c in &counts {
            assert!((800..=1200).contains(&c), "bucket count {c} off by > 20%");
        }
    }

    proptest! {
        #[test]
        fn the_hash_matches_the_murmur3_crate(key in proptest::collection::vec(any::<u8>(), 0..64), cut in 0usize..64) {
            let cut = cut.min(key.len());
            let expected = murmur3::murmur3_32(&mut key.as_slice(), 0).unwrap_or(0);
            prop_assert_eq!(murmur3_x86_32(&[&key[..cut], &key[cut..]]), expected);
        }

        #[test]
        fn same_id_always_gets_the_same_bucket(id in "[!-~]{1,64}", group in "[a-z_]{1,16}") {
            let b = rollout_bucket(&group, &id);
            prop_assert!((1..=BUCKETS).contains(&b));
            prop_assert_eq!(b, rollout_bucket(&group, &id));
        }

        #[test]
        fn raising_the_percent_never_removes_a_task(id in "[!-~]{1,64}", lo in 0u32..=100, hi in 0u32..=100) {
            let (lo, hi) = (lo.min(hi), lo.max(hi));
            let b = rollout_bucket("multi_agent", &id);
            if in_rollout(b, lo) {
                prop_assert!(in_rollout(b, hi));
            }
        }
    }
}
