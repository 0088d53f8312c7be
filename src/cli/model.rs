//! `h2e train` and `h2e eval`.

use super::out::ReportFiles;
use super::term::TermProgress;
use anyhow::{bail, Context, Result};
use clap::Args;
use h2e::data::{load_train_test, open_source, Source, Split, TensorSet};
use h2e::device::{select, DeviceChoice};
use h2e::filter::FilterReport;
use h2e::identifier::Identifier;
use h2e::model::BackboneKind;
use h2e::score::{min_score_for, FloorExempt, OperatingPoint, Rule};
use h2e::train::{Engine, Method, TrainConfig};
use std::path::{Path, PathBuf};

/// `h2e train` flags.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Training data: a folder, a dataset bundle, an image list, or `fashion-mnist`.
    /// Omitted: the embedded default benchmark.
    pub data: Option<PathBuf>,
    /// Output identifier bundle.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Detector: h2e, ce, small-loss or confident-learning.
    #[arg(long, default_value = "h2e")]
    pub method: Method,
    /// Device: auto, wgpu, vulkan, metal, dx12, cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Backbone: small-cnn or resnet18 (default: by input size).
    #[arg(long)]
    pub backbone: Option<BackboneKind>,
    /// Square input size (default: the first training image's larger side).
    #[arg(long)]
    pub input_size: Option<usize>,
    /// Hard-to-easy rounds (h2e).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Backbone epochs per round.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Identifier (stage B) epochs per round.
    #[arg(long, default_value_t = 9)]
    pub identifier_epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Peak learning rate of the backbone (cosine schedule).
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
    /// Weight of the IRMv1 penalty.
    #[arg(long, default_value_t = 1.0)]
    pub irm_lambda: f64,
    /// Identifier heads per round, each on its own random batches; their
    /// average scores.
    #[arg(long, default_value_t = 1)]
    pub identifier_heads: usize,
    /// Folds for confident learning.
    #[arg(long, default_value_t = 4)]
    pub folds: usize,
    /// Also train the robust stage-2 classifier (needs a test split).
    #[arg(long)]
    pub classifier: bool,
    /// Stage-2 epochs (default: as many steps as --epochs over every sample take, the budget of the plain network it is compared with).
    #[arg(long)]
    pub classifier_epochs: Option<usize>,
    /// Where stage 2 starts: plain (the plain network, trained on every
    /// sample, which h2e trains as its first backbone anyway) or scratch
    /// (fresh weights, as before 2026-12-05).
    #[arg(long, default_value = "plain")]
    pub classifier_init: h2e::train::ClassifierInit,
    /// Flagging rule: agreement-noise-rate (agreement's flags capped per
    /// class at the estimated noisy count, except in classes estimated to be
    /// mostly noise from a systematic flip), agreement (the adjusted and the
    /// plain prediction both differ from the label), argmax (the adjusted
    /// prediction differs from the label, the paper's rule),
    /// confident-learning (per-class noise-rate estimates on the adjusted
    /// probabilities), noise-rate (argmax capped per class at the estimated
    /// noisy count) or threshold=T.
    #[arg(long, default_value = "agreement-noise-rate")]
    pub operating_point: Rule,
    /// Flag when the noise score reaches this value (same as --operating-point threshold=T).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Flag at most this fraction of the samples.
    #[arg(long)]
    pub max_flag_rate: Option<f32>,
    /// Keep at least this many samples of every class.
    #[arg(long, default_value_t = 1)]
    pub min_per_class: usize,
    /// Score floor on the final flags (the saved identifier's and stage 2's;
    /// rounds before the last drop flags without it): a flag also needs a
    /// noise score (1 - label_score) of at least this, except on both sides
    /// of a systematic flip that agreement-noise-rate finds (see
    /// --floor-exempt). Default: 0.9 with agreement-noise-rate, none with
    /// the other rules; 0 turns it off.
    #[arg(long)]
    pub min_score: Option<f32>,
    /// Which classes the score floor spares: any-flip (every class whose
    /// flags mostly point at one other class, whatever its estimated noise
    /// rate, and that class) or majority-flip (only such classes estimated
    /// to be mostly noise, and the classes they flip into).
    #[arg(long, default_value = "any-flip")]
    pub floor_exempt: FloorExempt,
    /// Which rounds' identifiers the score floor reads (h2e): last (the
    /// final round's noise score) or every (each sample's lowest noise
    /// score over all rounds; the final round never saw what round 1
    /// flagged). Only the training set's flags and stage 2 use it: the
    /// saved identifier holds the final round alone.
    #[arg(long, default_value = "last")]
    pub floor_rounds: h2e::score::FloorRounds,
    /// Score floor on the flags that remove samples between rounds (h2e;
    /// default: none, so round 1 removes every flag of the rule without
    /// its floor). The final flags keep --min-score.
    #[arg(long)]
    pub round_min_score: Option<f32>,
    /// Score each image together with its horizontal mirror (test-time
    /// augmentation; h2e): every round's flags and the saved identifier
    /// read the mean of the two. Use it only where a mirrored image keeps
    /// its class (not digits or text).
    #[arg(long)]
    pub tta_flip: bool,
    /// Which network decides the final flags (h2e): joint (the default:
    /// the stage-2 classifier decides, except in classes the identifier
    /// sees flipped, where it can only clear the identifier's flags; the
    /// saved identifier applies the same rule to new data, with both
    /// networks), identifier (the last round's invariant head alone, the
    /// method as published: no stage-2 network, about a quarter faster) or
    /// classifier (stage 2 alone, on the identifier's kept samples). Joint
    /// and classifier train stage 2 even without --classifier, report its
    /// scoring as one more round and ship it.
    #[arg(long, default_value = "joint")]
    pub scorer: h2e::train::Scorer,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the training set's report as CSV, in `h2e filter`'s columns
    /// (path,given_label,predicted_label,label_score,is_label_issue,error): the final round's
    /// flags, the ones the stage-2 classifier trains around.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Also write that report as JSON lines (the CSV's fields plus noise_score).
    #[arg(long)]
    pub jsonl: Option<PathBuf>,
    /// Also write it as a self-contained HTML page: per-class bars and the most suspicious images per class.
    #[arg(long, value_name = "OUT.html")]
    pub html: Option<PathBuf>,
    /// Continue an interrupted run from the checkpoints in OUTPUT.ckpt/
    /// (written after every backbone epoch, removed when the bundle is saved).
    #[arg(long)]
    pub resume: bool,
}

