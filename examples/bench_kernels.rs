//! Throughput of the WGSL kernels against the plain paths, on the first
//! wgpu device (software Vulkan where there is no GPU).
//!
//! ```text
//! cargo run --release --example bench_kernels -- [batch] [side] [iters] [train_steps]
//! ```
//! Preprocessing: `batch` random `side x side x 3` images (sources of mixed
//! sizes around `side`) to `side x side` with crop/flip/jitter, as
//! images/s of (a) the GPU kernel (packed u8 upload + kernel) and (b) the
//! CPU reference + f32 upload, both ending with a device sync. Scoring:
//! 4096 x 100 logits, fused kernel vs tensor ops. Training: stage-A steps
//! of the small CNN on 28x28 images with each preprocessing path.

use std::time::Instant;

use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, DeviceType, Int, Tensor, TensorData};
use h2e::kernels::{self, PackedBatch, PreprocessParams};
use h2e::model::{BackboneKind, Net};
use h2e::rng::Rng;
use h2e::train::cross_entropy;

fn time<T>(iters: usize, device: &Device, mut f: impl FnMut(usize) -> T) -> f64 {
    let _warm = f(0);
    device.sync().expect("device sync");
    let start = Instant::now();
    for i in 0..iters {
        let out = f(i + 1);
        drop(out);
    }
    device.sync().expect("device sync");
    start.elapsed().as_secs_f64() / iters as f64
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let batch_size = args.first().copied().unwrap_or(128);
    let side = args.get(1).copied().unwrap_or(32) as u32;
    let iters = args.get(2).copied().unwrap_or(10);
    let Some(device) = Device::enumerate(DeviceType::Wgpu).into_iter().next() else {
        eprintln!("no wgpu adapter found");
        std::process::exit(1);
    };
    println!("device: {device:?}");

    let mut rng = Rng::new(1);
    let mut batch = PackedBatch::new(3).unwrap();
    for _ in 0..batch_size {
        let (w, h) = (side + rng.below(5) as u32, side + rng.below(5) as u32);
        let px: Vec<u8> = (0..(w * h * 3) as usize).map(|_| rng.below(256) as u8).collect();
        batch.push(w, h, &px).unwrap();
    }
    let params = |seed: usize| PreprocessParams {
        pad: 4,
        flip: true,
        brightness: 0.2,
        contrast: 0.2,
        seed: seed as u64,
        ..PreprocessParams::eval(side, side)
    };
    let gpu =
        time(iters, &device, |i| kernels::preprocess_wgsl(&device, &batch, &params(i)).unwrap().expect("kernel ran"));
    let cpu = time(iters, &device, |i| kernels::preprocess_cpu(&device, &batch, &params(i), None).unwrap());
    let cpu_only = time(iters, &device, |i| kernels::preprocess_reference(&batch, &params(i)).unwrap());
    println!("preprocess {batch_size} x {side}x{side}x3 (crop/flip/jitter), {iters} iterations:");
    println!("  WGSL kernel (u8 upload + kernel)     {:>10.0} images/s", batch_size as f64 / gpu);
    println!("  CPU reference + f32 upload           {:>10.0} images/s", batch_size as f64 / cpu);
    println!("  CPU reference alone (no upload)      {:>10.0} images/s", batch_size as f64 / cpu_only);

    let (n, classes) = (4096usize, 100usize);
    let logits: Vec<f32> = (0..n * classes).map(|_| rng.normal() as f32 * 3.0).collect();
    let labels: Vec<i64> = (0..n).map(|_| rng.below(classes) as i64).collect();
    let tau = vec![1.0f32; classes];
    let lp: Vec<f32> = (0..classes).map(|k| ((k + 1) as f32 / 5050.0).ln()).collect();
    let lt = Tensor::<2>::from_data(TensorData::new(logits, [n, classes]), &device);
    let yt = Tensor::<1, Int>::from_data(TensorData::new(labels, [n]), &device);
    let fused = time(iters, &device, |_| kernels::score_wgsl(&lt, &yt, &tau, &lp).unwrap().expect("kernel ran"));
    let ops = time(iters, &device, |_| kernels::score_tensor_ops(lt.clone(), yt.clone(), &tau, &lp).unwrap());
    println!("score {n} x {classes} logits, {iters} iterations:");
    println!("  WGSL fused kernel                    {:>10.0} samples/s", n as f64 / fused);
    println!("  tensor ops                           {:>10.0} samples/s", n as f64 / ops);

    // Stage-A training steps (small CNN, 1x28x28 from 28x28 u8 sources,
    // crop + flip, cross-entropy, SGD momentum) with each preprocessing path.
    let steps = args.get(3).copied().unwrap_or(3);
    let ad = device.clone().autodiff();
    let mut gray = PackedBatch::new(1).unwrap();
    for _ in 0..batch_size {
        let px: Vec<u8> = (0..28 * 28).map(|_| rng.below(256) as u8).collect();
        gray.push(28, 28, &px).unwrap();
    }
    let labels: Vec<i64> = (0..batch_size).map(|i| (i % 10) as i64).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch_size]), &ad);
    let p28 =
        |seed: usize| PreprocessParams { pad: 2, flip: true, seed: seed as u64, ..PreprocessParams::eval(28, 28) };
    let train = |wgsl: bool| {
        ad.seed(0);
        let mut model = Net::new(BackboneKind::SmallCnn, 1, 28, 10, &ad);
        let mut optim = SgdConfig::new().with_momentum(Some(MomentumConfig::new())).init();
        time(steps, &device, |i| {
            let x = if wgsl {
                kernels::preprocess_wgsl(&ad, &gray, &p28(i)).unwrap().expect("kernel ran")
            } else {
                kernels::preprocess_cpu(&ad, &gray, &p28(i), None).unwrap()
            };
            let loss = cross_entropy(model.forward(x), y.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(0.01, model.clone(), grads);
        })
    };
    let with_kernel = train(true);
    let with_cpu = train(false);
    println!("stage-A training step, batch {batch_size} x 1x28x28, {steps} steps:");
    println!(
        "  WGSL preprocess                      {:>10.2} steps/s ({:.0} images/s)",
        1.0 / with_kernel,
        batch_size as f64 / with_kernel
    );
    println!(
        "  CPU preprocess + upload              {:>10.2} steps/s ({:.0} images/s)",
        1.0 / with_cpu,
        batch_size as f64 / with_cpu
    );
}
