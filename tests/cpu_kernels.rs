//! Our CPU kernels (`h2e::kernels::cpu`) against Burn's own layers on the
//! same `flex` device: values, gradients and running statistics.

use burn::backend::Dispatch;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::MaxPool2dConfig;
use burn::nn::{BatchNormConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Distribution, Tensor};
use h2e::kernels::cpu::{self, CpuLayers};

fn flex() -> Device {
    Device::flex()
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// Largest `|a - b| / max(1, |b|)`.
fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / y.abs().max(1.0)).fold(0.0, f32::max)
}

fn close(a: Vec<f32>, b: Vec<f32>, tol: f32, what: &str) {
    let d = max_rel_diff(&a, &b);
    assert!(d <= tol, "{what}: largest relative difference {d} > {tol}");
}

/// An input that is not centred and not of unit scale, so that the
/// statistics matter.
fn input(shape: [usize; 4], seed: u64, device: &Device) -> Tensor<4> {
    device.seed(seed);
    Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), device).mul_scalar(3.0).add_scalar(1.5)
}

#[test]
fn batch_norm_training_matches_burn_in_values_and_gradients() {
    let ad = flex().autodiff();
    for (k, shape) in [[8, 4, 6, 6], [5, 3, 7, 7], [2, 16, 1, 1], [3, 2, 5, 9]].into_iter().enumerate() {
        let c = shape[1];
        let x = input(shape, k as u64, &ad);
        let gamma = Tensor::<1>::random([c], Distribution::Uniform(0.5, 1.5), &ad);
        let beta = Tensor::<1>::random([c], Distribution::Normal(0.0, 1.0), &ad);
        // A weighting of the output so that the gradient is not uniform.
        let weight = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &ad);
        let run = |ours: bool| {
            let (x, g, b) = (x.clone().require_grad(), gamma.clone().require_grad(), beta.clone().require_grad());
            let (y, mean, var) = if ours {
                let r = <Dispatch as CpuLayers>::cpu_batch_norm_train(
                    x.clone().into_dispatch(),
                    g.clone().into_dispatch(),
                    b.clone().into_dispatch(),
                    1e-5,
                );
                (
                    Tensor::<4>::from_dispatch(r.output),
                    Tensor::<1>::from_dispatch(r.mean),
                    Tensor::<1>::from_dispatch(r.variance),
                )
            } else {
                let r = burn::tensor::module::batch_norm_train(x.clone(), g.clone(), b.clone(), 1e-5);
                (r.output, r.mean, r.variance)
            };
            let grads = (y.clone() * weight.clone()).sum().backward();
            let gx = values(x.grad(&grads).unwrap());
            let gg = values(g.grad(&grads).unwrap());
            let gb = values(b.grad(&grads).unwrap());
            (values(y), values(mean), values(var), gx, gg, gb)
        };
        let ours = run(true);
        let burn = run(false);
        let what = |s: &str| format!("case {k} {shape:?}: {s}");
        close(ours.0, burn.0, 1e-5, &what("output"));
        close(ours.1, burn.1, 1e-5, &what("mean"));
        close(ours.2, burn.2, 1e-5, &what("variance"));
        close(ours.3, burn.3, 1e-5, &what("input gradient"));
        close(ours.4, burn.4, 1e-5, &what("gamma gradient"));
        close(ours.5, burn.5, 1e-5, &what("beta gradient"));
    }
}

#[test]
fn batch_norm_layer_updates_running_statistics_like_burns() {
    let ad = flex().autodiff();
    let ours = BatchNormConfig::new(3).with_momentum(0.25).init(&ad);
    let burn = BatchNormConfig::new(3).with_momentum(0.25).init(&ad);
    for step in 0..3 {
        let x = input([6, 3, 5, 5], 10 + step, &ad);
        let before = cpu::launches();
        let out = cpu::batch_norm(&ours, x.clone());
        assert!(cpu::launches() > before, "the layer did not run our kernel");
        close(values(out), values(burn.forward(x)), 1e-5, "training output");
    }
    let (ours_mean, burn_mean) = (values(ours.running_mean.value()), values(burn.running_mean.value()));
    let (ours_var, burn_var) = (values(ours.running_var.value()), values(burn.running_var.value()));
    // Three steps moved the running statistics away from their start (0, 1).
    assert!(burn_mean.iter().all(|m| m.abs() > 0.3), "running mean did not move: {burn_mean:?}");
    close(ours_mean, burn_mean, 1e-5, "running mean");
    close(ours_var, burn_var, 1e-5, "running variance");

    // Inference (a plain device, or a layer in validation mode) uses them.
    let valid_ours = ours.valid();
    let valid_burn = burn.valid();
    let x = input([4, 3, 6, 6], 20, &flex());
    let before = cpu::launches();
    let a = values(cpu::batch_norm(&valid_ours, x.clone()));
    assert!(cpu::launches() > before, "inference did not run our kernel");
    let b = values(valid_burn.forward(x));
    close(a, b, 1e-5, "inference output");
}

