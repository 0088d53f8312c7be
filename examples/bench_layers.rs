//! Where the CPU training step of the small CNN spends its time: forward +
//! backward of each layer alone, at the shapes of `h2e bench speed`
//! (batch 128, 1x28x28), on Burn's `flex` backend.
//!
//! ```text
//! cargo run --release --example bench_layers -- [batch] [iters]
//! ```
//! Prints milliseconds per forward and per forward + backward for every
//! conv, batch norm and max pooling + ReLU of the network as the model runs
//! them (through our kernels in `h2e::kernels::cpu`), Burn's own layers
//! beside them, and the sums of ours.

use std::time::Instant;

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
    // Forward alone, then forward + backward (from a sum) of `layer`.
    let mut measure = |name: String, layer: &dyn Fn() -> Tensor<4>| {
        let fwd = time(iters, &ad, || {
            let _ = layer();
        });
        let both = time(iters, &ad, || {
            let _ = layer().sum().backward();
        });
        println!("{name:<32} fwd {fwd:8.2} ms   fwd+bwd {both:8.2} ms");
        if !name.starts_with("  burn") {
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
        let y = Tensor::<4>::random([n, cout, side, side], Distribution::Normal(0.0, 1.0), &ad).require_grad();
        measure(format!("batch norm {cout} @{side}"), &|| cpu::batch_norm(&bn, y.clone()));
        measure(format!("  burn's batch norm {cout} @{side}"), &|| bn.forward(y.clone()));

        let pool = MaxPool2dConfig::new([2, 2]).init();
        measure(format!("max pool 2 + relu {cout} @{side}"), &|| cpu::max_pool2_relu(&pool, y.clone()));
        measure(format!("  burn's max pool + relu {cout} @{side}"), &|| relu(pool.forward(y.clone())));
    }
    println!("{:<28} fwd {:8.2} ms   fwd+bwd {:8.2} ms (each backward includes a sum)", "total", total.0, total.1);
}
