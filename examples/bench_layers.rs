//! Where the CPU training step of the small CNN spends its time: forward +
//! backward of each layer alone, at the shapes of `h2e bench speed`
//! (batch 128, 1x28x28), on Burn's `flex` backend.
//!
//! ```text
//! cargo run --release --example bench_layers -- [batch] [iters]
//! ```
//! Prints milliseconds per forward and per forward + backward of every
//! block of the network (conv, batch norm, 2x2 max pooling, ReLU) as the
//! model runs it (one fused kernel of `h2e::kernels::cpu`), of its layers
//! alone through our kernels and Burn's, and of our unfused kernels; the
//! inference blocks likewise; and the sums of the model's path.

use std::time::Instant;

use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::pool::MaxPool2dConfig;
use burn::nn::{BatchNormConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Distribution, Tensor};
use h2e::kernels::cpu;

fn time(iters: usize, device: &Device, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    device.sync().expect("device sync");
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    device.sync().expect("device sync");
    start.elapsed().as_secs_f64() * 1e3 / iters as f64
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let n = args.first().copied().unwrap_or(128);
    let iters = args.get(1).copied().unwrap_or(20);
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let shapes = [(1usize, 32usize, 28usize), (32, 64, 14), (64, 128, 7)];
    let mut total = (0.0, 0.0);
    let mut inference = 0.0;
    // Forward alone, then forward + backward (from a sum) of `layer`.
    let mut measure = |name: String, layer: &dyn Fn() -> Tensor<4>| {
        let fwd = time(iters, &ad, || {
            let _ = layer();
        });
        let both = time(iters, &ad, || {
            let _ = layer().sum().backward();
        });
        println!("{name:<32} fwd {fwd:8.2} ms   fwd+bwd {both:8.2} ms");
        if name.starts_with("training block") {
            total.0 += fwd;
            total.1 += both;
        }
    };
    for &(cin, cout, side) in &shapes {
        let conv = Conv2dConfig::new([cin, cout], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_bias(false)
            .init(&ad);
        // The first layer's input (the images) needs no gradient.
        let x = Tensor::<4>::random([n, cin, side, side], Distribution::Normal(0.0, 1.0), &ad);
        let x = if cin == 1 { x } else { x.require_grad() };
        measure(format!("conv {cin}->{cout} @{side}"), &|| cpu::conv2d(&conv, x.clone()));
        measure(format!("  burn's conv {cin}->{cout} @{side}"), &|| conv.forward(x.clone()));

        let bn = BatchNormConfig::new(cout).init(&ad);
        let pool = MaxPool2dConfig::new([2, 2]).init();
        let y = Tensor::<4>::random([n, cout, side, side], Distribution::Normal(0.0, 1.0), &ad).require_grad();
        measure(format!("bn + pool 2 + relu {cout} @{side}"), &|| cpu::batch_norm_pool2_relu(&bn, &pool, y.clone()));
        measure(format!("  burn's bn + pool + relu {cout} @{side}"), &|| relu(pool.forward(bn.forward(y.clone()))));
        // The two kernels the fused one replaces (ResNet still uses the
        // batch norm).
        measure(format!("  our bn, then pool 2 + relu {cout} @{side}"), &|| {
            cpu::max_pool2_relu(&pool, cpu::batch_norm(&bn, y.clone()))
        });
        // A training step's whole block in one kernel (the model's path),
        // and the convolution then batch norm + pooling.
        measure(format!("training block {cin}->{cout} @{side}"), &|| {
            cpu::conv_bn_pool2_relu(&conv, &bn, &pool, x.clone())
        });
        measure(format!("  conv, then bn + pool 2 + relu {cin}->{cout} @{side}"), &|| {
            cpu::batch_norm_pool2_relu(&bn, &pool, cpu::conv2d(&conv, x.clone()))
        });
        // Inference (a plain device): the whole block in one kernel, and
        // the convolution then the rest.
        let (conv, bn, xi) = (conv.valid(), bn.valid(), x.clone().inner());
        let fused = time(iters, &device, || {
            let _ = cpu::conv_bn_pool2_relu(&conv, &bn, &pool, xi.clone());
        });
        let apart = time(iters, &device, || {
            let _ = cpu::batch_norm_pool2_relu(&bn, &pool, cpu::conv2d(&conv, xi.clone()));
        });
        println!("inference block {cin}->{cout} @{side}: fused {fused:8.2} ms   conv, then the rest {apart:8.2} ms");
        inference += fused;
    }
    println!("inference, the three blocks: {inference:.2} ms");
    println!(
        "{:<28} fwd {:8.2} ms   fwd+bwd {:8.2} ms (each backward includes a sum)",
        "training, the three blocks", total.0, total.1
    );
}
