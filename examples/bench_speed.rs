//! Speed benchmark of h2e's small CNN (the stage-A backbone), the Rust side
//! of `benches/speed.sh`: images/s of a training step (batch 128, 1x28x28,
//! forward + cross-entropy + backward + SGD momentum 0.9 / weight decay
//! 5e-4) and of inference (batch 512, validation mode), median of several
//! runs after warm-up, for each backend available here. Prints one JSON
//! object; peak RSS is the process's high-water mark.
//!
//! ```text
//! cargo run --release --example bench_speed -- [warmup] [steps] [runs] [--wgpu]
//! ```
//! `--wgpu` adds the wgpu backend (on software Vulkan it is very slow, so
//! it is opt-in there; a hardware adapter is always included).

use std::time::Instant;

use burn::module::Module;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{decay::WeightDecayConfig, GradientsParams, SgdConfig};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use h2e::model::{BackboneKind, Net};
use h2e::train::cross_entropy;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

fn rates(warmup: usize, steps: usize, runs: usize, batch: usize, device: &Device, mut step: impl FnMut()) -> Vec<f64> {
    for _ in 0..warmup {
        step();
    }
    device.sync().expect("sync");
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..steps {
                step();
            }
            device.sync().expect("sync");
            (batch * steps) as f64 / t.elapsed().as_secs_f64()
        })
        .collect()
}

fn bench(name: &str, device: Device, warmup: usize, steps: usize, runs: usize) -> serde_json::Value {
    let ad = device.clone().autodiff();
    ad.seed(0);
    let mut model = Net::new(BackboneKind::SmallCnn, 1, 28, 10, &ad);
    let mut optim = SgdConfig::new()
        .with_momentum(Some(MomentumConfig::new().with_momentum(0.9).with_dampening(0.0)))
        .with_weight_decay(Some(WeightDecayConfig::new(5e-4)))
        .init();
    let x = Tensor::<4>::random([128, 1, 28, 28], Distribution::Normal(0.0, 1.0), &ad);
    let labels: Vec<i64> = (0..128).map(|i| (i % 10) as i64).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [128]), &ad);
    let train = rates(warmup, steps, runs, 128, &ad, || {
        let loss = cross_entropy(model.forward(x.clone()), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(0.01, model.clone(), grads);
    });
    let valid = model.valid();
    let xi = Tensor::<4>::random([512, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
    let infer = rates(warmup.min(10), steps.min(10), runs, 512, &device, || {
        let _ = valid.forward(xi.clone());
    });
    serde_json::json!({
        "backend": name,
        "train_img_s": median(train.clone()),
        "train_runs": train,
        "infer_img_s": median(infer.clone()),
        "infer_runs": infer,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let with_wgpu = args.iter().any(|a| a == "--wgpu");
    let nums: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let (warmup, steps, runs) = match nums.as_slice() {
        [w, s, r, ..] => (*w, *s, *r),
        _ => (30, 20, 5),
    };
    let mut backends = vec![bench("cpu (flex)", Device::flex(), warmup, steps, runs)];
    match h2e::device::probe_wgpu() {
        Some((adapter, hardware)) if hardware || with_wgpu => {
            let (w, s) = if hardware { (warmup, steps) } else { (2, 2) };
            let mut r = bench("wgpu", Device::wgpu(Default::default()), w, s, runs.min(3));
            r["adapter"] = serde_json::json!(adapter);
            backends.push(r);
        }
        Some((adapter, _)) => eprintln!("skipping wgpu on the software adapter {adapter} (pass --wgpu to include it)"),
        None => eprintln!("no wgpu adapter"),
    }
    let out = serde_json::json!({
        "model": "small-cnn 1x28x28, 10 classes",
        "train_batch": 128,
        "infer_batch": 512,
        "warmup": warmup, "steps": steps, "runs": runs,
        "backends": backends,
        "peak_rss_mb": peak_rss_mb(),
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
}
