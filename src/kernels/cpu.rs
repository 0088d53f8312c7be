//! Our own CPU kernels for the layers of our backbones on Burn's `flex`
//! backend: convolution, batch norm (training and inference) and 2x2 max
//! pooling followed by ReLU, forward and backward, and the small CNN's
//! block (conv, batch norm, pooling, ReLU) fused.
//!
//! Why: on `flex` these layers ran far below what the CPU can do. Its batch
//! norm is Burn's default composition (two transposing copies to reduce per
//! channel, then five broadcast passes, and as many again backward); its
//! max pooling goes through a generic 3-D kernel with index arithmetic per
//! element; its convolution runs one small GEMM per sample and tile (49
//! output pixels at 7x7) and its backward through a transposed
//! convolution. Per layer at the small CNN's shapes, batch 128, forward +
//! backward on a 2-core VM (`examples/bench_layers.rs`, README, Speed):
//! conv 32 -> 64 at 14x14 37 ms with Burn's, 10.5 here; batch norm,
//! pooling and ReLU at 32 x 28 x 28 62 and 3.5 ms.
//!
//! - Batch norm: per-channel mean and variance (two passes, planes summed
//!   in `f64`), one scale-and-shift pass; backward, two per-channel sums and
//!   one pass for the input gradient.
//! - Pooling + ReLU: one pass that keeps, per output, where its gradient
//!   goes (the window's maximum, or nowhere when ReLU clipped it).
//! - Batch norm + pooling + ReLU, fused (the small CNN's blocks): the
//!   normalised tensor is never made; backward, each plane's gradient is
//!   scattered into a small buffer and goes through the same sums, so the
//!   values and gradients are those of the two kernels apart, bit for bit.
//! - Convolution: per chunk of samples whose column matrix (im2col) stays
//!   near 1 MB, so it is in cache when the GEMM reads it, one GEMM
//!   `[c_out, c*kh*kw] x [c*kh*kw, chunk*oh*ow]` on the GEMM crate `flex`
//!   itself uses; chunks run in parallel, each thread keeping its buffers.
//!   For a stride-1 same-size convolution each row of the column matrix is
//!   the plane shifted, one block copy. Backward rebuilds each chunk's
//!   column matrix, adds its share of the weight gradient and sends
//!   `weight^T x dy` back through the adjoint of im2col; nothing is made
//!   for an input that needs no gradient (the first layer's images).
//! - The small CNN's whole block (conv, batch norm, pooling, ReLU) is one
//!   kernel. At inference each chunk's convolution output is normalised,
//!   pooled and clipped while in cache (the same values as the layers'
//!   kernels one after the other, bit for bit). In a training step the
//!   convolution's GEMMs write their output channels last (`[n, oh, ow,
//!   c]`), each chunk's channel sums taken while it is in cache, and batch
//!   norm, pooling and their backward run with the channels as the vector
//!   dimension; batch norm's input gradient is made chunk by chunk,
//!   channels last, straight where the convolution's GEMMs read it. The
//!   statistics are summed in another order than the standalone batch
//!   norm's, so that op matches the layers' kernels to rounding.
//! - The loops of the training block, pooling at inference, run through
//!   `wide_fn!`: compiled for AVX2 and FMA too and chosen at run time,
//!   with the same bits as the baseline build.
//!
//! How they reach Burn: a backend extension trait, [`CpuLayers`],
//! implemented for `Flex` (the kernels) and for `Autodiff<Flex>` (the
//! same kernels forward, and the hand-written backward of each). The
//! functions [`conv2d`], [`batch_norm`], [`max_pool2_relu`],
//! [`batch_norm_pool2_relu`] and [`conv_bn_pool2_relu`] take Burn's layers
//! and route a tensor there when it lives on `flex` as `f32` (and the
//! layer is one the kernel covers), and to Burn's own layers otherwise, so
//! the wgpu and CUDA paths are unchanged. Every kernel is checked against
//! Burn's layers, the fused ones against the unfused (bit for bit where
//! they sum in the same order, to rounding for the training block), the
//! AVX2 build against the baseline bit for bit, and the convolution also
//! against a plain `f64` reference, in `tests/cpu_kernels.rs`.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ConvOptions;
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    backend_extension, Autodiff, Backend, Dispatch, DispatchDevice, ExtensionType, Flex, TensorMetadata,
};
use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::{BatchNorm, PaddingConfig2d};
use burn::tensor::{DType, Device, Shape, Tensor, TensorData};
use rayon::prelude::*;

/// The statistics-returning batch norm of a training step.
#[derive(ExtensionType)]
pub struct BatchNormOut<B: Backend> {
    /// The normalised, scaled and shifted input.
    pub output: FloatTensor<B>,
    /// The batch mean per channel, `[channels]` (no gradient).
    pub mean: FloatTensor<B>,
    /// The biased batch variance per channel, `[channels]` (no gradient).
    pub variance: FloatTensor<B>,
}

/// The layers with our own CPU kernels, as a Burn backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait CpuLayers: Backend {
    /// Batch norm of a `[n, c, ...]` input with the batch's own statistics.
    fn cpu_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> BatchNormOut<Self>;

    /// Batch norm with given (running) statistics.
    fn cpu_batch_norm_eval(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// `relu(max_pool2d(batch_norm_train(x), 2, stride 2))` of a
    /// `[n, c, h, w]` input: [`BatchNormOut`] with the pooled output.
    fn cpu_batch_norm_pool2_relu_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> BatchNormOut<Self>;

    /// `relu(max_pool2d(batch_norm(x), 2, stride 2))` with given (running)
    /// statistics.
    fn cpu_batch_norm_pool2_relu_eval(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// `relu(max_pool2d(batch_norm_train(conv2d(x, weight)), 2, stride 2))`:
    /// the small CNN's block in a training step, [`BatchNormOut`] with the
    /// pooled output. The convolution as in
    /// [`CpuLayers::cpu_conv_bn_pool2_relu_eval`].
    fn cpu_conv_bn_pool2_relu_train(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        conv: [[usize; 2]; 2],
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> BatchNormOut<Self>;

    /// `relu(max_pool2d(batch_norm(conv2d(x, weight)), 2, stride 2))` with
    /// given (running) statistics: the small CNN's block at inference. The
    /// convolution as in [`CpuLayers::cpu_conv2d`], `[stride, padding]` per axis
    /// (height, width).
    #[allow(clippy::too_many_arguments)]
    fn cpu_conv_bn_pool2_relu_eval(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        conv: [[usize; 2]; 2],
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// `relu(max_pool2d(x, 2, stride 2))` of a `[n, c, h, w]` input (odd
    /// sides drop their last row or column, as Burn's pooling does).
    fn cpu_max_pool2_relu(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// 2-D convolution without bias, groups or dilation: `x` `[n, c, h, w]`,
    /// `weight` `[c_out, c, kh, kw]`, symmetric zero padding.
    fn cpu_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride_h: usize,
        stride_w: usize,
        pad_h: usize,
        pad_w: usize,
    ) -> FloatTensor<Self>;
}

static LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// How many times this process has run one of these kernels' forward
/// passes (tests use it to tell that a layer took this path).
pub fn launches() -> usize {
    LAUNCHES.load(Ordering::Relaxed)
}

fn launched() {
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
}

/// Whether `x` lives on `flex` as `f32`, the case these kernels serve.
fn runs_here<const D: usize>(x: &Tensor<D>) -> bool {
    matches!(x.device().inner().as_dispatch(), DispatchDevice::Flex(_)) && x.dtype() == DType::F32
}

/// `bn.forward(x)`, through our kernels on `flex`: the batch's statistics
/// (and a running-statistics update, as Burn's layer does) on an autodiff
/// device while the layer trains, the running statistics otherwise.
/// A layer that does not match the input's channels goes to Burn's, which
/// says so in its panic.
pub fn batch_norm<const D: usize>(bn: &BatchNorm, x: Tensor<D>) -> Tensor<D> {
    if !runs_here(&x) || D < 3 || x.dims()[1] != bn.gamma.dims()[0] {
        return bn.forward(x);
    }
    batch_norm_ours(bn, x, <Dispatch as CpuLayers>::cpu_batch_norm_train, <Dispatch as CpuLayers>::cpu_batch_norm_eval)
}

/// `bn` on `x` through our kernel `train` (the batch's statistics, and the
/// running-statistics update Burn's layer makes) on an autodiff device
/// while the layer trains, through `eval` with the running statistics
/// otherwise. Each kernel takes `(x, gamma, beta, [mean, variance,]
/// epsilon)` on `Dispatch`.
fn batch_norm_ours<const D: usize, const E: usize>(
    bn: &BatchNorm,
    x: Tensor<D>,
    train: impl FnOnce(FloatTensor<Dispatch>, FloatTensor<Dispatch>, FloatTensor<Dispatch>, f64) -> BatchNormOut<Dispatch>,
    eval: impl FnOnce(
        FloatTensor<Dispatch>,
        FloatTensor<Dispatch>,
        FloatTensor<Dispatch>,
        FloatTensor<Dispatch>,
        FloatTensor<Dispatch>,
        f64,
    ) -> FloatTensor<Dispatch>,
) -> Tensor<E> {
    let device = x.device();
    let (gamma, beta) = (bn.gamma.val().into_dispatch(), bn.beta.val().into_dispatch());
    if device.is_autodiff() && bn.training.is_enabled() {
        let out = train(x.into_dispatch(), gamma, beta, bn.epsilon);
        update_running(bn, out.mean, out.variance, &device);
        Tensor::from_dispatch(out.output)
    } else {
        let mean = bn.running_mean.value().to_device(&device);
        let variance = bn.running_var.value().to_device(&device);
        Tensor::from_dispatch(eval(
            x.into_dispatch(),
            gamma,
            beta,
            mean.into_dispatch(),
            variance.into_dispatch(),
            bn.epsilon,
        ))
    }
}

/// Burn's running-statistics update of a training step: `running =
/// (1 - momentum) * running + momentum * batch`.
fn update_running(bn: &BatchNorm, mean: FloatTensor<Dispatch>, variance: FloatTensor<Dispatch>, device: &Device) {
    let mean = Tensor::<1>::from_dispatch(mean).detach();
    let variance = Tensor::<1>::from_dispatch(variance).detach();
    let m = bn.momentum;
    let running_mean = bn.running_mean.value_sync().to_device(device).mul_scalar(1.0 - m).add(mean.mul_scalar(m));
    let running_var = bn.running_var.value_sync().to_device(device).mul_scalar(1.0 - m).add(variance.mul_scalar(m));
    bn.running_mean.update(running_mean.detach());
    bn.running_var.update(running_var.detach());
}

/// Whether `pool` is the 2x2, stride-2, unpadded max pooling our kernels
/// cover.
fn is_pool2(pool: &MaxPool2d) -> bool {
    let unpadded = matches!(pool.padding, PaddingConfig2d::Valid | PaddingConfig2d::Explicit(0, 0, 0, 0));
    unpadded && pool.kernel_size == [2, 2] && pool.stride == [2, 2] && pool.dilation == [1, 1] && !pool.ceil_mode
}

/// `relu(pool.forward(bn.forward(x)))` (the small CNN's block after its
/// convolution): on `flex`, for a 2x2 `pool`, one kernel of ours that never
/// makes the full-size normalised tensor, forward or backward; elsewhere
/// [`batch_norm`] then [`max_pool2_relu`]. The same values and gradients
/// either way on `flex`, bit for bit.
pub fn batch_norm_pool2_relu(bn: &BatchNorm, pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    if !runs_here(&x) || x.dims()[1] != bn.gamma.dims()[0] || !is_pool2(pool) {
        return max_pool2_relu(pool, batch_norm(bn, x));
    }
    batch_norm_ours(
        bn,
        x,
        <Dispatch as CpuLayers>::cpu_batch_norm_pool2_relu_train,
        <Dispatch as CpuLayers>::cpu_batch_norm_pool2_relu_eval,
    )
}

/// `relu(pool.forward(x))`: our kernel on `flex` when `pool` is 2x2 with
/// stride 2, no padding, dilation or ceiling (the small CNN's); Burn's
/// pooling and ReLU otherwise.
pub fn max_pool2_relu(pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    if !(is_pool2(pool) && runs_here(&x)) {
        return burn::tensor::activation::relu(pool.forward(x));
    }
    Tensor::from_dispatch(<Dispatch as CpuLayers>::cpu_max_pool2_relu(x.into_dispatch()))
}

/// `conv.forward(x)`, through our kernel on `flex` when the layer has no
/// bias, one group, no dilation and symmetric padding (every convolution
/// of our backbones); Burn's layer otherwise.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    match ours(conv, &x) {
        Some([[sh, sw], [ph, pw]]) => Tensor::from_dispatch(<Dispatch as CpuLayers>::cpu_conv2d(
            x.into_dispatch(),
            conv.weight.val().into_dispatch(),
            sh,
            sw,
            ph,
            pw,
        )),
        None => conv.forward(x),
    }
}

/// `[stride, padding]` of `conv` when our kernel covers it for `x`.
fn ours(conv: &Conv2d, x: &Tensor<4>) -> Option<[[usize; 2]; 2]> {
    let [_, c, h, w] = x.dims();
    let [_, cin, kh, kw] = conv.weight.dims();
    let (ph, pw) = match conv.padding {
        PaddingConfig2d::Valid => (0, 0),
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => (top, left),
        _ => return None,
    };
    let fits = h + 2 * ph >= kh && w + 2 * pw >= kw;
    let plain = conv.bias.is_none() && conv.groups == 1 && conv.dilation == [1, 1];
    (runs_here(x) && plain && c == cin && fits).then_some([conv.stride, [ph, pw]])
}

/// `relu(pool.forward(bn.forward(conv.forward(x))))`, the small CNN's
/// block: on `flex` one kernel of ours, in a training step (the layer
/// trains on an autodiff device) and at inference, that never makes the
/// full-size normalised tensor nor, backward, its gradient; otherwise
/// [`conv2d`] then [`batch_norm_pool2_relu`]. The same values and
/// gradients either way on `flex`: bit for bit at inference, to rounding
/// in a training step (the statistics are summed in another order).
pub fn conv_bn_pool2_relu(conv: &Conv2d, bn: &BatchNorm, pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    let fused = ours(conv, &x).filter(|_| conv.weight.dims()[0] == bn.gamma.dims()[0] && is_pool2(pool));
    let Some(params) = fused else {
        return batch_norm_pool2_relu(bn, pool, conv2d(conv, x));
    };
    let weight = conv.weight.val().into_dispatch();
    let w = weight.clone();
    batch_norm_ours(
        bn,
        x,
        |x, gamma, beta, epsilon| {
            <Dispatch as CpuLayers>::cpu_conv_bn_pool2_relu_train(x, w, params, gamma, beta, epsilon)
        },
        |x, gamma, beta, mean, variance, epsilon| {
            <Dispatch as CpuLayers>::cpu_conv_bn_pool2_relu_eval(
                x, weight, params, gamma, beta, mean, variance, epsilon,
            )
        },
    )
}

// ---------------------------------------------------------------------------
// Plain kernels on contiguous NCHW slices.

/// Set by [`set_baseline_only`].
static BASELINE_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes the kernels of `wide_fn!` run their baseline build even where
/// the CPU has AVX2 and FMA (`true`), or choose again (`false`): for tests
/// and benchmarks that compare the two builds.
pub fn set_baseline_only(on: bool) {
    BASELINE_ONLY.store(on, Ordering::Relaxed);
}

/// Whether the CPU has AVX2 and FMA (x86-64 only; the detection is cached)
/// and [`set_baseline_only`] is off.
#[cfg(target_arch = "x86_64")]
#[inline]
fn wide_cpu() -> bool {
    !BASELINE_ONLY.load(Ordering::Relaxed)
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
}

/// `fn name(args) -> ret { body }` compiled twice, for the baseline and,
/// on x86-64, for AVX2 and FMA, the second chosen at run time where the CPU
/// has them: the loops of the body (and of the `#[inline(always)]` helpers
/// it calls) then vectorise 8 lanes wide instead of 4. The arithmetic does
/// not change (Rust never fuses a multiply and an add by itself), so both
/// give the same bits. Bodies stay serial: a closure handed to another
/// thread would be compiled for the baseline.
macro_rules! wide_fn {
    ($(#[$m:meta])* fn $name:ident($($a:ident: $t:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        fn $name($($a: $t),*) {
            #[inline(always)]
            fn body($($a: $t),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn v3($($a: $t),*) {
                    body($($a),*)
                }
                if wide_cpu() {
                    // SAFETY: the CPU has the features `v3` is compiled for.
                    return unsafe { v3($($a),*) };
                }
            }
            body($($a),*)
        }
    };
}

/// Sum of `f(a)` over a slice, with 8 independent accumulators (so it
/// vectorises).
#[inline(always)]
fn lane_sum(p: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = p.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] += f(c[k]);
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|&a| f(a)).sum::<f32>()
}