#[test]
#[should_panic(expected = "axis 1 expected 3, got 4")]
fn batch_norm_of_the_wrong_width_panics_as_burns_layer_does() {
    // A library caller's programming error: Burn's shape check, not an
    // index out of bounds inside our kernel.
    let bn = BatchNormConfig::new(3).init(&flex());
    let _ = cpu::batch_norm(&bn, input([2, 4, 3, 3], 0, &flex()));
}

#[test]
fn max_pool_relu_matches_burn_in_values_and_gradients() {
    let ad = flex().autodiff();
    let pool = MaxPool2dConfig::new([2, 2]).init();
    // Even and odd sides (odd sides drop their last row / column), and a
    // side of 1 (no output).
    for (k, shape) in [[4, 3, 8, 8], [3, 5, 7, 7], [2, 2, 5, 6], [2, 2, 1, 4]].into_iter().enumerate() {
        let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &ad);
        let out_shape = [shape[0], shape[1], shape[2] / 2, shape[3] / 2];
        let weight = Tensor::<4>::random(out_shape, Distribution::Normal(0.0, 1.0), &ad);
        let run = |ours: bool| {
            let x = x.clone().require_grad();
            let before = cpu::launches();
            let y = if ours { cpu::max_pool2_relu(&pool, x.clone()) } else { relu(pool.forward(x.clone())) };
            // (Other tests run beside this one, so only the increase is checked.)
            assert!(!ours || cpu::launches() > before, "case {k}: our kernel did not run");
            assert_eq!(y.dims(), out_shape, "case {k}: output shape");
            let grads = (y.clone() * weight.clone()).sum().add_scalar(0.0).backward();
            (values(y), x.grad(&grads).map(values))
        };
        let (ours, burn) = (run(true), run(false));
        assert_eq!(ours.0, burn.0, "case {k} {shape:?}: output");
        if out_shape[2] * out_shape[3] > 0 {
            let (a, b) = (ours.1.unwrap(), burn.1.unwrap());
            assert_eq!(a, b, "case {k} {shape:?}: input gradient");
            // ReLU clipped some outputs: their windows get no gradient.
            assert!(a.iter().filter(|g| **g != 0.0).count() < a.len() / 4, "case {k}: too many gradients");
        }
        // Without autodiff, the same values.
        let plain = x.clone().inner();
        assert_eq!(values(cpu::max_pool2_relu(&pool, plain.clone())), values(relu(pool.forward(plain))), "case {k}");
    }
}

