//! The size histogram's buckets, shared so that the kernel's bucketing and userspace's
//! labels cannot drift.

/// Number of size-histogram buckets: upper bounds at the powers of two from 8 B (2^3) to
/// 4 MiB (2^22), the kmalloc ceiling with 4 KiB pages, plus one overflow bucket (+Inf).
pub const SIZE_BUCKETS: usize = 21;
/// log2 of the first bucket's upper bound (8 B).
pub const SIZE_BUCKET_MIN_SHIFT: u32 = 3;

/// The bucket index of an allocation of `bytes`: the smallest `i` with
/// `bytes <= 2^(i + SIZE_BUCKET_MIN_SHIFT)`, or the overflow bucket.
/// Shared by both sides so the kernel's bucketing and userspace's labels cannot drift.
#[inline(always)]
pub fn size_bucket(bytes: u64) -> usize {
    if bytes <= (1 << SIZE_BUCKET_MIN_SHIFT) {
        return 0;
    }
    // For bytes > 8: idx = ceil(log2(bytes)) - 3 = floor(log2(bytes - 1)) - 2, at most the
    // overflow bucket: the largest idx <= SIZE_BUCKETS - 1 with bytes - 1 >= 2^(idx + 2),
    // found by binary search. BPF has no count-leading-zeros instruction; the compiler's
    // portable one is some 40 instructions on the hot path, this is 5 comparisons.
    let v = bytes - 1;
    let mut idx = 0;
    let mut step = 16;
    while step > 0 {
        let next = idx + step;
        if next < SIZE_BUCKETS && v >> (next + 2) != 0 {
            idx = next;
        }
        step >>= 1;
    }
    idx
}

/// The upper bound (`le`) of bucket `idx`, or `None` for the overflow bucket.
pub fn size_bucket_upper(idx: usize) -> Option<u64> {
    if idx + 1 >= SIZE_BUCKETS {
        None
    } else {
        Some(1u64 << (idx as u32 + SIZE_BUCKET_MIN_SHIFT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_from_8_to_4mib() {
        assert_eq!(size_bucket(0), 0);
        assert_eq!(size_bucket(1), 0);
        assert_eq!(size_bucket(8), 0);
        assert_eq!(size_bucket(9), 1);
        assert_eq!(size_bucket(16), 1);
        assert_eq!(size_bucket(17), 2);
        assert_eq!(size_bucket(4096), 9);
        assert_eq!(size_bucket(4097), 10);
        assert_eq!(size_bucket(4 << 20), 19);
        assert_eq!(size_bucket((4 << 20) + 1), 20);
        assert_eq!(size_bucket(u64::MAX), 20);
        assert_eq!(size_bucket_upper(0), Some(8));
        assert_eq!(size_bucket_upper(19), Some(4 << 20));
        assert_eq!(size_bucket_upper(20), None);
        for idx in 0..SIZE_BUCKETS - 1 {
            let le = size_bucket_upper(idx).unwrap();
            assert_eq!(size_bucket(le), idx, "upper bound belongs to its bucket");
            assert_eq!(size_bucket(le + 1), idx + 1, "one past goes to the next");
        }
    }

    #[test]
    fn size_bucket_is_the_ceiling_log2_clamped() {
        let reference = |bytes: u64| -> usize {
            if bytes <= 8 {
                return 0;
            }
            let ceil_log2 = 64 - (bytes - 1).leading_zeros() as usize;
            (ceil_log2 - 3).min(SIZE_BUCKETS - 1)
        };
        for shift in 0..64 {
            for delta in [-1i64, 0, 1] {
                let bytes = (1u64 << shift).wrapping_add_signed(delta);
                assert_eq!(size_bucket(bytes), reference(bytes), "{bytes} bytes");
            }
        }
        for bytes in (0..70_000).chain([u64::MAX, u64::MAX - 1, 3 << 40]) {
            assert_eq!(size_bucket(bytes), reference(bytes), "{bytes} bytes");
        }
    }
}