/// Sums of `g` and of `g * (a - m)`.
fn sum_and_dot_dev(g: &[f32], a: &[f32], m: f32) -> (f32, f32) {
    let (mut s, mut d) = ([0f32; 8], [0f32; 8]);
    let gc = g.chunks_exact(8);
    let ac = a.chunks_exact(8);
    let (gr, ar) = (gc.remainder(), ac.remainder());
    for (gx, ax) in gc.zip(ac) {
        for k in 0..8 {
            s[k] += gx[k];
            d[k] += gx[k] * (ax[k] - m);
        }
    }
    let mut s1 = s.iter().sum::<f32>();
    let mut d1 = d.iter().sum::<f32>();
    for (&gx, &ax) in gr.iter().zip(ar) {
        s1 += gx;
        d1 += gx * (ax - m);
    }
    (s1, d1)
}

/// Per-channel mean and biased variance of `x` (`[n, c, hw]`), two passes:
/// each plane's sum (8 lanes, `f32`), the planes' summed per channel in
/// [`channel_means`]; then likewise the squared deviations from the mean.
pub fn batch_stats(x: &[f32], n: usize, c: usize, hw: usize) -> (Vec<f32>, Vec<f32>) {
    let count = (n * hw).max(1) as f64;
    let per_plane = |f: &(dyn Fn(usize, &[f32]) -> f32 + Sync)| -> Vec<f32> {
        if hw == 0 {
            return vec![0.0; n * c];
        }
        x.par_chunks(hw).enumerate().with_min_len(8).map(|(p, plane)| f(p % c, plane)).collect()
    };
    let mean = channel_means(&per_plane(&|_, p| lane_sum(p, |a| a)), c, count);
    let squares = per_plane(&|ci, p| lane_sum(p, |a| (a - mean[ci]) * (a - mean[ci])));
    let var = channel_means(&squares, c, count);
    (mean, var)
}

/// Per column, the sum in row order, in `f64`, of a `[rows, c]` table (per
/// channel, its planes' or chunks' partial sums).
fn column_sums<T: Copy + Into<f64>>(v: &[T], c: usize) -> Vec<f64> {
    (0..c).map(|ci| v.iter().skip(ci).step_by(c.max(1)).map(|&u| u.into()).sum::<f64>()).collect()
}

/// [`column_sums`] of a table of pairs (batch norm's two backward sums).
fn column_pair_sums<T: Copy + Into<f64>>(v: &[(T, T)], c: usize) -> Vec<(f64, f64)> {
    (0..c)
        .map(|ci| {
            let pairs = v.iter().skip(ci).step_by(c.max(1));
            pairs.fold((0f64, 0f64), |(a, b), &(u, w)| (a + u.into(), b + w.into()))
        })
        .collect()
}

/// Per channel, the [`column_sums`] of the `[rows, c]` partial sums `v`
/// divided by `count`.
fn channel_means<T: Copy + Into<f64>>(v: &[T], c: usize, count: f64) -> Vec<f32> {
    column_sums(v, c).into_iter().map(|sum| (sum / count) as f32).collect()
}

/// `x * scale[c] + shift[c]` over `[n, c, hw]`.
pub fn scale_shift(x: &[f32], c: usize, hw: usize, scale: &[f32], shift: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    let sample = (c * hw).max(1);
    out.par_chunks_mut(sample).zip(x.par_chunks(sample)).for_each(|(o, xs)| {
        for ci in 0..c {
            let (a, b) = (scale[ci], shift[ci]);
            for (oy, &xv) in o[ci * hw..(ci + 1) * hw].iter_mut().zip(&xs[ci * hw..(ci + 1) * hw]) {
                *oy = xv * a + b;
            }
        }
    });
    out
}

/// The per-channel scale and shift of batch norm.
fn affine(gamma: &[f32], beta: &[f32], mean: &[f32], var: &[f32], epsilon: f64) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> =
        gamma.iter().zip(var).map(|(&g, &v)| (g as f64 / (v as f64 + epsilon).sqrt()) as f32).collect();
    let shift = beta.iter().zip(mean).zip(&scale).map(|((&b, &m), &s)| b - m * s).collect();
    (scale, shift)
}

/// Gradients of training-mode batch norm: `(dx, dgamma, dbeta)`, with
/// `dx = gamma / sigma * (dy - mean(dy) - xhat * mean(dy * xhat))`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    x: &[f32],
    dy: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    gamma: &[f32],
    mean: &[f32],
    var: &[f32],
    epsilon: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    bn_backward(x, &Dense { dy, hw }, (n, c, hw), gamma, mean, var, epsilon)
}

/// Where the batch-norm backward reads a plane's output gradient.
trait PlaneGrad: Sync {
    /// Plane `p`'s gradient, from the tensor or made in `scratch`.
    fn plane<'a>(&'a self, p: usize, scratch: &'a mut Vec<f32>) -> &'a [f32];
}

/// A full-size gradient tensor.
struct Dense<'a> {
    dy: &'a [f32],
    hw: usize,
}

impl PlaneGrad for Dense<'_> {
    fn plane<'a>(&'a self, p: usize, _scratch: &'a mut Vec<f32>) -> &'a [f32] {
        &self.dy[p * self.hw..(p + 1) * self.hw]
    }
}

/// The gradient of a 2x2 max pooling + ReLU's output, scattered one plane
/// at a time as [`max_pool2_relu_backward`] scatters it.
struct Pooled<'a> {
    g: &'a [f32],
    arg: &'a [u8],
    h: usize,
    w: usize,
}