#[test]
fn a_pooling_the_kernel_does_not_cover_takes_burns_layer() {
    // ResNet's stem pooling: 3x3, stride 2, padding 1.
    let pool =
        MaxPool2dConfig::new([3, 3]).with_strides([2, 2]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init();
    let x = Tensor::<4>::random([2, 3, 9, 9], Distribution::Normal(0.0, 1.0), &flex());
    let out = cpu::max_pool2_relu(&pool, x.clone());
    assert_eq!(out.dims(), [2, 3, 5, 5]);
    assert_eq!(values(out), values(relu(pool.forward(x))));
}

#[test]
fn plain_kernels_match_a_direct_computation() {
    // 2 samples, 2 channels, 2x2: by hand.
    let x = [1.0f32, 2.0, 3.0, 4.0, -1.0, -2.0, -3.0, -4.0, 5.0, 6.0, 7.0, 8.0, 0.0, 0.0, 0.0, 8.0];
    let (mean, var) = cpu::batch_stats(&x, 2, 2, 4);
    assert_eq!(mean, vec![4.5, -0.25]);
    // Channel 0: 1..4 and 5..8, mean 4.5, biased variance 5.25.
    assert!((var[0] - 5.25).abs() < 1e-6, "{var:?}");
    let (out, arg) = cpu::max_pool2_relu_forward(&x, 4, 2, 2);
    assert_eq!(out, vec![4.0, 0.0, 8.0, 8.0]);
    let dx = cpu::max_pool2_relu_backward(&[1.0, 2.0, 3.0, 4.0], &arg, 4, 2, 2);
    // The second plane is all negative: ReLU stops its gradient.
    assert_eq!(dx, vec![0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 4.0]);
}

/// A plain convolution in `f64`, loop by loop: the output for `x` and
/// `w`, and the input and weight gradients for the output gradient `dy`.
#[allow(clippy::too_many_arguments)]
fn reference_conv(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    [n, c, h, wd]: [usize; 4],
    c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (oh, ow) = ((h + 2 * pad - k) / stride + 1, (wd + 2 * pad - k) / stride + 1);
    let mut y = vec![0f64; n * c_out * oh * ow];
    let mut dx = vec![0f64; x.len()];
    let mut dw = vec![0f64; w.len()];
    for ni in 0..n {
        for co in 0..c_out {
            for oy in 0..oh {
                for ox in 0..ow {
                    let yi = ((ni * c_out + co) * oh + oy) * ow + ox;
                    for ci in 0..c {
                        for ky in 0..k {
                            for kx in 0..k {
                                let (iy, ix) = (
                                    (oy * stride + ky) as isize - pad as isize,
                                    (ox * stride + kx) as isize - pad as isize,
                                );
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xi = ((ni * c + ci) * h + iy as usize) * wd + ix as usize;
                                let wi = ((co * c + ci) * k + ky) * k + kx;
                                y[yi] += x[xi] as f64 * w[wi] as f64;
                                dx[xi] += dy[yi] as f64 * w[wi] as f64;
                                dw[wi] += dy[yi] as f64 * x[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    (y, dx, dw)
}

/// Each `got` within `tol` of the reference `want`, relative to the sum of
/// the magnitudes of the terms that made it (`scale`), the bound of a
/// rounding error in a sum of products.
fn near(got: &[f32], want: &[f64], scale: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, ((&g, &r), &m)) in got.iter().zip(want).zip(scale).enumerate() {
        assert!((g as f64 - r).abs() <= tol * m.max(1e-3), "{what}: element {i} is {g}, the reference {r} (terms {m})");
    }
}

/// A `kernel x kernel` convolution without bias, as our backbones have.
fn square_conv(c_in: usize, c_out: usize, kernel: usize, stride: usize, pad: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([c_in, c_out], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .init(device)
}

#[test]
fn convolution_matches_burn_in_values_and_gradients() {
    let ad = flex().autodiff();
    // (input [n, c, h, w], c_out, kernel, stride, padding): the small CNN's
    // 3x3 layers, ResNet's strided 3x3, 1x1 shortcut and 7x7 stem, odd
    // sides, and a padding that is not k / 2.
    let cases = [
        ([4, 1, 9, 9], 5, 3, 1, 1),
        ([3, 6, 7, 7], 4, 3, 1, 1),
        ([2, 3, 10, 9], 4, 3, 2, 1),
        ([2, 4, 8, 8], 6, 1, 2, 0),
        ([2, 3, 16, 13], 4, 7, 2, 3),
        ([2, 2, 5, 5], 3, 3, 1, 0),
        ([1, 2, 3, 3], 2, 3, 1, 2),
        // Large enough that the kernel splits the batch into chunks of one
        // sample, and of two samples with a remainder of one (a chunk's
        // column matrix is kept near 256 Ki floats).
        ([3, 32, 28, 28], 4, 3, 1, 1),
        ([3, 16, 26, 26], 3, 3, 1, 1),
    ];
    for (k, (shape, c_out, kernel, stride, pad)) in cases.into_iter().enumerate() {
        ad.seed(100 + k as u64);
        let conv = square_conv(shape[1], c_out, kernel, stride, pad, &ad);
        let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &ad);
        let reference = conv.forward(x.clone());
        let weight = Tensor::<4>::random(reference.dims(), Distribution::Normal(0.0, 1.0), &ad);
        let run = |ours: bool| {
            let x = x.clone().require_grad();
            let before = cpu::launches();
            let y = if ours { cpu::conv2d(&conv, x.clone()) } else { conv.forward(x.clone()) };
            assert!(!ours || cpu::launches() > before, "case {k}: our kernel did not run");
            let grads = (y.clone() * weight.clone()).sum().backward();
            let gx = values(x.grad(&grads).unwrap());
            let gw = values(conv.weight.val().grad(&grads).unwrap());
            (y.dims(), values(y), gx, gw)
        };
        let (ours, burn) = (run(true), run(false));
        let what = |s: &str| format!("case {k} {shape:?} k{kernel} s{stride} p{pad}: {s}");
        assert_eq!(ours.0, burn.0, "{}", what("output shape"));
        // Both against the plain f64 reference, within rounding of f32 sums.
        let (xv, wv, dyv) = (values(x.clone()), values(conv.weight.val()), values(weight.clone()));
        let (y, dx, dw) = reference_conv(&xv, &wv, &dyv, shape, c_out, kernel, stride, pad);
        let abs = |v: &[f32]| v.iter().map(|a| a.abs()).collect::<Vec<f32>>();
        let (ys, dxs, dws) = reference_conv(&abs(&xv), &abs(&wv), &abs(&dyv), shape, c_out, kernel, stride, pad);
        for (name, got) in [("ours", &ours), ("burn's", &burn)] {
            near(&got.1, &y, &ys, 1e-6, &what(&format!("{name} output")));
            near(&got.2, &dx, &dxs, 1e-6, &what(&format!("{name} input gradient")));
            near(&got.3, &dw, &dws, 1e-6, &what(&format!("{name} weight gradient")));
        }
        // Inference on the plain device, the same values.
        let plain = x.clone().inner();
        let valid = conv.valid();
        close(values(cpu::conv2d(&valid, plain.clone())), values(valid.forward(plain)), 1e-5, &what("inference"));
    }
}

#[test]
fn convolution_of_an_untracked_input_gives_the_weight_its_gradient() {
    // The first layer's input needs no gradient: only the weight's is made.
    let ad = flex().autodiff();
    let conv = square_conv(1, 3, 3, 1, 1, &ad);
    let x = Tensor::<4>::random([2, 1, 6, 6], Distribution::Normal(0.0, 1.0), &ad);
    let ours = cpu::conv2d(&conv, x.clone()).sum().backward();
    let burn = conv.forward(x.clone()).sum().backward();
    assert!(x.grad(&ours).is_none());
    close(
        values(conv.weight.val().grad(&ours).unwrap()),
        values(conv.weight.val().grad(&burn).unwrap()),
        1e-5,
        "weight gradient",
    );
}

#[test]
fn convolution_with_a_bias_takes_burns_layer() {
    let conv = Conv2dConfig::new([2, 3], [3, 3]).init(&flex());
    let x = Tensor::<4>::random([1, 2, 5, 5], Distribution::Normal(0.0, 1.0), &flex());
    assert_eq!(values(cpu::conv2d(&conv, x.clone())), values(conv.forward(x)));
}

#[test]
fn convolution_gradients_do_not_depend_on_the_thread_count() {
    use h2e::kernels::cpu::{conv2d_backward, ConvShape};
    // Several chunks, so that the weight gradient is a sum of shares.
    let s = ConvShape { n: 6, c: 32, h: 20, w: 20, c_out: 8, kh: 3, kw: 3, stride: [1, 1], pad: [1, 1] };
    let mut rng = h2e::rng::Rng::new(7);
    let mut random = |len: usize| (0..len).map(|_| rng.below(2001) as f32 / 1000.0 - 1.0).collect::<Vec<f32>>();
    let (x, w, dy) = (random(6 * 32 * 400), random(8 * 32 * 9), random(6 * 8 * 400));
    let on = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| conv2d_backward(&dy, &x, &w, &s, true, true))
    };
    let one = on(1);
    for threads in [2, 3, 5] {
        assert_eq!(on(threads), one, "{threads} threads");
    }
}

/// Values and gradients of `relu(max_pool2(batch_norm_train(x)))`: through
/// our fused kernel (`fused`) or through our batch norm then our pooling.
fn bn_pool_run(fused: bool, x: &Tensor<4>, gamma: &Tensor<1>, beta: &Tensor<1>, weight: &Tensor<4>) -> [Vec<f32>; 6] {
    let (x, g, b) = (x.clone().require_grad(), gamma.clone().require_grad(), beta.clone().require_grad());
    let (xd, gd, bd) = (x.clone().into_dispatch(), g.clone().into_dispatch(), b.clone().into_dispatch());
    let before = cpu::launches();
    let r = if fused {
        <Dispatch as CpuLayers>::cpu_batch_norm_pool2_relu_train(xd, gd, bd, 1e-5)
    } else {
        let r = <Dispatch as CpuLayers>::cpu_batch_norm_train(xd, gd, bd, 1e-5);
        let output = <Dispatch as CpuLayers>::cpu_max_pool2_relu(r.output);
        cpu::BatchNormOut { output, ..r }
    };
    assert!(cpu::launches() > before, "our kernels did not run");
    let y = Tensor::<4>::from_dispatch(r.output);
    let grads = (y.clone() * weight.clone()).sum().backward();
    let grad = |t: Option<Tensor<4>>| t.map(values).unwrap_or_default();
    let gx = grad(x.grad(&grads));
    let gg = g.grad(&grads).map(values).unwrap_or_default();
    let gb = b.grad(&grads).map(values).unwrap_or_default();
    [values(y), values(Tensor::<1>::from_dispatch(r.mean)), values(Tensor::<1>::from_dispatch(r.variance)), gx, gg, gb]
}

#[test]
fn fused_batch_norm_pooling_relu_matches_the_unfused_kernels_bit_for_bit_and_burn() {
    let ad = flex().autodiff();
    let pool = MaxPool2dConfig::new([2, 2]).init();
    // Even and odd sides, sides whose planes are not a multiple of 8
    // elements, a 1 x 1 output, and no output at all.
    for (k, shape) in [[6, 4, 8, 8], [5, 3, 7, 7], [4, 2, 14, 14], [3, 5, 2, 2], [2, 3, 1, 5]].into_iter().enumerate() {
        let c = shape[1];
        let x = input(shape, 30 + k as u64, &ad);
        let gamma = Tensor::<1>::random([c], Distribution::Uniform(-1.5, 1.5), &ad);
        let beta = Tensor::<1>::random([c], Distribution::Normal(0.0, 1.0), &ad);
        let out_shape = [shape[0], c, shape[2] / 2, shape[3] / 2];
        let weight = Tensor::<4>::random(out_shape, Distribution::Normal(0.0, 1.0), &ad);
        let fused = bn_pool_run(true, &x, &gamma, &beta, &weight);
        let unfused = bn_pool_run(false, &x, &gamma, &beta, &weight);
        let names = ["output", "mean", "variance", "input gradient", "gamma gradient", "beta gradient"];
        for (name, (a, b)) in names.iter().zip(fused.iter().zip(&unfused)) {
            assert_eq!(a.len(), b.len(), "case {k} {shape:?}: {name} sizes");
            let differ: Vec<usize> = (0..a.len()).filter(|&i| a[i].to_bits() != b[i].to_bits()).collect();
            assert!(
                differ.is_empty(),
                "case {k} {shape:?}: {name} differs at {} elements, first {:?}",
                differ.len(),
                differ.first()
            );
        }
        assert_eq!(fused[0].len(), out_shape.iter().product::<usize>(), "case {k}: output size");
        // And Burn's own layers, to rounding.
        let (xb, gb, bb) = (x.clone().require_grad(), gamma.clone().require_grad(), beta.clone().require_grad());
        let r = burn::tensor::module::batch_norm_train(xb.clone(), gb.clone(), bb.clone(), 1e-5);
        let y = relu(pool.forward(r.output));
        let grads = (y.clone() * weight.clone()).sum().backward();
        close(fused[0].clone(), values(y), 1e-5, &format!("case {k}: output against Burn"));
        if out_shape[2] * out_shape[3] > 0 {
            close(fused[3].clone(), values(xb.grad(&grads).unwrap()), 1e-5, &format!("case {k}: dx against Burn"));
            close(fused[4].clone(), values(gb.grad(&grads).unwrap()), 1e-5, &format!("case {k}: dgamma against Burn"));
            close(fused[5].clone(), values(bb.grad(&grads).unwrap()), 1e-5, &format!("case {k}: dbeta against Burn"));
            // A negative gamma flips which element of a window is the
            // maximum: the gradient goes where the normalised maximum was.
            assert!(fused[3].iter().any(|g| *g != 0.0), "case {k}: no input gradient");
        }
    }
}

#[test]
fn fused_block_layer_trains_running_statistics_and_infers_like_burns_layers() {
    let ad = flex().autodiff();
    let pool = MaxPool2dConfig::new([2, 2]).init();
    let ours = BatchNormConfig::new(3).with_momentum(0.25).init(&ad);
    let burn = BatchNormConfig::new(3).with_momentum(0.25).init(&ad);
    for step in 0..3 {
        let x = input([6, 3, 6, 6], 40 + step, &ad);
        let before = cpu::launches();
        let out = cpu::batch_norm_pool2_relu(&ours, &pool, x.clone());
        assert!(cpu::launches() > before, "the block did not run our kernel");
        close(values(out), values(relu(pool.forward(burn.forward(x)))), 1e-5, "training output");
    }
    close(values(ours.running_mean.value()), values(burn.running_mean.value()), 1e-5, "running mean");
    close(values(ours.running_var.value()), values(burn.running_var.value()), 1e-5, "running variance");
    let (valid_ours, valid_burn) = (ours.valid(), burn.valid());
    let x = input([4, 3, 9, 8], 50, &flex());
    let before = cpu::launches();
    let a = values(cpu::batch_norm_pool2_relu(&valid_ours, &pool, x.clone()));
    assert!(cpu::launches() > before, "inference did not run our kernel");
    close(a, values(relu(pool.forward(valid_burn.forward(x.clone())))), 1e-5, "inference output");
    // A pooling the kernel does not cover: Burn's layers, the same values.
    let wide = MaxPool2dConfig::new([3, 3]).init();
    let a = values(cpu::batch_norm_pool2_relu(&valid_ours, &wide, x.clone()));
    close(a, values(relu(wide.forward(valid_burn.forward(x)))), 1e-5, "3x3 pooling");
}

#[test]
fn fused_inference_block_matches_the_unfused_kernels_bit_for_bit_and_burn() {
    let device = flex();
    let pool = MaxPool2dConfig::new([2, 2]).init();
    // (input, c_out, kernel, stride, padding): the small CNN's three blocks
    // at small batches, odd sides (the pooling drops a row and a column), a
    // strided and an unpadded convolution, a batch split into chunks with a
    // remainder, and an output too small to pool.
    let cases = [
        ([3, 1, 28, 28], 8, 3, 1, 1),
        ([2, 8, 14, 14], 16, 3, 1, 1),
        ([2, 16, 7, 7], 12, 3, 1, 1),
        ([2, 3, 11, 9], 5, 3, 2, 1),
        ([2, 2, 6, 6], 3, 3, 1, 0),
        ([3, 16, 26, 26], 3, 3, 1, 1),
        ([2, 2, 3, 3], 4, 3, 1, 0),
    ];
    for (k, (shape, c_out, kernel, stride, pad)) in cases.into_iter().enumerate() {
        device.seed(200 + k as u64);
        let conv = square_conv(shape[1], c_out, kernel, stride, pad, &device);
        // Trained-looking statistics and a gamma with both signs.
        let mut bn = BatchNormConfig::new(c_out).init(&device);
        bn.gamma = bn.gamma.map(|_| Tensor::<1>::random([c_out], Distribution::Uniform(-1.5, 1.5), &device));
        bn.beta = bn.beta.map(|_| Tensor::<1>::random([c_out], Distribution::Normal(0.0, 0.5), &device));
        bn.running_mean.update(Tensor::<1>::random([c_out], Distribution::Normal(0.0, 0.5), &device));
        bn.running_var.update(Tensor::<1>::random([c_out], Distribution::Uniform(0.5, 2.0), &device));
        let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let before = cpu::launches();
        let fused = values(cpu::conv_bn_pool2_relu(&conv, &bn, &pool, x.clone()));
        assert!(cpu::launches() > before, "case {k}: our kernel did not run");
        let unfused = values(cpu::batch_norm_pool2_relu(&bn, &pool, cpu::conv2d(&conv, x.clone())));
        assert_eq!(fused.len(), unfused.len(), "case {k}: sizes");
        let differ = fused.iter().zip(&unfused).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "case {k} {shape:?}: {differ} values differ from the unfused kernels");
        let burn = relu(pool.forward(bn.forward(conv.forward(x))));
        close(fused.clone(), values(burn), 1e-5, &format!("case {k} {shape:?}: against Burn"));
        if !fused.is_empty() {
            assert!(fused.iter().any(|v| *v > 0.0) && fused.contains(&0.0), "case {k}: ReLU had nothing to do");
        }
    }
}

/// The small CNN's block cases of the fused tests: (input, c_out, kernel,
/// stride, padding): its three blocks at small batches, odd sides (the
/// pooling drops a row and a column), a strided and an unpadded
/// convolution, a batch split into chunks with a remainder (the forward's
/// chunks and the backward's differing in the first layer's shape), and an
/// output too small to pool.
const BLOCK_CASES: [([usize; 4], usize, usize, usize, usize); 8] = [
    ([3, 1, 28, 28], 8, 3, 1, 1),
    ([12, 1, 28, 28], 32, 3, 1, 1),
    ([2, 8, 14, 14], 16, 3, 1, 1),
    ([2, 16, 7, 7], 12, 3, 1, 1),
    ([2, 3, 11, 9], 5, 3, 2, 1),
    ([2, 2, 6, 6], 3, 3, 1, 0),
    ([3, 16, 26, 26], 3, 3, 1, 1),
    ([2, 2, 3, 3], 4, 3, 1, 0),
];

/// Values and gradients of the small CNN's block in a training step
/// (`relu(max_pool2(batch_norm_train(conv2d(x, w))))`, the output weighted
/// by `out_weight` and summed): through our fused kernel (`fused`) or
/// through our convolution then our batch norm + pooling. `[output, mean,
/// variance, dx (empty when x is not tracked), dw, dgamma, dbeta]`.
fn block_run(fused: bool, x: &Tensor<4>, params: ([Tensor<4>; 2], [Tensor<1>; 2], [usize; 2])) -> [Vec<f32>; 7] {
    let ([w, out_weight], [gamma, beta], [stride, pad]) = params;
    let (w, g, b) = (w.require_grad(), gamma.require_grad(), beta.require_grad());
    let d = |t: &Tensor<4>| t.clone().into_dispatch();
    let before = cpu::launches();
    let r = if fused {
        let (gd, bd) = (g.clone().into_dispatch(), b.clone().into_dispatch());
        <Dispatch as CpuLayers>::cpu_conv_bn_pool2_relu_train(d(x), d(&w), [[stride; 2], [pad; 2]], gd, bd, 1e-5)
    } else {
        let y = <Dispatch as CpuLayers>::cpu_conv2d(d(x), d(&w), stride, stride, pad, pad);
        <Dispatch as CpuLayers>::cpu_batch_norm_pool2_relu_train(
            y,
            g.clone().into_dispatch(),
            b.clone().into_dispatch(),
            1e-5,
        )
    };
    assert!(cpu::launches() > before, "our kernels did not run");
    let out = Tensor::<4>::from_dispatch(r.output);
    let grads = (out.clone() * out_weight).sum().backward();
    let (mean, var) = (Tensor::<1>::from_dispatch(r.mean), Tensor::<1>::from_dispatch(r.variance));
    let dx = x.grad(&grads).map(values).unwrap_or_default();
    let dw = w.grad(&grads).map(values).unwrap_or_default();
    let dg = g.grad(&grads).map(values).unwrap_or_default();
    let db = b.grad(&grads).map(values).unwrap_or_default();
    [values(out), values(mean), values(var), dx, dw, dg, db]
}

#[test]
fn fused_training_block_matches_the_unfused_kernels_and_burn() {
    let ad = flex().autodiff();
    let pool = MaxPool2dConfig::new([2, 2]).init();
    for (k, (shape, c_out, kernel, stride, pad)) in BLOCK_CASES.into_iter().enumerate() {
        let conv = square_conv(shape[1], c_out, kernel, stride, pad, &ad);
        // The first case's input is the images (no gradient), as in the
        // small CNN's first block.
        let x = input(shape, 300 + k as u64, &ad);
        let x = if k == 0 { x } else { x.require_grad() };
        let gamma = Tensor::<1>::random([c_out], Distribution::Uniform(-1.5, 1.5), &ad);
        let beta = Tensor::<1>::random([c_out], Distribution::Normal(0.0, 1.0), &ad);
        let (oh, ow) = ((shape[2] + 2 * pad - kernel) / stride + 1, (shape[3] + 2 * pad - kernel) / stride + 1);
        let out_shape = [shape[0], c_out, oh / 2, ow / 2];
        let out_weight = Tensor::<4>::random(out_shape, Distribution::Normal(0.0, 1.0), &ad);
        let params = || ([conv.weight.val(), out_weight.clone()], [gamma.clone(), beta.clone()], [stride, pad]);
        let fused = block_run(true, &x, params());
        let unfused = block_run(false, &x, params());
        // The fused op sums the statistics channels last, so in another
        // order than the unfused kernels: the same to rounding.
        // (The weight gradient sums some 10^4 terms of both signs per element.)
        let names = ["output", "mean", "variance", "dx", "dweight", "dgamma", "dbeta"];
        let tolerances = [2e-5, 2e-5, 2e-5, 2e-4, 1e-3, 2e-4, 2e-4];
        for ((name, tol), (a, b)) in names.iter().zip(tolerances).zip(fused.iter().zip(&unfused)) {
            assert_eq!(a.len(), b.len(), "case {k} {shape:?}: {name} sizes");
            close(a.clone(), b.clone(), tol, &format!("case {k} {shape:?}: {name} against the unfused kernels"));
        }
        assert_eq!(fused[0].len(), out_shape.iter().product::<usize>(), "case {k}: output size");
        assert_eq!(fused[3].is_empty(), k == 0, "case {k}: an input gradient exactly when the input is tracked");
        // And Burn's own layers, to rounding.
        let (w, g, b) = (conv.weight.val().require_grad(), gamma.clone().require_grad(), beta.clone().require_grad());
        let options = burn::tensor::ops::ConvOptions::new([stride; 2], [pad; 2], [1, 1], 1);
        let y = burn::tensor::module::conv2d(x.clone(), w.clone(), None, options);
        let r = burn::tensor::module::batch_norm_train(y, g.clone(), b.clone(), 1e-5);
        let out = relu(pool.forward(r.output));
        let grads = (out.clone() * out_weight.clone()).sum().backward();
        close(fused[0].clone(), values(out), 1e-4, &format!("case {k}: output against Burn"));
        close(fused[1].clone(), values(r.mean), 1e-4, &format!("case {k}: mean against Burn"));
        close(fused[2].clone(), values(r.variance), 1e-4, &format!("case {k}: variance against Burn"));
        if out_shape[2] * out_shape[3] > 0 {
            if k > 0 {
                close(fused[3].clone(), values(x.grad(&grads).unwrap()), 1e-4, &format!("case {k}: dx against Burn"));
            }
            close(fused[4].clone(), values(w.grad(&grads).unwrap()), 1e-3, &format!("case {k}: dw against Burn"));
            close(fused[5].clone(), values(g.grad(&grads).unwrap()), 1e-4, &format!("case {k}: dgamma against Burn"));
            close(fused[6].clone(), values(b.grad(&grads).unwrap()), 1e-4, &format!("case {k}: dbeta against Burn"));
            assert!(fused[4].iter().any(|g| *g != 0.0), "case {k}: no weight gradient");
        }
    }
}

#[test]
fn fused_training_block_layer_does_not_depend_on_the_thread_count_and_matches_the_unfused_path() {
    // Through the layers, as the small CNN calls them: two training steps'
    // outputs, parameter gradients and running statistics, the fused op at
    // 1, 2 and 3 threads bit for bit, and against the convolution then
    // batch norm + pooling to rounding.
    let ad = flex().autodiff();
    let pool = MaxPool2dConfig::new([2, 2]).init();
    // The device's random numbers are shared with the tests running beside
    // this one, so the tensors made inside each run come from a generator
    // of our own.
    let fixed = |shape: [usize; 4], seed: u64| {
        let mut rng = h2e::rng::Rng::new(seed);
        let v: Vec<f32> = (0..shape.iter().product()).map(|_| rng.normal() as f32 * 3.0 + 1.5).collect();
        Tensor::<4>::from_data(burn::tensor::TensorData::new(v, shape), &ad)
    };
    let run = |fused: bool, threads: usize| {
        // Fresh layers each run (clones would share the running statistics).
        let mut conv = square_conv(8, 16, 3, 1, 1, &ad);
        conv.weight = conv.weight.map(|_| fixed([16, 8, 3, 3], 77).mul_scalar(0.05).require_grad());
        let bn = BatchNormConfig::new(16).with_momentum(0.25).init(&ad);
        let pool_threads = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool_threads.install(|| {
            let mut seen = Vec::new();
            for step in 0..2 {
                let x = fixed([5, 8, 12, 12], 90 + step).require_grad();
                let before = cpu::launches();
                let out = if fused {
                    cpu::conv_bn_pool2_relu(&conv, &bn, &pool, x.clone())
                } else {
                    cpu::batch_norm_pool2_relu(&bn, &pool, cpu::conv2d(&conv, x.clone()))
                };
                assert!(cpu::launches() > before, "our kernels did not run");
                let grads = (out.clone() * out.clone()).sum().backward();
                seen.push(values(out));
                seen.push(values(x.grad(&grads).unwrap()));
                seen.push(values(conv.weight.grad(&grads).unwrap()));
                seen.push(values(bn.gamma.grad(&grads).unwrap()));
                seen.push(values(bn.beta.grad(&grads).unwrap()));
            }
            seen.push(values(bn.running_mean.value()));
            seen.push(values(bn.running_var.value()));
            seen.into_iter().map(|v| v.into_iter().map(f32::to_bits).collect::<Vec<u32>>()).collect::<Vec<_>>()
        })
    };
    let fused = run(true, 2);
    let names = ["output", "dx", "dweight", "dgamma", "dbeta"];
    let name = |i: usize| names.get(i % 5).filter(|_| i < 10).copied().unwrap_or("running statistics");
    // Bit for bit whatever the threads do (chunks are summed in order).
    for (other, what) in [(run(true, 1), "one thread"), (run(true, 3), "three threads")] {
        for (i, (a, b)) in fused.iter().zip(&other).enumerate() {
            let differ = a.iter().zip(b).filter(|(u, v)| u != v).count();
            assert!(a.len() == b.len() && differ == 0, "{what}: {} ({i}) differs at {differ} elements", name(i));
        }
    }
    // And the convolution then batch norm + pooling, to rounding.
    let floats = |v: &Vec<u32>| v.iter().map(|&b| f32::from_bits(b)).collect::<Vec<f32>>();
    for (i, (a, b)) in fused.iter().zip(&run(false, 2)).enumerate() {
        let tol = if name(i) == "dweight" { 1e-3 } else { 2e-4 };
        close(floats(a), floats(b), tol, &format!("unfused: {} ({i})", name(i)));
    }
    // The running statistics moved from their initial zeros and ones.
    let mean = fused[fused.len() - 2].iter().map(|&b| f32::from_bits(b));
    assert!(mean.clone().any(|m| m.abs() > 1e-3), "running mean did not move");
}

#[test]
fn kernels_give_the_same_bits_with_and_without_avx2() {
    use h2e::kernels::cpu::{conv_bn_pool2_relu_backward, conv_bn_pool2_relu_train, ConvShape};
    // The small CNN's three block shapes (and an odd one) through the fused
    // op forward and backward, with the AVX2 build of the kernels (where
    // the CPU has it) and with the baseline build forced.
    let mut rng = h2e::rng::Rng::new(11);
    let mut random = |len: usize| (0..len).map(|_| rng.normal() as f32).collect::<Vec<f32>>();
    for (n, c, side, c_out) in [(12, 1, 28, 32), (4, 32, 14, 64), (9, 64, 7, 128), (3, 5, 9, 16)] {
        let s = ConvShape { n, c, h: side, w: side, c_out, kh: 3, kw: 3, stride: [1, 1], pad: [1, 1] };
        let (x, w) = (random(n * c * side * side), random(c_out * c * 9));
        let (gamma, beta) = (random(c_out), random(c_out));
        let g = random(n * c_out * (side / 2) * (side / 2));
        let run = || {
            let (out, state) = conv_bn_pool2_relu_train(&x, &w, &s, &gamma, &beta, 1e-5);
            let (dx, dw, dgamma, dbeta) = conv_bn_pool2_relu_backward(&g, &state, &x, &w, &s, &gamma, 1e-5, true, true);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
            [
                bits(&out),
                bits(&state.mean),
                bits(&state.var),
                bits(&dx.unwrap()),
                bits(&dw.unwrap()),
                bits(&dgamma),
                bits(&dbeta),
            ]
        };
        let wide = run();
        cpu::set_baseline_only(true);
        let baseline = run();
        cpu::set_baseline_only(false);
        assert_eq!(wide, baseline, "{s:?}: the two builds differ");
    }
}
