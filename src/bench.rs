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
    vec![NltConfig { imbalance: 10.0, noise: 0.3, kind: NoiseKind::Uniform, n_max: Some(300), test_per_class: Some(20), ..NltConfig::default() }]
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