impl PlaneGrad for Pooled<'_> {
    fn plane<'a>(&'a self, p: usize, scratch: &'a mut Vec<f32>) -> &'a [f32] {
        let ohw = (self.h / 2) * (self.w / 2);
        scratch.resize(self.h * self.w, 0.0);
        scatter_plane(&self.g[p * ohw..(p + 1) * ohw], &self.arg[p * ohw..(p + 1) * ohw], self.w, scratch);
        scratch
    }
}

/// The batch-norm backward of `x` (`[n, c, hw]`) with its output's gradient
/// read through `dy`: two per-channel sums (each plane's in `f32` with 8
/// lanes, the planes' in `f64`), then the input gradient plane by plane.
fn bn_backward(
    x: &[f32],
    dy: &impl PlaneGrad,
    (n, c, hw): (usize, usize, usize),
    gamma: &[f32],
    mean: &[f32],
    var: &[f32],
    epsilon: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let pairs: Vec<(f32, f32)> = (0..n * c)
        .into_par_iter()
        .with_min_len(8)
        .map_init(Vec::new, |scratch, p| sum_and_dot_dev(dy.plane(p, scratch), &x[p * hw..(p + 1) * hw], mean[p % c]))
        .collect();
    let sums = column_pair_sums(&pairs, c);
    let (dgamma, dbeta, coef) = bn_grad_terms(&sums, gamma, mean, var, epsilon, (n * hw).max(1) as f64);
    // Written once, element by element, so never cleared first.
    let mut dx = Vec::with_capacity(x.len());
    if hw > 0 {
        let planes = dx.spare_capacity_mut()[..x.len()].par_chunks_mut(hw);
        planes.enumerate().with_min_len(8).for_each_init(Vec::new, |scratch, (p, o)| {
            let (cf, gs) = (coef[p % c], dy.plane(p, scratch));
            for ((ov, &xv), &gv) in o.iter_mut().zip(&x[p * hw..(p + 1) * hw]).zip(gs) {
                ov.write(bn_dx(cf, gv, xv));
            }
        });
    }
    // SAFETY: the planes of `hw` elements tile the first `x.len()` (`n * c
    // * hw`, none when `hw` is 0), and the loop wrote every element of each.
    unsafe { dx.set_len(x.len()) };
    (dx, dgamma, dbeta)
}

/// Batch norm's backward terms from its two per-channel gradient sums (of
/// `dy` and of `dy * (x - mean)`, over `count` elements a channel):
/// `dgamma`, `dbeta` and, per channel, the coefficients of [`bn_dx`].
fn bn_grad_terms(
    sums: &[(f64, f64)],
    gamma: &[f32],
    mean: &[f32],
    var: &[f32],
    epsilon: f64,
    count: f64,
) -> (Vec<f32>, Vec<f32>, Vec<[f32; 4]>) {
    let inv_std: Vec<f32> = var.iter().map(|&v| (1.0 / (v as f64 + epsilon).sqrt()) as f32).collect();
    let dbeta: Vec<f32> = sums.iter().map(|s| s.0 as f32).collect();
    let dgamma: Vec<f32> = sums.iter().zip(&inv_std).map(|(s, &is)| (s.1 * is as f64) as f32).collect();
    let coef = (0..sums.len())
        .map(|ci| {
            let k = gamma[ci] * inv_std[ci];
            let mdy = (sums[ci].0 / count) as f32;
            let mdyx = (sums[ci].1 / count) as f32 * inv_std[ci] * inv_std[ci];
            [k, mdy, mdyx, mean[ci]]
        })
        .collect();
    (dgamma, dbeta, coef)
}

/// Batch norm's input gradient at an element of input `x` and output
/// gradient `g`: `k * (g - mdy - (x - mean) * mdyx)` with `k = gamma /
/// sigma`, the channel's `[k, mdy, mdyx, mean]` from [`bn_grad_terms`].
#[inline(always)]
fn bn_dx([k, mdy, mdyx, m]: [f32; 4], g: f32, x: f32) -> f32 {
    k * (g - mdy - (x - m) * mdyx)
}

/// Where a pooled output's gradient goes: 0..=3 the window position of the
/// maximum (row-major), [`NO_GRAD`] when ReLU clipped the output to zero.
const NO_GRAD: u8 = 4;

/// `relu(max over each 2x2 window)` of `[planes, h, w]`: the output
/// `[planes, h/2, w/2]` and, per output, where its gradient goes.
pub fn max_pool2_relu_forward(x: &[f32], planes: usize, h: usize, w: usize) -> (Vec<f32>, Vec<u8>) {
    affine_pool2_relu::<true>(x, planes, h, w, |_| (1.0, 0.0))
}

/// `relu(max over each 2x2 window of x * a + b)` of `[planes, h, w]`, with
/// `(a, b) = ab(plane)`: batch norm's scale and shift, pooling and ReLU in
/// one pass, each value computed as [`scale_shift`] computes it. The output
/// `[planes, h/2, w/2]` and, when `ARG`, where each output's gradient goes
/// (empty otherwise).
fn affine_pool2_relu<const ARG: bool>(
    x: &[f32],
    planes: usize,
    h: usize,
    w: usize,
    ab: impl Fn(usize) -> (f32, f32) + Sync,
) -> (Vec<f32>, Vec<u8>) {
    let ohw = (h / 2) * (w / 2);
    let mut out = vec![0f32; planes * ohw];
    let mut arg = if ARG { vec![NO_GRAD; planes * ohw] } else { Vec::new() };
    if ohw == 0 {
        return (out, arg);
    }
    let src = |p: usize| &x[p * h * w..(p + 1) * h * w];
    if ARG {
        out.par_chunks_mut(ohw)
            .zip(arg.par_chunks_mut(ohw))
            .enumerate()
            .with_min_len(8)
            .for_each(|(p, (o, a))| pool_plane::<true>(src(p), w, ab(p), o, a));
    } else {
        out.par_chunks_mut(ohw)
            .enumerate()
            .with_min_len(8)
            .for_each(|(p, o)| pool_plane::<false>(src(p), w, ab(p), o, &mut []));
    }
    (out, arg)
}

/// One plane of [`affine_pool2_relu`]: `src` `w` wide into `o` (`h/2 x
/// w/2`) and, when `ARG`, where each output's gradient goes into `a`.
/// Branch-free, so that the loops vectorise.
#[inline]
fn pool_plane<const ARG: bool>(src: &[f32], w: usize, ab: (f32, f32), o: &mut [f32], a: &mut [u8]) {
    let ow = w / 2;
    if ow == 0 {
        return;
    }
    for (oy, orow) in o.chunks_exact_mut(ow).enumerate() {
        let r0 = src[2 * oy * w..][..2 * ow].chunks_exact(2);
        let r1 = src[(2 * oy + 1) * w..][..2 * ow].chunks_exact(2);
        if ARG {
            let arow = &mut a[oy * ow..][..ow];
            for (((p, q), ov), av) in r0.zip(r1).zip(orow.iter_mut()).zip(arow.iter_mut()) {
                (*ov, *av) = window(p, q, ab);
            }
        } else {
            for ((p, q), ov) in r0.zip(r1).zip(orow.iter_mut()) {
                *ov = window(p, q, ab).0;
            }
        }
    }
}

/// `relu` of the maximum of the 2x2 window `[p0, p1; q0, q1]` after
/// `v * a + b`, and where its gradient goes: the first maximum in window
/// order (as a scan with `>`), [`NO_GRAD`] when ReLU clips it.
#[inline(always)]
fn window(p: &[f32], q: &[f32], (sa, sb): (f32, f32)) -> (f32, u8) {
    let v = [p[0], p[1], q[0], q[1]].map(|v| v * sa + sb);
    let (m0, k0) = if v[1] > v[0] { (v[1], 1) } else { (v[0], 0) };
    let (m1, k1) = if v[3] > v[2] { (v[3], 3) } else { (v[2], 2) };
    let (m, k) = if m1 > m0 { (m1, k1) } else { (m0, k0) };
    if m > 0.0 {
        (m, k)
    } else {
        (0.0, NO_GRAD)
    }
}

/// The input gradient of [`max_pool2_relu_forward`] from the output's.
pub fn max_pool2_relu_backward(dy: &[f32], arg: &[u8], planes: usize, h: usize, w: usize) -> Vec<f32> {
    let (oh, ow) = (h / 2, w / 2);
    let mut dx = vec![0f32; planes * h * w];
    if oh * ow == 0 {
        return dx;
    }
    dx.par_chunks_mut(h * w).enumerate().with_min_len(8).for_each(|(p, d)| {
        scatter_plane(&dy[p * oh * ow..(p + 1) * oh * ow], &arg[p * oh * ow..(p + 1) * oh * ow], w, d)
    });
    dx
}

/// One plane of [`max_pool2_relu_backward`]: the pooled gradient `g`
/// scattered to where `arg` says into `d` (the input plane, `w` wide),
/// zero elsewhere. Every element of `d` is written once, by selects.
fn scatter_plane(g: &[f32], arg: &[u8], w: usize, d: &mut [f32]) {
    let ow = w / 2;
    if ow == 0 {
        d.fill(0.0);
        return;
    }
    let oh = g.len() / ow;
    for ((rows, gs), ks) in d.chunks_exact_mut(2 * w).zip(g.chunks_exact(ow)).zip(arg.chunks_exact(ow)) {
        let (top, bottom) = rows.split_at_mut(w);
        let pick = |k: u8, at: u8, v: f32| if k == at { v } else { 0.0 };
        for (((t, b), &gv), &k) in top.chunks_exact_mut(2).zip(bottom.chunks_exact_mut(2)).zip(gs).zip(ks) {
            t[0] = pick(k, 0, gv);
            t[1] = pick(k, 1, gv);
            b[0] = pick(k, 2, gv);
            b[1] = pick(k, 3, gv);
        }
        if w % 2 == 1 {
            (top[w - 1], bottom[w - 1]) = (0.0, 0.0);
        }
    }
    d[2 * oh * w..].fill(0.0);
}

/// Training-mode batch norm followed by 2x2 max pooling and ReLU, of
/// `[n, c, h, w]`: the pooled output, where each output's gradient goes,
/// and the batch mean and biased variance. The same values as
/// [`batch_stats`], [`scale_shift`] and [`max_pool2_relu_forward`] one
/// after the other, bit for bit, without the full-size normalised tensor.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_pool2_relu_train(
    x: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    gamma: &[f32],
    beta: &[f32],
    epsilon: f64,
) -> (Vec<f32>, Vec<u8>, Vec<f32>, Vec<f32>) {
    let (mean, var) = batch_stats(x, n, c, h * w);
    let (scale, shift) = affine(gamma, beta, &mean, &var, epsilon);
    let (out, arg) = affine_pool2_relu::<true>(x, n * c, h, w, |p| (scale[p % c], shift[p % c]));
    (out, arg, mean, var)
}

/// Batch norm with given statistics followed by 2x2 max pooling and ReLU,
/// of `[n, c, h, w]`, in one pass.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_pool2_relu_eval(
    x: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    epsilon: f64,
) -> Vec<f32> {
    let (scale, shift) = affine(gamma, beta, mean, var, epsilon);
    affine_pool2_relu::<false>(x, n * c, h, w, |p| (scale[p % c], shift[p % c])).0
}

