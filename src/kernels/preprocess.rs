//! Batch preprocessing: packed `u8` HWC images to normalised `f32` NCHW at
//! the model's input size, with the training environments' augmentation.
//!
//! The exact computation (resize convention, crop, flip, jitter, hash) is
//! documented in the header of `shaders/preprocess.wgsl`;
//! [`preprocess_reference`] is the plain CPU implementation of the same
//! arithmetic, used on non-wgpu devices and by the tests.

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::hash::{sample_aug, SampleAug};
use crate::error::{Error, Result};

/// Where one image of a [`PackedBatch`] lies in its byte buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleRegion {
    /// Byte offset of the image's first pixel.
    pub offset: usize,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// A batch of `u8` images in HWC order (1 or 3 channels, the same for every
/// sample), each with its own size, packed one after the other in one byte
/// buffer. This is what the GPU kernel receives (4 bytes per `u32` word):
/// a quarter of the upload an `f32` batch would need.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PackedBatch {
    channels: usize,
    data: Vec<u8>,
    samples: Vec<SampleRegion>,
}

fn check_channels(channels: usize) -> Result<()> {
    match channels {
        1 | 3 => Ok(()),
        c => Err(Error::Argument(format!("packed batch: {c} channels per pixel; expected 1 or 3"))),
    }
}

impl PackedBatch {
    /// An empty batch of `channels`-channel images.
    pub fn new(channels: usize) -> Result<PackedBatch> {
        check_channels(channels)?;
        Ok(PackedBatch { channels, data: Vec::new(), samples: Vec::new() })
    }

    /// A batch of images all `height x width`, stored contiguously in
    /// `pixels` (the layout of a `TensorSet` or of a gathered batch of it).
    pub fn uniform(channels: usize, height: usize, width: usize, pixels: Vec<u8>) -> Result<PackedBatch> {
        check_channels(channels)?;
        let size = height * width * channels;
        if size == 0 || !pixels.len().is_multiple_of(size) {
            return Err(Error::Argument(format!(
                "packed batch: {} bytes is not a whole number of {height}x{width}x{channels} images",
                pixels.len()
            )));
        }
        let samples = (0..pixels.len() / size)
            .map(|i| SampleRegion { offset: i * size, width: width as u32, height: height as u32 })
            .collect();
        let batch = PackedBatch { channels, data: pixels, samples };
        batch.validate()?;
        Ok(batch)
    }

    /// The samples `indices` of a contiguous set of `height x width` images
    /// (`pixels`, HWC, sample after sample), gathered into one batch.
    pub fn gather(
        channels: usize,
        height: usize,
        width: usize,
        pixels: &[u8],
        indices: &[usize],
    ) -> Result<PackedBatch> {
        let size = height * width * channels;
        let mut data = Vec::with_capacity(indices.len() * size);
        for &i in indices {
            let image = pixels.get(i * size..(i + 1) * size).ok_or_else(|| {
                Error::Argument(format!("packed batch: sample {i} is past the end of a {}-byte set", pixels.len()))
            })?;
            data.extend_from_slice(image);
        }
        PackedBatch::uniform(channels, height, width, data)
    }

    /// The samples `indices` of a decoded set (the training engine's batch).
    pub fn from_set(set: &crate::data::TensorSet, indices: &[usize]) -> Result<PackedBatch> {
        PackedBatch::gather(set.channels, set.height, set.width, &set.pixels, indices)
    }

    /// Appends one `height x width` image (`pixels`, HWC).
    pub fn push(&mut self, width: u32, height: u32, pixels: &[u8]) -> Result<()> {
        let expected = width as usize * height as usize * self.channels;
        if expected == 0 || pixels.len() != expected {
            return Err(Error::Argument(format!(
                "packed batch: image of {width}x{height}x{} needs {expected} bytes, got {}",
                self.channels,
                pixels.len()
            )));
        }
        self.samples.push(SampleRegion { offset: self.data.len(), width, height });
        self.data.extend_from_slice(pixels);
        self.validate()
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Channels per pixel (1 or 3).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The packed bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Where each image lies in [`data`](Self::data).
    pub fn samples(&self) -> &[SampleRegion] {
        &self.samples
    }

    /// Checks that every region lies inside the buffer and that offsets fit
    /// the kernel's 32-bit addressing.
    pub fn validate(&self) -> Result<()> {
        check_channels(self.channels)?;
        if self.data.len() > u32::MAX as usize - 4 {
            return Err(Error::Argument(format!(
                "packed batch: {} bytes exceeds the 4 GiB a batch may hold; use smaller batches",
                self.data.len()
            )));
        }
        for (i, s) in self.samples.iter().enumerate() {
            let size = s.width as usize * s.height as usize * self.channels;
            if size == 0 || s.offset.checked_add(size).is_none_or(|end| end > self.data.len()) {
                return Err(Error::Argument(format!(
                    "packed batch: sample {i} ({}x{} at byte {}) lies outside the {}-byte buffer or is empty",
                    s.width,
                    s.height,
                    s.offset,
                    self.data.len()
                )));
            }
        }
        Ok(())
    }
}

fn default_mean() -> [f32; 3] {
    [0.5; 3]
}

fn default_std() -> [f32; 3] {
    [0.5; 3]
}

/// Output size, normalisation and augmentation of [`preprocess`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PreprocessParams {
    /// Output height.
    pub height: u32,
    /// Output width.
    pub width: u32,
    /// Per-channel mean of `x / 255` (only the first entry is used for
    /// 1-channel images).
    #[serde(default = "default_mean")]
    pub mean: [f32; 3],
    /// Per-channel standard deviation of `x / 255`.
    #[serde(default = "default_std")]
    pub std: [f32; 3],
    /// Random crop: shift by up to `pad` pixels, zero padding (0: none).
    pub pad: u32,
    /// Random horizontal flip (probability 1/2).
    pub flip: bool,
    /// Brightness jitter range `r`: factor in `[1 - r, 1 + r]` (0: none).
    pub brightness: f32,
    /// Contrast jitter range `r` around 127.5: factor in `[1 - r, 1 + r]`.
    pub contrast: f32,
    /// Seed of the per-sample parameters; sample `i` of the batch uses
    /// `hash(seed, i)`. Vary it per step.
    pub seed: u64,
}

