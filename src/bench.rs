//! The quality benchmark: H2E (every round) and every baseline on the same
//! noisy long-tailed draws, with the same backbone and schedule.
//!
//! [`grid`] lists the configurations of the issue "Benchmarks" (imbalance
//! 10 and 100, noise 0.2 and 0.4, kinds uniform / imb / sym / pair, plus
//! balanced data at noise 0.3 sym; seeds 0 and 1); [`quick_grid`] is a
//! single small draw that checks the harness works (its numbers are not
//! results). [`run`] builds each draw with [`crate::nlt::make_nlt`] into a
//! work folder (reused when already there), trains each method, and
//! returns one [`BenchRow`] per method and round.

use std::path::Path;
use std::time::Instant;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::bundle::BundleSource;
use crate::data::{load_train_test, Source};
use crate::error::{Error, Result};
use crate::metrics::{AccuracyMetrics, DetectionMetrics};
use crate::nlt::{make_nlt, NltConfig, NoiseKind};
use crate::progress::Progress;
use crate::train::{Engine, Method, TrainConfig};

/// A short name of a draw, e.g. `uniform-rho100-r0.3-s0`.
pub fn draw_name(d: &NltConfig) -> String {
    let kind = format!("{:?}", d.kind).to_lowercase();
    format!("{kind}-rho{}-r{}-s{}", d.imbalance, d.noise, d.seed)
}

/// The full grid of the issue "Benchmarks", for `seeds`.
pub fn grid(seeds: &[u64]) -> Vec<NltConfig> {
    let mut out = Vec::new();
    for &seed in seeds {
        for imbalance in [10.0, 100.0] {
            for noise in [0.2, 0.4] {
                for kind in [NoiseKind::Uniform, NoiseKind::Imb, NoiseKind::Sym, NoiseKind::Pair] {
                    out.push(NltConfig { imbalance, noise, kind, seed, ..NltConfig::default() });
                }
            }
        }
        out.push(NltConfig { imbalance: 1.0, noise: 0.3, kind: NoiseKind::Sym, seed, ..NltConfig::default() });
    }
    out
}

/// One small draw (300 head-class images, 20 test images per class).
pub fn quick_grid() -> Vec<NltConfig> {
    vec![NltConfig {
        imbalance: 10.0,
        noise: 0.3,
        kind: NoiseKind::Uniform,
        n_max: Some(300),
        test_per_class: Some(20),
        ..NltConfig::default()
    }]
}

/// A training budget small enough for [`quick_grid`].
pub fn quick_config() -> TrainConfig {
    TrainConfig { epochs: 2, identifier_epochs: 1, folds: 2, classifier_epochs: Some(1), ..TrainConfig::default() }
}

/// One result: a method (and round, for h2e) on one draw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchRow {
    /// The draw.
    pub draw: NltConfig,
    /// The method.
    pub method: Method,
    /// Round (1 for the baselines).
    pub round: usize,
    /// Operating point of the h2e flags (`None`: the method's own rule).
    pub operating_point: Option<String>,
    /// Noise detection against the ground truth.
    pub detection: DetectionMetrics,
    /// Stage-2 classifier on the clean test split (final round only).
    pub classifier: Option<AccuracyMetrics>,
    /// The plain network's test accuracy, as is and with post-hoc logit
    /// adjustment (final round only).
    pub reference: Option<crate::train::ReferenceAccuracy>,
    /// Wall time of the whole method run in seconds.
    pub seconds: f64,
    /// Backend.
    pub backend: String,
}

/// Runs every method of `methods` on every draw, making the draws from
/// `source` into `work` (a folder; bundles already there are reused).
/// `on_row` sees each row as soon as it exists.
#[allow(clippy::too_many_arguments)]
pub fn run(
    source: &dyn Source,
    draws: &[NltConfig],
    methods: &[Method],
    base: &TrainConfig,
    work: &Path,
    device: &Device,
    backend: &str,
    progress: &dyn Progress,
    on_row: &mut dyn FnMut(&BenchRow),
) -> Result<Vec<BenchRow>> {
    std::fs::create_dir_all(work).map_err(|e| Error::io("creating", work, e))?;
    let mut rows = Vec::new();
    for draw in draws {
        let path = work.join(format!("{}.zip", draw_name(draw)));
        if !path.exists() {
            make_nlt(source, draw, &path, &mut |_, _| {})?;
        }
        let bundle = BundleSource::open(&path)?;
        let (train, test) = load_train_test(&bundle, base.input_size, &mut |_, _, _| {})?;
        for &method in methods {
            let cfg = TrainConfig { method, seed: draw.seed, ..base.clone() };
            let t = Instant::now();
            let trained = Engine::new(device.clone(), cfg, &train, progress)?.run(&train, test.as_ref(), backend)?;
            let seconds = t.elapsed().as_secs_f64();
            let last = trained.report.rounds.len();
            for r in &trained.report.rounds {
                let Some(detection) = r.metrics.clone() else { continue };
                let mut variants = vec![(None, detection)];
                variants.extend(r.operating_points.iter().map(|(name, m)| (Some(name.clone()), m.clone())));
                for (operating_point, detection) in variants {
                    let row = BenchRow {
                        draw: draw.clone(),
                        method,
                        round: r.round,
                        operating_point,
                        detection,
                        classifier: if r.round == last { trained.report.classifier.clone() } else { None },
                        reference: if r.round == last { trained.report.reference.clone() } else { None },
                        seconds,
                        backend: backend.to_string(),
                    };
                    on_row(&row);
                    rows.push(row);
                }
            }
        }
    }
    Ok(rows)
}