/// Gradients of [`batch_norm_pool2_relu_train`] from the pooled output's
/// gradient `g` (`[n, c, h/2, w/2]`) and `arg`: `(dx, dgamma, dbeta)`, bit
/// for bit those of [`batch_norm_backward`] of the gradient that
/// [`max_pool2_relu_backward`] scatters, made one plane at a time in a
/// small buffer instead of a full-size tensor.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_pool2_relu_backward(
    x: &[f32],
    g: &[f32],
    arg: &[u8],
    (n, c, h, w): (usize, usize, usize, usize),
    gamma: &[f32],
    mean: &[f32],
    var: &[f32],
    epsilon: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    bn_backward(x, &Pooled { g, arg, h, w }, (n, c, h * w), gamma, mean, var, epsilon)
}

/// The shape of a convolution: input `[n, c, h, w]`, `c_out` filters of
/// `kh x kw`, strides and symmetric zero padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    /// Samples.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels (filters).
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Strides (height, width).
    pub stride: [usize; 2],
    /// Zero padding on each side (height, width).
    pub pad: [usize; 2],
}

impl ConvShape {
    /// Output height and width.
    pub fn out(&self) -> (usize, usize) {
        let o = |i: usize, k: usize, s: usize, p: usize| (i + 2 * p - k) / s + 1;
        (o(self.h, self.kh, self.stride[0], self.pad[0]), o(self.w, self.kw, self.stride[1], self.pad[1]))
    }

    /// Rows of the column matrix: `c * kh * kw`.
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// For output coordinate `o` and kernel offset `k` along one axis, the
    /// input coordinate, if inside the image.
    fn source(o: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
        (o * stride + k).checked_sub(pad).filter(|&i| i < size)
    }

    /// For a stride-1 convolution whose output has the input's size, and
    /// kernel offset `(ky, kx)`: the output rows and columns whose input
    /// lies inside the image, and the offset from an output element's index
    /// in its plane to its input element's.
    fn same_offsets(&self, ky: usize, kx: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>, isize) {
        let hi = (self.h + self.pad[0]).saturating_sub(ky).min(self.h);
        let oys = self.pad[0].saturating_sub(ky).min(hi)..hi;
        let oxs = self.valid_ox(kx, self.w);
        let dy = ky as isize - self.pad[0] as isize;
        (oys, oxs, dy * self.w as isize + kx as isize - self.pad[1] as isize)
    }

    /// The output columns `ox` whose input column `ox * sw + kx - pw` lies
    /// inside the image, as a range.
    fn valid_ox(&self, kx: usize, ow: usize) -> std::ops::Range<usize> {
        let (sw, pw) = (self.stride[1], self.pad[1]);
        // ox * sw + kx >= pw  and  ox * sw + kx - pw < w
        let lo = pw.saturating_sub(kx).div_ceil(sw);
        let hi = if self.w + pw > kx { ((self.w + pw - kx - 1) / sw + 1).min(ow) } else { 0 };
        lo.min(hi)..hi
    }
}

/// The column matrix of samples `n0..n0 + count` of `x` (`[n, c, h, w]`)
/// into `out`: `[c * kh * kw, count * oh * ow]`, row `(ci, ky, kx)`,
/// column `(sample, oy, ox)`, zero where the window leaves the image.
/// Every element of `out` is written, so a reused buffer needs no clearing.
fn im2col_into(x: &[f32], s: &ConvShape, n0: usize, count: usize, out: &mut [f32]) {
    let (oh, ow) = s.out();
    let ohw = oh * ow;
    let cols = count * ohw;
    if cols == 0 {
        return;
    }
    if s.stride == [1, 1] && (oh, ow) == (s.h, s.w) {
        return im2col_same(x, s, n0, count, out);
    }
    for (r, row) in out.chunks_mut(cols).enumerate() {
        let (ci, ky, kx) = (r / (s.kh * s.kw), r / s.kw % s.kh, r % s.kw);
        let oxs = s.valid_ox(kx, ow);
        for j in 0..count {
            let plane = &x[((n0 + j) * s.c + ci) * s.h * s.w..][..s.h * s.w];
            for oy in 0..oh {
                let dst = &mut row[j * ohw + oy * ow..][..ow];
                let Some(iy) = ConvShape::source(oy, ky, s.stride[0], s.pad[0], s.h) else {
                    dst.fill(0.0);
                    continue;
                };
                let src = &plane[iy * s.w..][..s.w];
                dst[..oxs.start].fill(0.0);
                dst[oxs.end..].fill(0.0);
                if s.stride[1] == 1 {
                    let start = oxs.start + kx - s.pad[1];
                    dst[oxs.clone()].copy_from_slice(&src[start..start + oxs.len()]);
                } else {
                    for ox in oxs.clone() {
                        dst[ox] = src[ox * s.stride[1] + kx - s.pad[1]];
                    }
                }
            }
        }
    }
}

/// [`im2col_into`] for a stride-1 convolution whose output has the
/// input's size (padding `(k - 1) / 2`, the 3x3 layers'): a row of the
/// column matrix is then the sample's plane shifted by a constant offset,
/// so each (row, sample) is one block copy, and the few elements the shift
/// brings round from the neighbouring image row (where the window leaves
/// the image at the sides) are cleared after it.
fn im2col_same(x: &[f32], s: &ConvShape, n0: usize, count: usize, out: &mut [f32]) {
    let hw = s.h * s.w;
    let w = s.w;
    for (r, row) in out.chunks_mut(count * hw).enumerate() {
        let (ci, ky, kx) = (r / (s.kh * s.kw), r / s.kw % s.kh, r % s.kw);
        let (oys, oxs, shift) = s.same_offsets(ky, kx);
        let (left, right) = (oxs.start, w - oxs.end);
        for (j, dst) in row.chunks_exact_mut(hw).enumerate() {
            if oys.is_empty() || oxs.is_empty() {
                dst.fill(0.0);
                continue;
            }
            let plane = &x[((n0 + j) * s.c + ci) * hw..][..hw];
            let (t0, t1) = (oys.start * w + left, oys.end * w - right);
            dst[..t0].fill(0.0);
            dst[t1..].fill(0.0);
            let s0 = (t0 as isize + shift) as usize;
            dst[t0..t1].copy_from_slice(&plane[s0..s0 + (t1 - t0)]);
            if left + right > 0 {
                for oy in oys.clone() {
                    dst[oy * w..oy * w + left].fill(0.0);
                    dst[(oy + 1) * w - right..(oy + 1) * w].fill(0.0);
                }
            }
        }
    }
}

/// Adds the input gradient of `count` samples from their column matrix's
/// (the adjoint of [`im2col_into`]) into `dx` (`[count, c, h, w]`).
/// `dcols` is scratch: the stride-1 same-size case clears the elements
/// that no input receives.
fn col2im_add(dcols: &mut [f32], s: &ConvShape, count: usize, dx: &mut [f32]) {
    let (oh, ow) = s.out();
    let ohw = oh * ow;
    let cols = count * ohw;
    if cols == 0 || s.h * s.w == 0 {
        return;
    }
    if s.stride == [1, 1] && (oh, ow) == (s.h, s.w) {
        return col2im_same(dcols, s, count, dx);
    }
    for (p, plane) in dx.chunks_mut(s.h * s.w).enumerate() {
        let (j, ci) = (p / s.c, p % s.c);
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                let r = (ci * s.kh + ky) * s.kw + kx;
                let row = &dcols[r * cols + j * ohw..][..ohw];
                let oxs = s.valid_ox(kx, ow);
                for oy in 0..oh {
                    let Some(iy) = ConvShape::source(oy, ky, s.stride[0], s.pad[0], s.h) else { continue };
                    let src = &row[oy * ow..][..ow];
                    let dst = &mut plane[iy * s.w..][..s.w];
                    if s.stride[1] == 1 {
                        let start = oxs.start + kx - s.pad[1];
                        for (d, &g) in dst[start..start + oxs.len()].iter_mut().zip(&src[oxs.clone()]) {
                            *d += g;
                        }
                    } else {
                        for ox in oxs.clone() {
                            dst[ox * s.stride[1] + kx - s.pad[1]] += src[ox];
                        }
                    }
                }
            }
        }
    }
}

/// [`col2im_add`] for the case of [`im2col_same`]: per plane and kernel
/// offset, one block addition of the shifted row, after clearing the
/// elements the shift would bring round from the neighbouring image row
/// (the zeros of the column matrix). Each input element receives the same
/// terms in the same order as in the general case.
fn col2im_same(dcols: &mut [f32], s: &ConvShape, count: usize, dx: &mut [f32]) {
    let (hw, w) = (s.h * s.w, s.w);
    let cols = count * hw;
    for (p, plane) in dx.chunks_mut(hw).enumerate() {
        let (j, ci) = (p / s.c, p % s.c);
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                let (oys, oxs, shift) = s.same_offsets(ky, kx);
                if oys.is_empty() || oxs.is_empty() {
                    continue;
                }
                let r = (ci * s.kh + ky) * s.kw + kx;
                let row = &mut dcols[r * cols + j * hw..][..hw];
                let (left, right) = (oxs.start, w - oxs.end);
                if left + right > 0 {
                    for oy in oys.clone() {
                        row[oy * w..oy * w + left].fill(0.0);
                        row[(oy + 1) * w - right..(oy + 1) * w].fill(0.0);
                    }
                }
                let (t0, t1) = (oys.start * w + left, oys.end * w - right);
                let s0 = (t0 as isize + shift) as usize;
                for (d, &g) in plane[s0..s0 + (t1 - t0)].iter_mut().zip(&row[t0..t1]) {
                    *d += g;
                }
            }
        }
    }
}

/// Samples per chunk: a chunk's column matrix stays near 1 MB (in cache)
/// and chunks run in parallel, each with its own GEMMs.
fn chunk(s: &ConvShape) -> usize {
    let (oh, ow) = s.out();
    (262_144 / (s.k() * oh * ow).max(1)).clamp(1, s.n.max(1))
}

/// The GEMM's own threads only when there are too few chunks to go round.
fn gemm_threads(chunks: usize) -> gemm::Parallelism {
    if chunks >= rayon::current_num_threads() {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(0)
    }
}

/// What a GEMM's output may be: `f32`, or `MaybeUninit<f32>` for memory the
/// GEMM fills without reading it first (same layout).
trait GemmOut {
    const ZERO: Self;
}

impl GemmOut for f32 {
    const ZERO: f32 = 0.0;
}

impl GemmOut for MaybeUninit<f32> {
    const ZERO: Self = MaybeUninit::new(0.0);
}

