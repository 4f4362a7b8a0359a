//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): the lookup table
//! the balancer program reads when no load metric can be trusted.

/// 64-bit mix (splitmix64's finaliser).
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Fills a table of `size` entries (a prime) with indexes into `names`,
/// each server owning about `size / names.len()` entries; removing a server
/// moves only the entries it owned. Empty `names` gives an all-zero table.
pub fn table(names: &[u64], size: usize) -> Vec<u32> {
    let mut out = vec![u32::MAX; size];
    if names.is_empty() || size < 2 {
        return vec![0; size];
    }
    let m = size as u64;
    let perms: Vec<(u64, u64)> =
        names.iter().map(|&n| (mix(n) % m, mix(n ^ 0x9e37_79b9_7f4a_7c15) % (m - 1) + 1)).collect();
    let mut next = vec![0u64; names.len()];
    let mut filled = 0;
    while filled < size {
        for (i, &(offset, skip)) in perms.iter().enumerate() {
            let mut slot = ((offset + next[i] * skip) % m) as usize;
            while out[slot] != u32::MAX {
                next[i] += 1;
                slot = ((offset + next[i] * skip) % m) as usize;
            }
            out[slot] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == size {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::table;

    #[test]
    fn every_server_gets_a_near_equal_share_and_removal_moves_only_its_entries() {
        let names: Vec<u64> = (1..=5).collect();
        let t = table(&names, 2039);
        let mut share = [0usize; 5];
        for &s in &t {
            share[s as usize] += 1;
        }
        for s in share {
            assert!((407..=409).contains(&s), "shares {share:?}");
        }
        // Drop server 4 (the last): entries of 0..4 mostly stay.
        let t2 = table(&names[..4], 2039);
        let moved = t.iter().zip(&t2).filter(|(a, b)| **a != 4 && a != b).count();
        assert!(moved < 2039 / 10, "{moved} entries of remaining servers moved");
    }
}
