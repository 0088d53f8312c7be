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

/// Augmentation parameters of one sample (see `shaders/preprocess.wgsl`):
/// output pixel `(y, x)` reads the resized image at
/// `(y + dy, (flip ? w - 1 - x : x) + dx)` (zero outside), then the tone is
/// `clamp(gain * v + offset, 0, 255)` in pixel units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleAug {
    /// Horizontal crop shift.
    pub dx: i32,
    /// Vertical crop shift.
    pub dy: i32,
    /// Mirror horizontally (applied to the output column, before the shift).
    pub flip: bool,
    /// Tone gain (1: none).
    pub gain: f32,
    /// Tone offset in pixel units, 0..255 scale (0: none). A brightness bias
    /// `b` in `[0, 1]` units is `offset = 255 * b`.
    pub offset: f32,
}

impl SampleAug {
    /// No change.
    pub const IDENTITY: SampleAug = SampleAug { dx: 0, dy: 0, flip: false, gain: 1.0, offset: 0.0 };
}

/// The parameters of sample `index` under `seed`: `sample_rand` in the
/// shader. `pad` bounds the shifts, `flip` enables flipping; brightness `b`
/// and contrast `k` (around 127.5) are uniform in `[1 - r, 1 + r]` for the
/// two ranges, giving `gain = b * k` and `offset = 127.5 * (1 - k)`.
pub fn sample_aug(seed: u64, index: u32, pad: u32, flip: bool, brightness: f32, contrast: f32) -> SampleAug {
    let (lo, hi) = (seed as u32, (seed >> 32) as u32);
    let base = pcg(pcg(index ^ pcg(hi)) ^ lo);
    let span = 2 * pad + 1;
    let b = 1.0 + brightness * (2.0 * unit(pcg(base.wrapping_add(3))) - 1.0);
    let k = 1.0 + contrast * (2.0 * unit(pcg(base.wrapping_add(4))) - 1.0);
    SampleAug {
        dx: (pcg(base) % span) as i32 - pad as i32,
        dy: (pcg(base.wrapping_add(1)) % span) as i32 - pad as i32,
        flip: flip && pcg(base.wrapping_add(2)) & 1 == 1,
        gain: b * k,
        offset: 127.5 * (1.0 - k),
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
            assert!((0.8 * 0.7..=1.2 * 1.3).contains(&a.gain) && a.offset.abs() <= 127.5 * 0.3 + 1e-3);
            seen[(a.dx + 3) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        let flips = (0..1000).filter(|&i| sample_aug(7, i, 0, true, 0.0, 0.0).flip).count();
        assert!((400..600).contains(&flips), "{flips} flips of 1000");
        assert!((0..100).all(|i| sample_aug(7, i, 0, false, 0.0, 0.0) == SampleAug::IDENTITY));
        assert_ne!(sample_aug(1, 0, 4, true, 0.1, 0.1), sample_aug(1 << 32, 0, 4, true, 0.1, 0.1));
    }
}