/// `dst[m, n] = lhs[m, k] x rhs[k, n]`: row-major `dst` with row stride
/// `dst_rs`, `lhs` and `rhs` given by (row, column) strides, on the GEMM
/// that `flex` uses. Every element of the `m x n` block is written and
/// none is read, so `dst` may be uninitialised memory.
#[allow(clippy::too_many_arguments)]
fn matmul<D: GemmOut>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [D],
    dst_rs: usize,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    parallelism: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(last(m, n, dst_rs, 1) < dst.len(), "matmul: dst out of bounds");
    if k == 0 {
        dst.iter_mut().for_each(|v| *v = D::ZERO);
        return;
    }
    assert!(last(m, k, lhs_rs, lhs_cs) < lhs.len(), "matmul: lhs out of bounds");
    assert!(last(k, n, rhs_rs, rhs_cs) < rhs.len(), "matmul: rhs out of bounds");
    // SAFETY: every index the GEMM reads or writes is inside the slices
    // (checked above), `dst` does not alias the inputs (a `&mut`), and its
    // elements are `f32` or `MaybeUninit<f32>`, which the GEMM (not reading
    // `dst`: `read_dst` false) writes as `f32`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().cast::<f32>(),
            1,
            dst_rs as isize,
            false,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The convolution of `x` (`[n, c, h, w]`) by `weight` (`[c_out, c, kh,
/// kw]`): `[n, c_out, oh, ow]`. Per chunk of samples: the column matrix,
/// one GEMM `[c_out, k] x [k, chunk * ohw]`, and a copy into place.
pub fn conv2d_forward(x: &[f32], weight: &[f32], s: &ConvShape) -> Vec<f32> {
    let (oh, ow) = s.out();
    let (ohw, k) = (oh * ow, s.k());
    let mut out = vec![0f32; s.n * s.c_out * ohw];
    forward_chunks(x, s, &mut out, s.c_out * ohw, |o, count, cols, y, par| {
        let cols_n = count * ohw;
        if k < 64 {
            // Few multiply-adds per output (the first layer's 9): one GEMM
            // per sample, straight into place, beats copying the output.
            for (j, oj) in o.chunks_exact_mut(s.c_out * ohw).enumerate() {
                matmul((s.c_out, ohw, k), oj, ohw, weight, (k, 1), &cols[j * ohw..], (cols_n, 1), par);
            }
            return;
        }
        let y = first(y, s.c_out * cols_n);
        matmul((s.c_out, cols_n, k), y, cols_n, weight, (k, 1), cols, (cols_n, 1), par);
        for j in 0..count {
            for co in 0..s.c_out {
                o[(j * s.c_out + co) * ohw..][..ohw].copy_from_slice(&y[co * cols_n + j * ohw..][..ohw]);
            }
        }
    });
    out
}

/// The chunk loop of the forward kernels: `out` (`per_sample` values a
/// sample) split into the chunks of [`chunk`], and for each, in parallel,
/// `f(o, count, cols, y, parallelism)`: the chunk's share of `out`, its
/// number of samples, its column matrix (made here) and a scratch buffer
/// for the GEMM's output (sized by `f` with [`first`]).
fn forward_chunks(
    x: &[f32],
    s: &ConvShape,
    out: &mut [f32],
    per_sample: usize,
    f: impl Fn(&mut [f32], usize, &[f32], &mut Vec<f32>, gemm::Parallelism) + Sync,
) {
    if out.is_empty() {
        return;
    }
    let (oh, ow) = s.out();
    let per = chunk(s);
    let par = gemm_threads(s.n.div_ceil(per));
    out.par_chunks_mut(per * per_sample).enumerate().for_each(|(i, o)| {
        with_scratch(|[cols, y, _]| {
            let count = o.len() / per_sample;
            let cols = first(cols, s.k() * count * oh * ow);
            im2col_into(x, s, i * per, count, cols);
            f(o, count, cols, y, par)
        })
    });
}

thread_local! {
    /// Each thread's buffers for the convolution kernels (column matrices,
    /// GEMM outputs, transposed gradients), kept between chunks and calls
    /// for the thread's life at the largest size used (a chunk's, about
    /// 1 MB each unless one sample needs more): every use overwrites what
    /// it then reads, so they are never cleared.
    static SCRATCH: RefCell<[Vec<f32>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// Runs `f` with this thread's scratch buffers, or with fresh ones when
/// they are in use further up this thread's stack (a thread waiting on a
/// parallel GEMM may run another chunk meanwhile).
fn with_scratch<R>(f: impl FnOnce(&mut [Vec<f32>; 3]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffers) => f(&mut buffers),
        Err(_) => f(&mut Default::default()),
    })
}