/// `h2e eval` flags.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Identifier bundle written by `h2e train`.
    pub identifier: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn open_data(data: Option<&Path>) -> Result<(Box<dyn Source>, String)> {
    match data {
        Some(p) => Ok((
            open_source(p).with_context(|| format!("cannot open data source {}", p.display()))?,
            p.display().to_string(),
        )),
        None => Ok((Box::new(h2e::embedded::default_source()?), h2e::embedded::DEFAULT_NAME.to_string())),
    }
}

/// Decodes the train (and test) split at the model's input size.
fn load(
    src: &dyn Source,
    name: &str,
    input_size: Option<usize>,
    progress: &TermProgress,
) -> Result<(TensorSet, Option<TensorSet>)> {
    let mut train_bar = progress.counter("loading train split");
    let mut test_bar = progress.counter("loading test split");
    load_train_test(src, input_size, &mut |split, done, total| match split {
        Split::Test => test_bar(done, total),
        _ => train_bar(done, total),
    })
    .with_context(|| format!("loading {name}"))
}

pub fn train(a: TrainArgs) -> Result<i32> {
    let rule = a.threshold.map_or(a.operating_point, Rule::Threshold);
    let cfg = TrainConfig {
        method: a.method,
        backbone: a.backbone,
        input_size: a.input_size,
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        identifier_epochs: a.identifier_epochs,
        irm_lambda: a.irm_lambda,
        identifier_heads: a.identifier_heads,
        rounds: a.rounds,
        folds: a.folds,
        classifier: a.classifier,
        classifier_epochs: a.classifier_epochs,
        classifier_init: a.classifier_init,
        operating_point: OperatingPoint {
            rule,
            max_flag_rate: a.max_flag_rate,
            min_per_class: a.min_per_class,
            min_score: min_score_for(rule, a.min_score),
            floor_exempt: a.floor_exempt,
        },
        floor_rounds: a.floor_rounds,
        round_min_score: h2e::score::round_min_score_for(a.round_min_score),
        tta_flip: a.tta_flip,
        scorer: a.scorer,
        seed: a.seed,
        ..TrainConfig::default()
    };
    cfg.validate()?;
    if a.output.exists() && a.output.is_dir() {
        bail!("{} is a folder; give the identifier bundle's file name (e.g. identifier.zip)", a.output.display());
    }
    let files = ReportFiles::create(a.report.as_deref(), a.jsonl.as_deref(), a.html.as_deref(), &[&a.output])?;
    let selected = select(a.device)?;
    eprintln!("device: {}", selected.description);
    let progress = TermProgress::new();
    let (src, name) = open_data(a.data.as_deref())?;
    let (train, test) = load(src.as_ref(), &name, a.input_size, &progress)?;
    eprintln!(
        "data: {name}: {} training samples, {} classes, {}x{}x{}{}",
        train.len(),
        train.classes.len(),
        train.channels,
        train.height,
        train.width,
        test.as_ref().map(|t| format!(", {} test samples", t.len())).unwrap_or_default()
    );
    let mut ckpt = a.output.clone().into_os_string();
    ckpt.push(".ckpt");
    let ckpt = PathBuf::from(ckpt);
    if a.resume && !ckpt.is_dir() {
        bail!(
            "--resume: no checkpoint folder {} (was the run started with -o {}?)",
            ckpt.display(),
            a.output.display()
        );
    }
    let engine = Engine::new(selected.device.clone(), cfg, &train, &progress)?
        .with_checkpoints(&ckpt, a.resume)
        .with_context(|| format!("preparing checkpoints in {}", ckpt.display()))?;
    let trained = engine.run(&train, test.as_ref(), selected.backend).context("training")?;
    for r in &trained.report.rounds {
        let by = round_label(r, &train.classes);
        let mut line = format!("round {}{by}: flagged {} of {} samples", r.round, r.flagged, train.len());
        if let Some(m) = &r.metrics {
            line += &format!("; noise detection {}", super::term::detection_line(m));
        }
        eprintln!("{line}");
    }
    if let Some(acc) = &trained.report.classifier {
        eprintln!("classifier: balanced test accuracy {:.3}", acc.balanced_accuracy);
    }
    if let Some(r) = &trained.report.reference {
        eprintln!(
            "without h2e (plain network on every sample): balanced test accuracy {:.3}, with post-hoc logit adjustment {:.3}",
            r.ce.balanced_accuracy, r.ce_post_hoc_la.balanced_accuracy
        );
    }
    let seconds = trained.report.seconds;
    let report = FilterReport::from_scores(&train, &trained.scores, seconds)?;
    let id = Identifier::from_trained(trained, &train, selected.device)?;
    id.save(&a.output).with_context(|| format!("writing {}", a.output.display()))?;
    if let Err(e) = std::fs::remove_dir_all(&ckpt) {
        log::warn!("could not remove the checkpoint folder {}: {e}", ckpt.display());
    }
    eprintln!("wrote {} ({seconds:.0} s)", a.output.display());
    files.write(&report, src.as_ref())?;
    Ok(0)
}

