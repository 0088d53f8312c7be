//! The per-sample random parameters of `shaders/preprocess.wgsl`, derived
//! from `(seed, sample index)` by the same integer hash as the shader, so
//! the CPU reference and the GPU kernel augment every sample identically.

/// PCG-RXS-M-XS 32-bit hash (Jarzynski & Olano, JCGT 2020); identical to
/// `pcg` in `shaders/preprocess.wgsl`.
pub fn pcg(v: u32) -> u32 {
    let state = v.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277_803_737);
    (word >> 22) ^ word
}

/// Uniform in `[0, 1)` from the top 24 bits of `x` (exact in f32); `unit`
/// in the shader.
pub fn unit(x: u32) -> f32 {
    (x >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Augmentation parameters of one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleAug {
    /// Horizontal crop shift in `[-pad, pad]`.
    pub dx: i32,
    /// Vertical crop shift in `[-pad, pad]`.
    pub dy: i32,
    /// Mirror horizontally.
    pub flip: bool,
    /// Brightness factor in `[1 - r, 1 + r]`.
    pub brightness: f32,
    /// Contrast factor in `[1 - r, 1 + r]`.
    pub contrast: f32,
}

/// The parameters of sample `index` under `seed`: `sample_rand` in the
/// shader. `pad` bounds the shifts, `flip` enables flipping, and the two
/// ranges bound the photometric factors.
pub fn sample_aug(seed: u64, index: u32, pad: u32, flip: bool, brightness: f32, contrast: f32) -> SampleAug {
    let (lo, hi) = (seed as u32, (seed >> 32) as u32);
    let base = pcg(pcg(index ^ pcg(hi)) ^ lo);
    let span = 2 * pad + 1;
    SampleAug {
        dx: (pcg(base) % span) as i32 - pad as i32,
        dy: (pcg(base.wrapping_add(1)) % span) as i32 - pad as i32,
        flip: flip && pcg(base.wrapping_add(2)) & 1 == 1,
        brightness: 1.0 + brightness * (2.0 * unit(pcg(base.wrapping_add(3))) - 1.0),
        contrast: 1.0 + contrast * (2.0 * unit(pcg(base.wrapping_add(4))) - 1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_stay_in_range_and_cover_it() {
        let pad = 3;
        let mut seen = [false; 7];
        for i in 0..500 {
            let a = sample_aug(42, i, pad, true, 0.2, 0.3);
            assert!((-3..=3).contains(&a.dx) && (-3..=3).contains(&a.dy));
            assert!((0.8..=1.2).contains(&a.brightness) && (0.7..=1.3).contains(&a.contrast));
            seen[(a.dx + 3) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        let flips = (0..1000).filter(|&i| sample_aug(7, i, 0, true, 0.0, 0.0).flip).count();
        assert!((400..600).contains(&flips), "{flips} flips of 1000");
        assert!((0..100).all(|i| !sample_aug(7, i, 0, false, 0.0, 0.0).flip));
        assert_ne!(sample_aug(1, 0, 4, true, 0.1, 0.1), sample_aug(1 << 32, 0, 4, true, 0.1, 0.1));
    }
}