/// The first `len` elements of `v`, grown as needed (with zeros, the only
/// time they are cleared).
fn first(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// The small CNN's block at inference: the convolution of `x` by `weight`,
/// then `x * scale[c] + shift[c]` (batch norm with given statistics), 2x2
/// max pooling and ReLU: `[n, c_out, oh/2, ow/2]`. The convolution's output
/// stays in each chunk's buffer (in cache) and only the pooled planes are
/// written; the values are those of [`conv2d_forward`], [`scale_shift`]
/// and [`max_pool2_relu_forward`] one after the other, bit for bit.
pub fn conv_bn_pool2_relu_eval(x: &[f32], weight: &[f32], s: &ConvShape, scale: &[f32], shift: &[f32]) -> Vec<f32> {
    let (oh, ow) = s.out();
    let (ohw, pohw, k) = (oh * ow, (oh / 2) * (ow / 2), s.k());
    let mut out = vec![0f32; s.n * s.c_out * pohw];
    forward_chunks(x, s, &mut out, s.c_out * pohw, |o, count, cols, y, par| {
        let cols_n = count * ohw;
        let y = first(y, s.c_out * cols_n);
        matmul((s.c_out, cols_n, k), y, cols_n, weight, (k, 1), cols, (cols_n, 1), par);
        eval_pool(y, s.c_out, oh, ow, scale, shift, o);
    });
    out
}

wide_fn! {
    /// Batch norm with given `scale` and `shift`, 2x2 max pooling and ReLU
    /// of one chunk's convolution output `y` (`[c, count, oh * ow]`) into
    /// its pooled planes `o` (`[count, c, oh/2, ow/2]`, not empty).
    fn eval_pool(y: &[f32], c: usize, oh: usize, ow: usize, scale: &[f32], shift: &[f32], o: &mut [f32]) {
        let (ohw, pohw) = (oh * ow, (oh / 2) * (ow / 2));
        let cols_n = o.len() / (c * pohw) * ohw;
        for (p, op) in o.chunks_exact_mut(pohw).enumerate() {
            let (j, co) = (p / c, p % c);
            pool_plane::<false>(&y[co * cols_n + j * ohw..][..ohw], ow, (scale[co], shift[co]), op, &mut []);
        }
    }
}

/// Gradients of [`conv2d_forward`] from the output's (`[n, c_out, oh, ow]`):
/// the input's (when `need_x`) and the weight's (when `need_weight`).
pub fn conv2d_backward(
    dy: &[f32],
    x: &[f32],
    weight: &[f32],
    s: &ConvShape,
    need_x: bool,
    need_weight: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let (oh, ow) = s.out();
    let ohw = oh * ow;
    conv_backward_from(x, weight, s, need_x, need_weight, None, |n0, count, dyt| {
        // [count, c_out, ohw] -> [c_out, count * ohw].
        let cols_n = count * ohw;
        for co in 0..s.c_out {
            for j in 0..count {
                dyt[co * cols_n + j * ohw..][..ohw].copy_from_slice(&dy[((n0 + j) * s.c_out + co) * ohw..][..ohw]);
            }
        }
    })
}

/// The convolution's backward with the output's gradient given chunk by
/// chunk: `fill(n0, count, dyt)` writes that of samples `n0..n0 + count`
/// into every element of `dyt`, as `[c_out, count * oh * ow]` in chunks of
/// [`chunk`] samples, or channels last (`[count * oh * ow, c_out]`) in
/// chunks of `per` samples when `channels_last` is `Some(per)`. Per chunk:
/// the column matrix again, the weight gradient's share (summed over
/// chunks in chunk order) and the input gradient (`weight^T x dy`, back
/// through the adjoint of the column matrix).
fn conv_backward_from(
    x: &[f32],
    weight: &[f32],
    s: &ConvShape,
    need_x: bool,
    need_weight: bool,
    channels_last: Option<usize>,
    fill: impl Fn(usize, usize, &mut [f32]) + Sync,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let (oh, ow) = s.out();
    let (ohw, k) = (oh * ow, s.k());
    let per = channels_last.unwrap_or_else(|| chunk(s));
    let cl = channels_last.is_some();
    let chunks = s.n.div_ceil(per);
    let par = gemm_threads(chunks);
    let sample = s.c * s.h * s.w;
    let mut dx = need_x.then(|| vec![0f32; s.n * sample]);
    // One chunk: its weight-gradient share, and its input gradient into
    // `dxc`, in the scratch buffers (the output's gradient, the column
    // matrix and its gradient).
    let run = |[dyt, cols, dcols]: &mut [Vec<f32>; 3], i: usize, dxc: Option<&mut [f32]>| {
        let n0 = i * per;
        let count = per.min(s.n - n0);
        let cols_n = count * ohw;
        let dyt = first(dyt, s.c_out * cols_n);
        fill(n0, count, dyt);
        // The weight gradient's share, transposed: `cols x dy^T`, `[k,
        // c_out]` (the GEMM runs 17 to 30% faster with the long side as
        // its rows than `dy x cols^T`).
        let dwt = need_weight.then(|| {
            let cols = first(cols, k * cols_n);
            im2col_into(x, s, n0, count, cols);
            let mut dwt = vec![0f32; k * s.c_out];
            let dyt_t = if cl { (s.c_out, 1) } else { (1, cols_n) };
            matmul((k, s.c_out, cols_n), &mut dwt, s.c_out, cols, (cols_n, 1), dyt, dyt_t, par);
            dwt
        });
        if let Some(dxc) = dxc {
            let dcols = first(dcols, k * cols_n);
            let dy = if cl { (1, s.c_out) } else { (cols_n, 1) };
            matmul((k, cols_n, s.c_out), dcols, cols_n, weight, (1, k), dyt, dy, par);
            col2im_add(dcols, s, count, dxc);
        }
        dwt
    };
    // Each chunk's weight-gradient share, summed in chunk order so that a
    // run gives the same bits whatever the threads did.
    let shares: Vec<Option<Vec<f32>>> = match dx.as_mut() {
        Some(dx) if sample > 0 => dx
            .par_chunks_mut(per * sample)
            .enumerate()
            .map(|(i, dxc)| with_scratch(|scr| run(scr, i, Some(dxc))))
            .collect(),
        _ => (0..chunks).into_par_iter().map(|i| with_scratch(|scr| run(scr, i, None))).collect(),
    };
    let dw = need_weight.then(|| {
        let mut dwt = vec![0f32; k * s.c_out];
        for share in shares.iter().flatten() {
            dwt.iter_mut().zip(share).for_each(|(u, v)| *u += v);
        }
        let mut dw = vec![0f32; s.c_out * k];
        for (r, row) in dwt.chunks_exact(s.c_out.max(1)).enumerate() {
            for (co, &v) in row.iter().enumerate() {
                dw[co * k + r] = v;
            }
        }
        dw
    });
    (dx, dw)
}

/// What the small CNN's block keeps from a training forward
/// ([`conv_bn_pool2_relu_train`]) for its backward.
#[derive(Debug, Clone)]
pub struct BlockState {
    /// The convolution's output, channels last: `[n, oh, ow, c_out]` (the
    /// layout its GEMMs write fastest, and batch norm and pooling read
    /// with the channels as the vector dimension).
    pub y: Vec<f32>,
    /// Samples per chunk of the forward and backward GEMMs ([`out_chunk`]).
    pub per: usize,
    /// Where each pooled output's gradient goes, channels last: `[n, oh/2,
    /// ow/2, c_out]`.
    pub arg: Vec<u8>,
    /// The batch mean per channel.
    pub mean: Vec<f32>,
    /// The biased batch variance per channel.
    pub var: Vec<f32>,
}

/// Samples per chunk of the training block: its column matrix, its output
/// and its output's gradient each stay near 1 MB.
fn out_chunk(s: &ConvShape) -> usize {
    let (oh, ow) = s.out();
    (262_144 / (s.k().max(s.c_out) * oh * ow).max(1)).clamp(1, s.n.max(1))
}

wide_fn! {
    /// Adds to `out[co]` the sum over the rows of `y` (`[rows, c]`, channels
    /// last) of channel `co`: `f32` over blocks of 32 rows, the blocks in
    /// `f64`, vectorised over the channels.
    fn cl_sums(y: &[f32], c: usize, out: &mut [f64]) {
        let mut acc = vec![0f32; c];
        for block in y.chunks(32 * c) {
            acc.fill(0.0);
            for row in block.chunks_exact(c) {
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            }
            for (o, &a) in out.iter_mut().zip(&acc) {
                *o += a as f64;
            }
        }
    }
}

wide_fn! {
    /// As [`cl_sums`], of the squared deviations from each channel's `mean`.
    fn cl_squares(y: &[f32], c: usize, mean: &[f32], out: &mut [f64]) {
        let mut acc = vec![0f32; c];
        for block in y.chunks(32 * c) {
            acc.fill(0.0);
            for row in block.chunks_exact(c) {
                for ((a, &v), &m) in acc.iter_mut().zip(row).zip(mean) {
                    *a += (v - m) * (v - m);
                }
            }
            for (o, &a) in out.iter_mut().zip(&acc) {
                *o += a as f64;
            }
        }
    }
}

wide_fn! {
    /// Batch norm (`scale`, `shift`), 2x2 max pooling and ReLU of one
    /// sample's channels-last output `ys` (`[oh, ow, c]`) into its pooled
    /// planes `o` (`[c, oh/2, ow/2]`) and, channels last, where each pooled
    /// output's gradient goes (`a`).
    #[allow(clippy::too_many_arguments)]
    fn cl_pool(ys: &[f32], c: usize, oh: usize, ow: usize, scale: &[f32], shift: &[f32], o: &mut [f32], a: &mut [u8]) {
        let (ph, pw) = (oh / 2, ow / 2);
        let pohw = ph * pw;
        let mut pooled = vec![0f32; c];
        for oy in 0..ph {
            for ox in 0..pw {
                let q = oy * pw + ox;
                let [r0, r1, r2, r3] = window_rows(oy, ox, ow, c).map(|at| &ys[at..at + c]);
                let rows = r0.iter().zip(r1).zip(r2.iter().zip(r3));
                let outs = pooled.iter_mut().zip(a[q * c..][..c].iter_mut());
                for ((((&v0, &v1), (&v2, &v3)), (&sa, &sb)), (pv, av)) in rows.zip(scale.iter().zip(shift)).zip(outs) {
                    (*pv, *av) = window(&[v0, v1], &[v2, v3], (sa, sb));
                }
                for (co, &v) in pooled.iter().enumerate() {
                    o[co * pohw + q] = v;
                }
            }
        }
    }
}

wide_fn! {
    /// Batch norm's two backward sums over one sample, added to `acc_s`
    /// (of the pooled gradient) and `acc_d` (of it times the deviation from
    /// the mean of the pixel it goes to): `ys` its channels-last output,
    /// `gt` and `args` its pooled gradient and targets, channels last.
    #[allow(clippy::too_many_arguments)]
    fn cl_grad_sums(ys: &[f32], gt: &[f32], args: &[u8], c: usize, oh: usize, ow: usize, mean: &[f32], acc_s: &mut [f32], acc_d: &mut [f32]) {
        let (ph, pw) = (oh / 2, ow / 2);
        for oy in 0..ph {
            for ox in 0..pw {
                let q = oy * pw + ox;
                let [r0, r1, r2, r3] = window_rows(oy, ox, ow, c).map(|at| &ys[at..at + c]);
                let (gq, aq) = (&gt[q * c..][..c], &args[q * c..][..c]);
                let rows = r0.iter().zip(r1).zip(r2.iter().zip(r3));
                let ins = gq.iter().zip(aq).zip(mean.iter());
                let accs = acc_s.iter_mut().zip(acc_d.iter_mut());
                for ((((&v0, &v1), (&v2, &v3)), ((&gv, &kk), &m)), (s_, d_)) in rows.zip(ins).zip(accs) {
                    // The pixel the gradient goes to (none: NO_GRAD).
                    let v = if kk == 0 { v0 } else if kk == 1 { v1 } else if kk == 2 { v2 } else { v3 };
                    let gv = if kk < NO_GRAD { gv } else { 0.0 };
                    *s_ += gv;
                    *d_ += gv * (v - m);
                }
            }
        }
    }
}

wide_fn! {
    /// Batch norm's input gradient of one sample, channels last, into `ds`
    /// (`[oh, ow, c]`): `ys` its output, `gt` and `args` its pooled gradient
    /// and targets, channels last; `terms` the per-channel `k, mdy, mdyx,
    /// mean` of [`bn_dx`], one slice each.
    #[allow(clippy::too_many_arguments)]
    fn cl_fill(ys: &[f32], gt: &[f32], args: &[u8], c: usize, oh: usize, ow: usize, terms: &[Vec<f32>; 4], ds: &mut [f32]) {
        let (ph, pw) = (oh / 2, ow / 2);
        let [kk_, mdy, mdyx, mm] = terms;
        // Pixels no window covers (an odd last row or column): no gradient.
        for (py, (drow, yrow)) in ds.chunks_exact_mut(ow * c).zip(ys.chunks_exact(ow * c)).enumerate() {
            let from = if py < 2 * ph { 2 * pw * c } else { 0 };
            for (dpx, ypx) in drow[from..].chunks_exact_mut(c).zip(yrow[from..].chunks_exact(c)) {
                let t = kk_.iter().zip(mdy).zip(mdyx.iter().zip(mm));
                for ((dd, &v), ((&k, &md), (&mx, &m))) in dpx.iter_mut().zip(ypx).zip(t) {
                    *dd = k * (0.0 - md - (v - m) * mx);
                }
            }
        }
        for oy in 0..ph {
            for ox in 0..pw {
                let q = oy * pw + ox;
                let (gq, aq) = (&gt[q * c..][..c], &args[q * c..][..c]);
                for (t, at) in window_rows(oy, ox, ow, c).into_iter().enumerate() {
                    let (d, yv) = (&mut ds[at..at + c], &ys[at..at + c]);
                    let tm = kk_.iter().zip(mdy).zip(mdyx.iter().zip(mm));
                    let ins = yv.iter().zip(gq).zip(aq);
                    for ((dd, ((&v, &gv), &ka)), ((&k, &md), (&mx, &m))) in d.iter_mut().zip(ins).zip(tm) {
                        let g = if ka == t as u8 { gv } else { 0.0 };
                        *dd = k * (g - md - (v - m) * mx);
                    }
                }
            }
        }
    }
}

/// The four input pixels of pooled output `(oy, ox)` in a channels-last
/// plane `ow` wide: offsets of their rows of `c` values, in window order.
#[inline(always)]
fn window_rows(oy: usize, ox: usize, ow: usize, c: usize) -> [usize; 4] {
    let p = (2 * oy * ow + 2 * ox) * c;
    [p, p + c, p + ow * c, p + (ow + 1) * c]
}

/// The small CNN's block in a training step, `relu(max_pool2(
/// batch_norm_train(conv2d(x, weight))))`: the pooled output (`[n, c_out,
/// oh/2, ow/2]`) and what the backward needs. The convolution's GEMMs
/// write their output channels last, each chunk's channel sums taken
/// while it is in cache; the variance and the pooling read it with the
/// channels as the vector dimension. The statistics are summed over
/// blocks of pixels in `f32` and the blocks in `f64` (so in another order
/// than [`batch_stats`]: the same values to rounding).
pub fn conv_bn_pool2_relu_train(
    x: &[f32],
    weight: &[f32],
    s: &ConvShape,
    gamma: &[f32],
    beta: &[f32],
    epsilon: f64,
) -> (Vec<f32>, BlockState) {
    let (oh, ow) = s.out();
    let (ohw, ph, pw, k, c) = (oh * ow, oh / 2, ow / 2, s.k(), s.c_out);
    let pohw = ph * pw;
    let per = out_chunk(s);
    let chunks = s.n.div_ceil(per);
    // Written by the GEMMs, so never cleared first.
    let len = s.n * ohw * c;
    let mut y = Vec::with_capacity(len);
    let mut sums = vec![0f64; chunks * c];
    if len > 0 {
        let par = gemm_threads(chunks);
        let parts = y.spare_capacity_mut()[..len].par_chunks_mut(per * ohw * c).zip(sums.par_chunks_mut(c));
        parts.enumerate().for_each(|(i, (yc, sc))| {
            with_scratch(|[cols, _, _]| {
                let cols_n = yc.len() / c;
                let cols = first(cols, k * cols_n);
                im2col_into(x, s, i * per, cols_n / ohw, cols);
                // y^T = cols^T x weight^T: `[cols_n, c]`.
                matmul((cols_n, c, k), yc, c, cols, (1, cols_n), weight, (1, k), par);
                // SAFETY: the GEMM wrote all of `yc` (`cols_n` rows of `c`).
                cl_sums(unsafe { yc.assume_init_ref() }, c, sc);
            })
        });
    }
    // SAFETY: the chunks tile the first `len` elements and each GEMM wrote
    // all of its chunk (none to write when `len` is 0).
    unsafe { y.set_len(len) };
    let count = (s.n * ohw).max(1) as f64;
    let mean = channel_means(&sums, c, count);
    let mut squares = vec![0f64; chunks * c];
    if len > 0 {
        y.par_chunks(per * ohw * c).zip(squares.par_chunks_mut(c)).for_each(|(yc, sc)| {
            cl_squares(yc, c, &mean, sc);
        });
    }
    let var = channel_means(&squares, c, count);
    let (scale, shift) = affine(gamma, beta, &mean, &var, epsilon);
    let mut out = vec![0f32; s.n * c * pohw];
    let mut arg = vec![NO_GRAD; s.n * pohw * c];
    if pohw > 0 && c > 0 {
        out.par_chunks_mut(c * pohw)
            .zip(arg.par_chunks_mut(pohw * c))
            .enumerate()
            .for_each(|(ni, (o, a))| cl_pool(&y[ni * ohw * c..][..ohw * c], c, oh, ow, &scale, &shift, o, a));
    }
    (out, BlockState { y, per, arg, mean, var })
}

/// Gradients of [`conv_bn_pool2_relu_train`] from the pooled output's
/// gradient `g` (`[n, c_out, oh/2, ow/2]`): `(dx when need_x, dweight when
/// need_weight, dgamma, dbeta)`. Batch norm's two sums read each window's
/// four pixels with the channels as the vector dimension (no scattered
/// plane), and its input gradient is made chunk by chunk, channels last,
/// straight where the convolution's GEMMs read it.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn conv_bn_pool2_relu_backward(
    g: &[f32],
    state: &BlockState,
    x: &[f32],
    weight: &[f32],
    s: &ConvShape,
    gamma: &[f32],
    epsilon: f64,
    need_x: bool,
    need_weight: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let (oh, ow) = s.out();
    let (ohw, ph, pw, c, n) = (oh * ow, oh / 2, ow / 2, s.c_out, s.n);
    let pohw = ph * pw;
    let BlockState { y, per, arg, mean, var } = state;
    let per = *per;
    let chunks = n.div_ceil(per);
    // The pooled gradient channels last (`[n, oh/2, ow/2, c]`), once for
    // both passes below.
    let mut gt = vec![0f32; n * pohw * c];
    if pohw > 0 && c > 0 {
        gt.par_chunks_mut(pohw * c).zip(g.par_chunks(c * pohw)).for_each(|(gt, gs)| {
            for (co, plane) in gs.chunks_exact(pohw).enumerate() {
                for (q, &v) in plane.iter().enumerate() {
                    gt[q * c + co] = v;
                }
            }
        });
    }
    let sample_gt = |ni: usize| &gt[ni * pohw * c..][..pohw * c];
    // The two per-channel sums, of dy and of dy * (y - mean).
    let mut partial = vec![(0f64, 0f64); chunks * c];
    if pohw > 0 && c > 0 {
        partial.par_chunks_mut(c).enumerate().for_each(|(i, sc)| {
            let (mut acc_s, mut acc_d) = (vec![0f32; c], vec![0f32; c]);
            for ni in i * per..n.min((i + 1) * per) {
                let ys = &y[ni * ohw * c..][..ohw * c];
                let args = &arg[ni * pohw * c..][..pohw * c];
                acc_s.fill(0.0);
                acc_d.fill(0.0);
                cl_grad_sums(ys, sample_gt(ni), args, c, oh, ow, mean, &mut acc_s, &mut acc_d);
                for (o, (&a, &b)) in sc.iter_mut().zip(acc_s.iter().zip(&acc_d)) {
                    o.0 += a as f64;
                    o.1 += b as f64;
                }
            }
        });
    }
    let sums = column_pair_sums(&partial, c);
    let (dgamma, dbeta, coef) = bn_grad_terms(&sums, gamma, mean, var, epsilon, (n * ohw).max(1) as f64);
    let terms = [0, 1, 2, 3].map(|t| coef.iter().map(|cf| cf[t]).collect::<Vec<f32>>());
    let fill = |n0: usize, count: usize, dyt: &mut [f32]| {
        for j in 0..count {
            let ni = n0 + j;
            let (ys, args) = (&y[ni * ohw * c..][..ohw * c], &arg[ni * pohw * c..][..pohw * c]);
            cl_fill(ys, sample_gt(ni), args, c, oh, ow, &terms, &mut dyt[j * ohw * c..][..ohw * c]);
        }
    };
    let (dx, dw) = conv_backward_from(x, weight, s, need_x, need_weight, Some(per), fill);
    (dx, dw, dgamma, dbeta)
}