impl Default for PreprocessParams {
    fn default() -> Self {
        PreprocessParams::eval(32, 32)
    }
}

impl PreprocessParams {
    /// No augmentation: resize and normalise only.
    pub fn eval(height: u32, width: u32) -> PreprocessParams {
        PreprocessParams {
            height,
            width,
            mean: default_mean(),
            std: default_std(),
            pad: 0,
            flip: false,
            brightness: 0.0,
            contrast: 0.0,
            seed: 0,
        }
    }

    /// Checks sizes and ranges.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Argument(format!("preprocess: {what}")));
        if self.height == 0 || self.width == 0 || self.height > 16384 || self.width > 16384 {
            return bad(format!("output size {}x{} must be within 1..=16384", self.width, self.height));
        }
        if self.pad > 4096 {
            return bad(format!("crop padding {} is larger than 4096", self.pad));
        }
        if self.std.iter().any(|s| !s.is_finite() || *s <= 0.0) || self.mean.iter().any(|m| !m.is_finite()) {
            return bad(format!("mean {:?} / std {:?} must be finite with std > 0", self.mean, self.std));
        }
        for (name, r) in [("brightness", self.brightness), ("contrast", self.contrast)] {
            if !(0.0..=1.0).contains(&r) {
                return bad(format!("{name} range {r} must be in [0, 1]"));
            }
        }
        Ok(())
    }

    /// `1 / (255 std[c])` and `-mean[c] / std[c]`: the normalisation as one
    /// multiply-add, computed once on the CPU for both paths.
    pub fn affine(&self) -> ([f32; 3], [f32; 3]) {
        let mut scale = [0f32; 3];
        let mut bias = [0f32; 3];
        for c in 0..3 {
            scale[c] = 1.0 / (255.0 * self.std[c]);
            bias[c] = -self.mean[c] / self.std[c];
        }
        (scale, bias)
    }

    /// The augmentation parameters of batch sample `index`.
    pub fn sample(&self, index: u32) -> SampleAug {
        sample_aug(self.seed, index, self.pad, self.flip, self.brightness, self.contrast)
    }
}

pub(crate) fn checked(batch: &PackedBatch, params: &PreprocessParams, augs: Option<&[SampleAug]>) -> Result<()> {
    params.validate()?;
    if let Some(augs) = augs {
        if augs.len() != batch.len() {
            return Err(Error::Argument(format!(
                "preprocess: {} per-sample augmentations for a batch of {}",
                augs.len(),
                batch.len()
            )));
        }
        if augs.iter().any(|a| {
            !a.gain.is_finite()
                || !a.offset.is_finite()
                || a.dx.unsigned_abs() > 1 << 20
                || a.dy.unsigned_abs() > 1 << 20
        }) {
            return Err(Error::Argument(
                "preprocess: a per-sample augmentation has a non-finite tone or a huge shift".into(),
            ));
        }
    }
    batch.validate()?;
    if batch.is_empty() {
        return Err(Error::Argument("preprocess: the batch is empty".into()));
    }
    let out = batch.len() as u64 * batch.channels as u64 * params.height as u64 * params.width as u64;
    if out > (u32::MAX / 4) as u64 {
        return Err(Error::Argument(format!("preprocess: output of {out} values is too large for one batch")));
    }
    Ok(())
}

/// The plain CPU implementation: NCHW `f32` values, `[n, channels,
/// height, width]` row-major. Same arithmetic as `shaders/preprocess.wgsl`.
pub fn preprocess_reference(batch: &PackedBatch, params: &PreprocessParams) -> Result<Vec<f32>> {
    preprocess_reference_with(batch, params, None)
}

