//! Our own WGSL compute kernels (`shaders/`), launched on Burn's wgpu
//! device, with plain implementations of identical semantics for every
//! other device.
//!
//! - [`preprocess`]: a [`PackedBatch`] of `u8` HWC images to a normalised
//!   `f32` NCHW tensor: bilinear resize, random crop with zero padding,
//!   horizontal flip, photometric jitter, per-sample parameters hashed from
//!   `(seed, index)` ([`hash`]). CPU reference: [`preprocess_reference`].
//! - [`score`]: fused identifier scoring (logit adjustment, softmax,
//!   argmax, noise score, max probability, label probability). Reference:
//!   [`crate::score::per_sample`].
//! - [`cpu`]: batch norm and 2x2 max pooling + ReLU on Burn's `flex` CPU
//!   backend, forward and backward (Burn's own layers elsewhere). Checked
//!   against Burn's layers in `tests/cpu_kernels.rs`.
//!
//! How the kernels reach Burn's device and tensors is described in the
//! `gpu` module source (template kernels through `burn::backend::wgpu`).

pub mod cpu;
mod gpu;
pub mod hash;
mod preprocess;
mod score;

pub use gpu::{
    preprocess as preprocess_wgsl, preprocess_with as preprocess_wgsl_with, runs_wgsl, score as score_wgsl,
    wgsl_launches,
};
pub use hash::SampleAug;
pub use preprocess::{
    preprocess, preprocess_cpu, preprocess_reference, preprocess_reference_with, preprocess_with, PackedBatch,
    PreprocessParams, SampleRegion,
};
pub use score::{score, score_tensor_ops, ScoreOutput};

/// `shaders/preprocess.wgsl`.
pub const PREPROCESS_WGSL: &str = include_str!("../../shaders/preprocess.wgsl");
/// `shaders/score.wgsl`.
pub const SCORE_WGSL: &str = include_str!("../../shaders/score.wgsl");