// ---------------------------------------------------------------------------
// The extension on `Flex` and `Autodiff<Flex>`.

/// A contiguous `f32` copy-free view where the tensor allows it.
fn contiguous(t: FlexTensor) -> FlexTensor {
    let offsets = t.layout().contiguous_offsets();
    if t.is_contiguous() && offsets.map(|(s, _)| s == 0).unwrap_or(false) {
        t
    } else {
        t.to_contiguous()
    }
}

fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 tensor")
}

fn tensor(v: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}

/// `[n, c, hw]` of an `[n, c, ...]` shape.
fn nchw(shape: &Shape) -> (usize, usize, usize) {
    let d = shape.as_slice();
    (d[0], d[1], d[2..].iter().product())
}

fn is_f32(t: &FlexTensor) -> bool {
    t.dtype() == DType::F32
}

/// Batch norm's per-channel scale and shift from `[gamma, beta, mean,
/// variance]` tensors (the running statistics at inference).
fn running_affine(params: [FlexTensor; 4], epsilon: f64) -> (Vec<f32>, Vec<f32>) {
    let [gamma, beta, mean, variance] = params.map(contiguous);
    affine(values(&gamma), values(&beta), values(&mean), values(&variance), epsilon)
}

/// Burn's own 2x2 stride-2 max pooling then ReLU on backend `B` (where
/// our kernels do not run: a dtype other than `f32`, or a layer that is
/// not tracked through ours).
fn burn_pool2_relu<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    B::relu(B::max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], false))
}

impl CpuLayers for Flex {
    fn cpu_batch_norm_train(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, epsilon: f64) -> BatchNormOut<Flex> {
        if !is_f32(&x) {
            let r = Flex::batch_norm_train(x, gamma, beta, epsilon);
            return BatchNormOut { output: r.output, mean: r.mean, variance: r.variance };
        }
        launched();
        let shape = x.shape();
        let (n, c, hw) = nchw(&shape);
        let (x, gamma, beta) = (contiguous(x), contiguous(gamma), contiguous(beta));
        let (mean, var) = batch_stats(values(&x), n, c, hw);
        let (scale, shift) = affine(values(&gamma), values(&beta), &mean, &var, epsilon);
        let output = tensor(scale_shift(values(&x), c, hw, &scale, &shift), shape);
        BatchNormOut { output, mean: tensor(mean, Shape::new([c])), variance: tensor(var, Shape::new([c])) }
    }

    fn cpu_batch_norm_eval(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        epsilon: f64,
    ) -> FlexTensor {
        if !is_f32(&x) {
            return Flex::batch_norm(x, gamma, beta, mean, variance, epsilon);
        }
        launched();
        let shape = x.shape();
        let (_, c, hw) = nchw(&shape);
        let x = contiguous(x);
        let (scale, shift) = running_affine([gamma, beta, mean, variance], epsilon);
        tensor(scale_shift(values(&x), c, hw, &scale, &shift), shape)
    }

    fn cpu_batch_norm_pool2_relu_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> BatchNormOut<Flex> {
        bn_pool_forward(x, gamma, beta, epsilon).0
    }

    fn cpu_batch_norm_pool2_relu_eval(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        epsilon: f64,
    ) -> FlexTensor {
        if !is_f32(&x) {
            let y = Flex::batch_norm(x, gamma, beta, mean, variance, epsilon);
            return burn_pool2_relu::<Flex>(y);
        }
        launched();
        let [n, c, h, w] = x.shape().dims::<4>();
        let x = contiguous(x);
        let [gamma, beta, mean, variance] = [gamma, beta, mean, variance].map(contiguous);
        let (gamma, beta, mean, variance) = (values(&gamma), values(&beta), values(&mean), values(&variance));
        let out = batch_norm_pool2_relu_eval(values(&x), n, c, h, w, gamma, beta, mean, variance, epsilon);
        tensor(out, Shape::new([n, c, h / 2, w / 2]))
    }

    fn cpu_conv_bn_pool2_relu_train(
        x: FlexTensor,
        weight: FlexTensor,
        [stride, pad]: [[usize; 2]; 2],
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> BatchNormOut<Flex> {
        block_forward(x, weight, stride, pad, gamma, beta, epsilon).0
    }

    fn cpu_conv_bn_pool2_relu_eval(
        x: FlexTensor,
        weight: FlexTensor,
        [stride, pad]: [[usize; 2]; 2],
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        epsilon: f64,
    ) -> FlexTensor {
        if !is_f32(&x) || !is_f32(&weight) {
            let y = conv_forward(x, weight, stride, pad).0;
            return Flex::cpu_batch_norm_pool2_relu_eval(y, gamma, beta, mean, variance, epsilon);
        }
        launched();
        let [n, c, h, w] = x.shape().dims::<4>();
        let [c_out, _, kh, kw] = weight.shape().dims::<4>();
        let s = ConvShape { n, c, h, w, c_out, kh, kw, stride, pad };
        let (x, weight) = (contiguous(x), contiguous(weight));
        let (scale, shift) = running_affine([gamma, beta, mean, variance], epsilon);
        let out = conv_bn_pool2_relu_eval(values(&x), values(&weight), &s, &scale, &shift);
        let (oh, ow) = s.out();
        tensor(out, Shape::new([n, c_out, oh / 2, ow / 2]))
    }

    fn cpu_max_pool2_relu(x: FlexTensor) -> FlexTensor {
        pool_forward(x).0
    }

    fn cpu_conv2d(x: FlexTensor, weight: FlexTensor, sh: usize, sw: usize, ph: usize, pw: usize) -> FlexTensor {
        conv_forward(x, weight, [sh, sw], [ph, pw]).0
    }
}

/// The convolution's output and, where our kernel ran, its (contiguous)
/// input and shape (`None` where Burn's ran because the input is not `f32`).
fn conv_forward(
    x: FlexTensor,
    weight: FlexTensor,
    stride: [usize; 2],
    pad: [usize; 2],
) -> (FlexTensor, Option<(FlexTensor, ConvShape)>) {
    if !is_f32(&x) || !is_f32(&weight) {
        let options = ConvOptions::new(stride, pad, [1, 1], 1);
        return (Flex::conv2d(x, weight, None, options), None);
    }
    launched();
    let [n, c, h, w] = x.shape().dims::<4>();
    let [c_out, _, kh, kw] = weight.shape().dims::<4>();
    let s = ConvShape { n, c, h, w, c_out, kh, kw, stride, pad };
    let (x, weight) = (contiguous(x), contiguous(weight));
    let out = conv2d_forward(values(&x), values(&weight), &s);
    let (oh, ow) = s.out();
    (tensor(out, Shape::new([n, c_out, oh, ow])), Some((x, s)))
}

/// The output of batch norm + pooling + ReLU with the batch statistics
/// and, where our kernel ran, where each output's gradient goes (`None`
/// where Burn's layers ran because the input is not `f32`).
fn bn_pool_forward(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    epsilon: f64,
) -> (BatchNormOut<Flex>, Option<Arc<Vec<u8>>>) {
    if !is_f32(&x) {
        let r = Flex::batch_norm_train(x, gamma, beta, epsilon);
        return (BatchNormOut { output: burn_pool2_relu::<Flex>(r.output), mean: r.mean, variance: r.variance }, None);
    }
    launched();
    let [n, c, h, w] = x.shape().dims::<4>();
    let (x, gamma, beta) = (contiguous(x), contiguous(gamma), contiguous(beta));
    let (out, arg, mean, var) =
        batch_norm_pool2_relu_train(values(&x), n, c, h, w, values(&gamma), values(&beta), epsilon);
    let out = BatchNormOut {
        output: tensor(out, Shape::new([n, c, h / 2, w / 2])),
        mean: tensor(mean, Shape::new([c])),
        variance: tensor(var, Shape::new([c])),
    };
    (out, Some(Arc::new(arg)))
}

/// The small CNN's block with the batch statistics and, where our kernel
/// ran, the (contiguous) input, the convolution's shape and what the
/// backward needs (`None` where Burn's layers ran because an input is not
/// `f32`).
#[allow(clippy::type_complexity)]
fn block_forward(
    x: FlexTensor,
    weight: FlexTensor,
    stride: [usize; 2],
    pad: [usize; 2],
    gamma: FlexTensor,
    beta: FlexTensor,
    epsilon: f64,
) -> (BatchNormOut<Flex>, Option<(FlexTensor, ConvShape, BlockState)>) {
    if !is_f32(&x) || !is_f32(&weight) {
        let y = conv_forward(x, weight, stride, pad).0;
        return (bn_pool_forward(y, gamma, beta, epsilon).0, None);
    }
    launched();
    let [n, c, h, w] = x.shape().dims::<4>();
    let [c_out, _, kh, kw] = weight.shape().dims::<4>();
    let s = ConvShape { n, c, h, w, c_out, kh, kw, stride, pad };
    let [x, weight, gamma, beta] = [x, weight, gamma, beta].map(contiguous);
    let (out, state) =
        conv_bn_pool2_relu_train(values(&x), values(&weight), &s, values(&gamma), values(&beta), epsilon);
    let (oh, ow) = s.out();
    let r = BatchNormOut {
        output: tensor(out, Shape::new([n, c_out, oh / 2, ow / 2])),
        mean: tensor(state.mean.clone(), Shape::new([c_out])),
        variance: tensor(state.var.clone(), Shape::new([c_out])),
    };
    (r, Some((x, s, state)))
}

/// The pooled output and where each output's gradient goes (`None` where
/// Burn's own layers ran because the input is not `f32`).
fn pool_forward(x: FlexTensor) -> (FlexTensor, Option<Arc<Vec<u8>>>) {
    if !is_f32(&x) {
        return (burn_pool2_relu::<Flex>(x), None);
    }
    launched();
    let [n, c, h, w] = x.shape().dims::<4>();
    let x = contiguous(x);
    let (out, arg) = max_pool2_relu_forward(values(&x), n * c, h, w);
    (tensor(out, Shape::new([n, c, h / 2, w / 2])), Some(Arc::new(arg)))
}

#[derive(Debug)]
struct BatchNormBackward;

impl Backward<Flex, 3> for BatchNormBackward {
    /// The input, gamma, the batch statistics, epsilon, and, when 2x2
    /// pooling + ReLU followed in the same kernel, where each pooled
    /// output's gradient goes.
    type State = (FlexTensor, FlexTensor, Vec<f32>, Vec<f32>, f64, Option<Arc<Vec<u8>>>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let (x, gamma, mean, var, epsilon, arg) = ops.state;
        let shape = x.shape();
        let (n, c, hw) = nchw(&shape);
        let (x, g, gamma) = (values(&x), values(&grad), values(&gamma));
        let (dx, dgamma, dbeta) = match &arg {
            Some(arg) => {
                let [_, _, h, w] = shape.dims::<4>();
                batch_norm_pool2_relu_backward(x, g, arg, (n, c, h, w), gamma, &mean, &var, epsilon)
            }
            None => batch_norm_backward(x, g, n, c, hw, gamma, &mean, &var, epsilon),
        };
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, tensor(dx, shape));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, tensor(dgamma, Shape::new([c])));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, tensor(dbeta, Shape::new([c])));
        }
    }
}