/// [`preprocess_reference`] with the per-sample parameters given
/// (`augs[i]` for sample `i`) instead of hashed from `params.seed`;
/// `params`' pad, flip, brightness, contrast and seed are then unused.
pub fn preprocess_reference_with(
    batch: &PackedBatch,
    params: &PreprocessParams,
    augs: Option<&[SampleAug]>,
) -> Result<Vec<f32>> {
    checked(batch, params, augs)?;
    let ch = batch.channels;
    let (oh, ow) = (params.height as usize, params.width as usize);
    let (scale, bias) = params.affine();
    let mut out = vec![0f32; batch.len() * ch * oh * ow];
    let data = &batch.data;
    for (s, region) in batch.samples.iter().enumerate() {
        let a = match augs {
            Some(augs) => augs[s],
            None => params.sample(s as u32),
        };
        let jitter = a.gain != 1.0 || a.offset != 0.0;
        let (sw, sh) = (region.width as usize, region.height as usize);
        let (fx, fy) = (sw as f32 / ow as f32, sh as f32 / oh as f32);
        for oy in 0..oh {
            for ox in 0..ow {
                let cx = if a.flip { ow - 1 - ox } else { ox };
                let ry = oy as i64 + a.dy as i64;
                let rx = cx as i64 + a.dx as i64;
                let inside = ry >= 0 && ry < oh as i64 && rx >= 0 && rx < ow as i64;
                let (mut x0, mut x1, mut y0, mut y1, mut wx, mut wy) = (0, 0, 0, 0, 0f32, 0f32);
                if inside {
                    let sx = ((rx as f32 + 0.5) * fx - 0.5).clamp(0.0, (sw - 1) as f32);
                    let sy = ((ry as f32 + 0.5) * fy - 0.5).clamp(0.0, (sh - 1) as f32);
                    x0 = sx.floor() as usize;
                    y0 = sy.floor() as usize;
                    x1 = (x0 + 1).min(sw - 1);
                    y1 = (y0 + 1).min(sh - 1);
                    wx = sx - x0 as f32;
                    wy = sy - y0 as f32;
                }
                let row0 = region.offset + y0 * sw * ch;
                let row1 = region.offset + y1 * sw * ch;
                for c in 0..ch {
                    let mut v = 0f32;
                    if inside {
                        let p = |i: usize| data[i] as f32;
                        let top = (1.0 - wx) * p(row0 + x0 * ch + c) + wx * p(row0 + x1 * ch + c);
                        let bot = (1.0 - wx) * p(row1 + x0 * ch + c) + wx * p(row1 + x1 * ch + c);
                        v = (1.0 - wy) * top + wy * bot;
                    }
                    if jitter {
                        v = (a.gain * v + a.offset).clamp(0.0, 255.0);
                    }
                    out[((s * ch + c) * oh + oy) * ow + ox] = v * scale[c] + bias[c];
                }
            }
        }
    }
    Ok(out)
}

/// Preprocesses `batch` into a `[n, channels, height, width]` tensor on
/// `device`. On a wgpu device this runs `shaders/preprocess.wgsl` on Burn's
/// own wgpu device and returns the kernel's output buffer as the tensor (no
/// CPU round trip: only the packed bytes are uploaded). Elsewhere, or if
/// the kernel cannot be launched (e.g. a SPIR-V-only build), it runs
/// [`preprocess_reference`] and uploads the result. On an autodiff device
/// the tensor is a constant of the graph.
pub fn preprocess(device: &Device, batch: &PackedBatch, params: &PreprocessParams) -> Result<Tensor<4>> {
    preprocess_with(device, batch, params, None)
}

/// [`preprocess`] with the per-sample parameters given (`augs[i]` for
/// sample `i`, e.g. drawn by the training engine's own seeded policy)
/// instead of hashed from `params.seed`.
pub fn preprocess_with(
    device: &Device,
    batch: &PackedBatch,
    params: &PreprocessParams,
    augs: Option<&[SampleAug]>,
) -> Result<Tensor<4>> {
    if let Some(t) = super::gpu::preprocess_with(device, batch, params, augs)? {
        return Ok(t);
    }
    preprocess_cpu(device, batch, params, augs)
}

/// [`preprocess_reference_with`] uploaded as a tensor: the path every
/// non-wgpu device takes.
pub fn preprocess_cpu(
    device: &Device,
    batch: &PackedBatch,
    params: &PreprocessParams,
    augs: Option<&[SampleAug]>,
) -> Result<Tensor<4>> {
    let values = preprocess_reference_with(batch, params, augs)?;
    let shape = [batch.len(), batch.channels, params.height as usize, params.width as usize];
    Ok(Tensor::from_data(TensorData::new(values, shape), device))
}