/// What decided a round's flags, as printed after `round N`: nothing for
/// the identifier's rounds; the stage-2 classifier; under the joint scorer
/// also the classes where it can only clear the identifier's flags, by
/// name (by index where `names` lacks one: a hand-edited bundle).
fn round_label(r: &h2e::train::RoundReport, names: &[String]) -> String {
    if !r.by_classifier {
        return String::new();
    }
    let Some(spared) = &r.spared_classes else { return " (stage-2 classifier)".into() };
    if spared.is_empty() {
        return " (joint: stage-2 classifier; no class spared)".into();
    }
    let list: Vec<String> = spared.iter().map(|&k| names.get(k).cloned().unwrap_or_else(|| k.to_string())).collect();
    format!(" (joint: stage-2 classifier; in {} it only clears the identifier's flags)", list.join(", "))
}

pub fn eval(a: EvalArgs) -> Result<i32> {
    let (config, report) =
        Identifier::read_summary(&a.identifier).with_context(|| format!("reading {}", a.identifier.display()))?;
    let rounds: Vec<serde_json::Value> = report
        .rounds
        .iter()
        .map(|r| match &r.metrics {
            Some(m) => serde_json::json!({
                "round": r.round, "by_classifier": r.by_classifier, "spared_classes": r.spared_classes,
                "flagged": r.flagged, "precision": m.precision, "recall": m.recall, "f1": m.f1, "auroc": m.auroc,
                "head": m.head, "medium": m.medium, "tail": m.tail,
            }),
            None => serde_json::json!({
                "round": r.round, "by_classifier": r.by_classifier, "spared_classes": r.spared_classes,
                "flagged": r.flagged,
            }),
        })
        .collect();
    let out = serde_json::json!({
        "method": report.method,
        "backend": report.backend,
        "samples": report.samples,
        "rounds": rounds,
        "test_accuracy": report.classifier.as_ref().map(|c| c.accuracy),
        "classifier": report.classifier,
        "reference": report.reference,
        "seconds": report.seconds,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    println!(
        "{}: method {}, {} training samples, trained on {}",
        a.identifier.display(),
        report.method.as_str(),
        report.samples,
        report.backend
    );
    for r in &report.rounds {
        let by = round_label(r, &config.classes);
        match &r.metrics {
            Some(m) => println!(
                "round {}{by}: flagged {}; precision {:.3} recall {:.3} F1 {:.3}; F1 head {:.3} medium {:.3} tail {:.3}; AUROC {}",
                r.round,
                r.flagged,
                m.precision,
                m.recall,
                m.f1,
                m.head.f1,
                m.medium.f1,
                m.tail.f1,
                m.auroc.map_or("n/a".into(), |a| format!("{a:.3}"))
            ),
            None => println!("round {}{by}: flagged {} (no ground truth)", r.round, r.flagged),
        }
    }
    let line = |name: &str, m: &h2e::metrics::AccuracyMetrics| {
        println!(
            "{name}: test accuracy {:.3}, balanced {:.3}; many / medium / few-shot {}",
            m.accuracy,
            m.balanced_accuracy,
            [m.many_shot, m.medium_shot, m.few_shot].map(|v| v.map_or("n/a".into(), |v| format!("{v:.3}"))).join(" / ")
        )
    };
    if let Some(c) = &report.classifier {
        line("stage-2 classifier", c);
    }
    if let Some(r) = &report.reference {
        line("plain network (every sample)", &r.ce);
        line("plain network + post-hoc logit adjustment", &r.ce_post_hoc_la);
    }
    Ok(0)
}