/// Training-mode batch norm of an `f32` input on `Autodiff<Flex>`, followed
/// in the same kernel by 2x2 max pooling and ReLU when `pooled`: our
/// forward, and [`BatchNormBackward`] when the graph tracks any input.
fn batch_norm_tracked<C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<Flex, C>>,
    gamma: FloatTensor<Autodiff<Flex, C>>,
    beta: FloatTensor<Autodiff<Flex, C>>,
    epsilon: f64,
    pooled: bool,
) -> BatchNormOut<Autodiff<Flex, C>> {
    let forward = |x, gamma, beta| match pooled {
        true => bn_pool_forward(x, gamma, beta, epsilon),
        false => (Flex::cpu_batch_norm_train(x, gamma, beta, epsilon), None),
    };
    let constant = FloatTensor::<Autodiff<Flex, C>>::new;
    match BatchNormBackward.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let (xp, gp) = (contiguous(x.into_primitive()), contiguous(gamma.into_primitive()));
            let (r, arg) = forward(xp.clone(), gp.clone(), beta.into_primitive());
            let state = (xp, gp, values(&r.mean).to_vec(), values(&r.variance).to_vec(), epsilon, arg);
            BatchNormOut {
                output: prep.finish(state, r.output),
                mean: constant(r.mean),
                variance: constant(r.variance),
            }
        }
        OpsKind::UnTracked(prep) => {
            let (r, _) = forward(x.into_primitive(), gamma.into_primitive(), beta.into_primitive());
            BatchNormOut { output: prep.finish(r.output), mean: constant(r.mean), variance: constant(r.variance) }
        }
    }
}

#[derive(Debug)]
struct PoolBackward;

impl Backward<Flex, 1> for PoolBackward {
    /// Where each output's gradient goes, and the input's `[n, c, h, w]`.
    type State = (Arc<Vec<u8>>, [usize; 4]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let (arg, [n, c, h, w]) = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let grad = contiguous(grad);
            tensor(max_pool2_relu_backward(values(&grad), &arg, n * c, h, w), Shape::new([n, c, h, w]))
        });
    }
}

#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 2> for ConvBackward {
    /// The input, the weight and the shape.
    type State = (FlexTensor, FlexTensor, ConvShape);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_weight] = ops.parents;
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let (x, weight, s) = ops.state;
        let (dx, dw) =
            conv2d_backward(values(&grad), values(&x), values(&weight), &s, node_x.is_some(), node_weight.is_some());
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, tensor(dx, Shape::new([s.n, s.c, s.h, s.w])));
        }
        if let (Some(node), Some(dw)) = (node_weight, dw) {
            grads.register::<Flex>(node.id, tensor(dw, Shape::new([s.c_out, s.c, s.kh, s.kw])));
        }
    }
}

#[derive(Debug)]
struct BlockBackward;

impl Backward<Flex, 4> for BlockBackward {
    /// The input, the weight, gamma, the convolution's shape, what the
    /// forward kept and epsilon.
    type State = (FlexTensor, FlexTensor, FlexTensor, ConvShape, Arc<BlockState>, f64);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_weight, node_gamma, node_beta] = ops.parents;
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let (x, weight, gamma, s, state, epsilon) = ops.state;
        let (dx, dw, dgamma, dbeta) = conv_bn_pool2_relu_backward(
            values(&grad),
            &state,
            values(&x),
            values(&weight),
            &s,
            values(&gamma),
            epsilon,
            node_x.is_some(),
            node_weight.is_some(),
        );
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, tensor(dx, Shape::new([s.n, s.c, s.h, s.w])));
        }
        if let (Some(node), Some(dw)) = (node_weight, dw) {
            grads.register::<Flex>(node.id, tensor(dw, Shape::new([s.c_out, s.c, s.kh, s.kw])));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, tensor(dgamma, Shape::new([s.c_out])));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, tensor(dbeta, Shape::new([s.c_out])));
        }
    }
}

impl<C: CheckpointStrategy> CpuLayers for Autodiff<Flex, C> {
    fn cpu_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> BatchNormOut<Self> {
        if !is_f32(x.primitive()) {
            let r = <Self as ModuleOps<Self>>::batch_norm_train(x, gamma, beta, epsilon);
            return BatchNormOut { output: r.output, mean: r.mean, variance: r.variance };
        }
        batch_norm_tracked::<C>(x, gamma, beta, epsilon, false)
    }

    fn cpu_batch_norm_eval(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        // Rare on an autodiff device (a frozen layer): Burn's differentiable
        // composition is correct for every input that may be tracked.
        <Self as ModuleOps<Self>>::batch_norm(x, gamma, beta, mean, variance, epsilon)
    }

    fn cpu_batch_norm_pool2_relu_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> BatchNormOut<Self> {
        if !is_f32(x.primitive()) {
            let r = <Self as ModuleOps<Self>>::batch_norm_train(x, gamma, beta, epsilon);
            return BatchNormOut { output: burn_pool2_relu::<Self>(r.output), mean: r.mean, variance: r.variance };
        }
        batch_norm_tracked::<C>(x, gamma, beta, epsilon, true)
    }

    fn cpu_batch_norm_pool2_relu_eval(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        // As for batch norm alone: Burn's differentiable composition.
        burn_pool2_relu::<Self>(<Self as ModuleOps<Self>>::batch_norm(x, gamma, beta, mean, variance, epsilon))
    }

    fn cpu_conv_bn_pool2_relu_train(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        [stride, pad]: [[usize; 2]; 2],
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> BatchNormOut<Self> {
        if !is_f32(x.primitive()) || !is_f32(weight.primitive()) {
            let y = Self::cpu_conv2d(x, weight, stride[0], stride[1], pad[0], pad[1]);
            return Self::cpu_batch_norm_pool2_relu_train(y, gamma, beta, epsilon);
        }
        let constant = FloatTensor::<Self>::new;
        let nodes = [x.node(), weight.node(), gamma.node(), beta.node()];
        match BlockBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (w, g) = (contiguous(weight.into_primitive()), contiguous(gamma.into_primitive()));
                let (r, kept) = block_forward(
                    x.into_primitive(),
                    w.clone(),
                    stride,
                    pad,
                    g.clone(),
                    beta.into_primitive(),
                    epsilon,
                );
                let (x, s, state) = kept.expect("f32 inputs run our kernel");
                let output = prep.finish((x, w, g, s, Arc::new(state), epsilon), r.output);
                BatchNormOut { output, mean: constant(r.mean), variance: constant(r.variance) }
            }
            OpsKind::UnTracked(prep) => {
                let (x, w, g, b) =
                    (x.into_primitive(), weight.into_primitive(), gamma.into_primitive(), beta.into_primitive());
                let (r, _) = block_forward(x, w, stride, pad, g, b, epsilon);
                BatchNormOut { output: prep.finish(r.output), mean: constant(r.mean), variance: constant(r.variance) }
            }
        }
    }

    fn cpu_conv_bn_pool2_relu_eval(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        [[sh, sw], [ph, pw]]: [[usize; 2]; 2],
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        // The two differentiable steps (a frozen block on an autodiff device).
        let y = Self::cpu_conv2d(x, weight, sh, sw, ph, pw);
        Self::cpu_batch_norm_pool2_relu_eval(y, gamma, beta, mean, variance, epsilon)
    }

    fn cpu_max_pool2_relu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if !is_f32(x.primitive()) {
            return burn_pool2_relu::<Self>(x);
        }
        let input = x.primitive().shape().dims::<4>();
        match PoolBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (out, arg) = pool_forward(x.into_primitive());
                let arg = arg.expect("an f32 input pools with our kernel");
                prep.finish((arg, input), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(pool_forward(x.into_primitive()).0),
        }
    }

    fn cpu_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        sh: usize,
        sw: usize,
        ph: usize,
        pw: usize,
    ) -> FloatTensor<Self> {
        if !is_f32(x.primitive()) || !is_f32(weight.primitive()) {
            let options = ConvOptions::new([sh, sw], [ph, pw], [1, 1], 1);
            return <Self as ModuleOps<Self>>::conv2d(x, weight, None, options);
        }
        match ConvBackward.prepare::<C>([x.node(), weight.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let w = contiguous(weight.into_primitive());
                let (out, kept) = conv_forward(x.into_primitive(), w.clone(), [sh, sw], [ph, pw]);
                let (x, s) = kept.expect("f32 inputs convolve with our kernel");
                prep.finish((x, w, s), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(conv_forward(x.into_primitive(), weight.into_primitive(), [sh, sw], [ph, pw]).0)
            }
        }
    }
}