/// A markdown table of `rows`.
pub fn table(rows: &[BenchRow]) -> String {
    let mut s = String::from(
        "| draw | method | operating point | round | P | R | F1 | F1 head | F1 tail | AUROC | flagged / noisy | bal. acc | few-shot acc | plain / post-hoc LA bal. acc | s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
    for r in rows {
        let d = &r.detection;
        s += &format!(
            "| {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} / {} | {} | {} | {} / {} | {:.0} |\n",
            draw_name(&r.draw),
            r.method.as_str(),
            r.operating_point.as_deref().unwrap_or("default"),
            r.round,
            d.precision,
            d.recall,
            d.f1,
            d.head.f1,
            d.tail.f1,
            f(d.auroc),
            d.flagged,
            d.noisy,
            f(r.classifier.as_ref().map(|c| c.balanced_accuracy)),
            f(r.classifier.as_ref().and_then(|c| c.few_shot)),
            f(r.reference.as_ref().map(|c| c.ce.balanced_accuracy)),
            f(r.reference.as_ref().map(|c| c.ce_post_hoc_la.balanced_accuracy)),
            r.seconds
        );
    }
    s
}

/// One backend's result in the speed benchmark ([`speed`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeedResult {
    /// Backend name, e.g. `cpu (flex)` or `wgpu`.
    pub backend: String,
    /// The device, in words (e.g. the wgpu adapter).
    pub device: String,
    /// Median images/s of the training step over the timed runs.
    pub train_img_s: f64,
    /// Images/s of each timed training run.
    pub train_runs: Vec<f64>,
    /// Median images/s of inference.
    pub infer_img_s: f64,
    /// Images/s of each timed inference run.
    pub infer_runs: Vec<f64>,
}

/// Training batch of the speed benchmark.
pub const SPEED_TRAIN_BATCH: usize = 128;
/// Inference batch of the speed benchmark.
pub const SPEED_INFER_BATCH: usize = 512;

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rates(
    warmup: usize,
    steps: usize,
    runs: usize,
    batch: usize,
    device: &Device,
    step: &mut dyn FnMut(),
) -> Result<Vec<f64>> {
    let sync = |d: &Device| d.sync().map_err(|e| Error::Train(format!("synchronising the device: {e:?}")));
    for _ in 0..warmup {
        step();
    }
    sync(device)?;
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        for _ in 0..steps {
            step();
        }
        sync(device)?;
        out.push((batch * steps) as f64 / t.elapsed().as_secs_f64());
    }
    Ok(out)
}

/// The speed benchmark of the issue "Benchmarks" on one device: images/s of
/// the stage-A training step of the small CNN (batch 128, 1x28x28: forward,
/// cross-entropy, backward and SGD momentum 0.9 / weight decay 5e-4) and
/// of inference (batch 512, validation mode), `runs` timed runs of `steps`
/// steps each after `warmup` steps (inference: at most 10 of each), with a
/// device synchronisation closing every run. `benches/pytorch_speed.py` is
/// the same model and step in PyTorch.
pub fn speed(
    backend: &str,
    description: &str,
    device: &Device,
    warmup: usize,
    steps: usize,
    runs: usize,
) -> Result<SpeedResult> {
    use crate::model::{BackboneKind, Net};
    use burn::module::Module;
    use burn::optim::decay::WeightDecayConfig;
    use burn::optim::momentum::MomentumConfig;
    use burn::optim::{GradientsParams, SgdConfig};
    use burn::tensor::{Distribution, Int, Tensor, TensorData};
    if steps == 0 || runs == 0 {
        return Err(Error::Argument("the speed benchmark needs at least one step and one run".into()));
    }
    let ad = device.clone().autodiff();
    ad.seed(0);
    let mut model = Net::new(BackboneKind::SmallCnn, 1, 28, 10, &ad);
    let mut optim = SgdConfig::new()
        .with_momentum(Some(MomentumConfig::new().with_momentum(0.9).with_dampening(0.0)))
        .with_weight_decay(Some(WeightDecayConfig::new(5e-4)))
        .init();
    let b = SPEED_TRAIN_BATCH;
    let x = Tensor::<4>::random([b, 1, 28, 28], Distribution::Normal(0.0, 1.0), &ad);
    let labels: Vec<i64> = (0..b).map(|i| (i % 10) as i64).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [b]), &ad);
    let train = rates(warmup, steps, runs, b, &ad, &mut || {
        let loss = crate::train::cross_entropy(model.forward(x.clone()), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(0.01, model.clone(), grads);
    })?;
    let valid = model.valid();
    let xi = Tensor::<4>::random([SPEED_INFER_BATCH, 1, 28, 28], Distribution::Normal(0.0, 1.0), device);
    let infer = rates(warmup.min(10), steps.min(10), runs, SPEED_INFER_BATCH, device, &mut || {
        let _ = valid.forward(xi.clone());
    })?;
    Ok(SpeedResult {
        backend: backend.to_string(),
        device: description.to_string(),
        train_img_s: median(&train),
        train_runs: train,
        infer_img_s: median(&infer),
        infer_runs: infer,
    })
}

/// The process's peak resident memory in MiB (`VmHWM`; `None` where
/// `/proc` does not say).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<f64>().ok().map(|kb| kb / 1024.0)
}
