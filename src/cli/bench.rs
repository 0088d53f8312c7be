//! `h2e bench quality`.

use super::term::TermProgress;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use h2e::bench::{draw_name, grid, quick_config, quick_grid, run, shard, summarise, summary_table, table, Missing};
use h2e::data::open_source;
use h2e::device::{select, DeviceChoice};
use h2e::score::{min_score_for, FloorExempt, FloorRounds, OperatingPoint, Rule, EVERY_ROUND};
use h2e::train::{Method, TrainConfig};
use std::path::PathBuf;

/// `h2e bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Noise-detection quality of h2e (every round) and the baselines on a grid of NLT draws.
    Quality(QualityArgs),
    /// Images/s of the small CNN's training step and inference on each backend (JSON on stdout).
    Speed(SpeedArgs),
    /// Recompute an operating point on every round from the logits `quality --save-logits` saved (trains nothing).
    Rescore(RescoreArgs),
}

/// `h2e bench rescore` flags.
#[derive(Debug, Args)]
pub struct RescoreArgs {
    /// A `bench quality` output folder run with --save-logits (its draws/
    /// holds NAME.h2e.logits.safetensors files).
    pub folder: PathBuf,
    /// Only draws whose name contains this.
    #[arg(long)]
    pub only: Option<String>,
    /// Flagging rule (default: agreement-noise-rate).
    #[arg(long)]
    pub operating_point: Option<Rule>,
    /// Score floor (default: the rule's; 0 turns it off).
    #[arg(long)]
    pub min_score: Option<f32>,
    /// Which classes the score floor spares (default any-flip).
    #[arg(long)]
    pub floor_exempt: Option<FloorExempt>,
    /// Which rounds the score floor reads: last, or every (each sample's
    /// lowest noise score over rounds 1 to the one reported).
    #[arg(long, default_value = "last")]
    pub floor_rounds: FloorRounds,
}

/// `h2e bench speed` flags.
#[derive(Debug, Args)]
pub struct SpeedArgs {
    /// Devices to time (cpu, wgpu, vulkan, metal, dx12, cuda). Default: the
    /// CPU, plus wgpu when it finds a hardware adapter.
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<DeviceChoice>,
    /// Untimed steps first.
    #[arg(long, default_value_t = 30)]
    pub warmup: usize,
    /// Steps per timed run.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

/// `h2e bench quality` flags.
#[derive(Debug, Args)]
pub struct QualityArgs {
    /// Output folder: results.json, results.md, summary.md, and under
    /// draws/ the draws and each finished draw-and-method result. A rerun
    /// reuses both when the training configuration is the same, so an
    /// interrupted grid resumes, and several processes (see --shard) can
    /// share one folder. Delete draws/NAME.METHOD.json to rerun one pair.
    #[arg(short, long)]
    pub output: PathBuf,
    /// One small draw and a short schedule: checks the harness, not a result.
    #[arg(long)]
    pub quick: bool,
    /// Seeds of the grid.
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    pub seeds: Vec<u64>,
    /// Methods to run.
    #[arg(long, value_delimiter = ',', default_value = "h2e,ce,small-loss,confident-learning")]
    pub methods: Vec<Method>,
    /// Only draws whose name contains this (e.g. `uniform-rho100`).
    #[arg(long)]
    pub only: Option<String>,
    /// Run shard K of N (`K/N`, K from 0): every N-th draw of the grid
    /// (after --only), starting at the K-th. N processes with shards 0/N
    /// to N-1/N split the grid between them.
    #[arg(long)]
    pub shard: Option<h2e::filter::Shard>,
    /// Train nothing: report the results already saved in the output
    /// folder (for this configuration) and list the pairs still missing.
    #[arg(long)]
    pub report_only: bool,
    /// Backbone epochs (default: the training default, or 2 with --quick).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// h2e's hard-to-easy rounds (default: the training default, 2). Every
    /// round is reported.
    #[arg(long)]
    pub rounds: Option<usize>,
    /// h2e's identifier (stage B) epochs per round (default: the training
    /// default, 9).
    #[arg(long)]
    pub identifier_epochs: Option<usize>,
    /// Weight of h2e's IRMv1 penalty (default: the training default, 1).
    #[arg(long)]
    pub irm_lambda: Option<f64>,
    /// h2e's identifier heads per round, averaged (default: the training
    /// default, 1).
    #[arg(long)]
    pub identifier_heads: Option<usize>,
    /// Also train and test the stage-2 classifier.
    #[arg(long)]
    pub classifier: bool,
    /// Where stage 2 starts: plain (the default: the plain network) or
    /// scratch (fresh weights).
    #[arg(long)]
    pub classifier_init: Option<h2e::train::ClassifierInit>,
    /// Where the clean images come from.
    #[arg(long, default_value = "fashion-mnist")]
    pub source: PathBuf,
    /// Device: auto, wgpu, vulkan, metal, dx12, cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// h2e's flagging rule between rounds and for its own rows (every rule
    /// is reported anyway, on this rule's rounds).
    #[arg(long)]
    pub operating_point: Option<Rule>,
    /// Score floor on h2e's final flags, its own rows (default 0.9 with
    /// agreement-noise-rate, none with the other rules; 0 turns it off; the
    /// default rule without a floor and at floors 0.8, 0.9 and 0.95 with
    /// either exemption is reported anyway, in every round).
    #[arg(long)]
    pub min_score: Option<f32>,
    /// Which classes h2e's score floor spares (default any-flip, or
    /// majority-flip; both are reported anyway at the floors above).
    #[arg(long)]
    pub floor_exempt: Option<FloorExempt>,
    /// Which rounds h2e's score floor reads on its own rows: last or every
    /// (the default rule with any-flip over every round is reported anyway,
    /// from round 2, with `+every-round`).
    #[arg(long)]
    pub floor_rounds: Option<FloorRounds>,
    /// Score floor on the flags that remove samples between h2e's rounds
    /// (default: none; the final flags keep --min-score).
    #[arg(long)]
    pub round_min_score: Option<f32>,
    /// Score h2e's identifier on each image and its horizontal mirror
    /// (test-time augmentation; the baselines score as before).
    #[arg(long)]
    pub tta_flip: bool,
    /// Which network decides h2e's final flags: joint (the default: stage
    /// 2 scores, as one more round, except in classes the identifier sees
    /// flipped, where it can only clear flags), identifier (round 2 is
    /// final; no stage 2 without --classifier) or classifier (stage 2
    /// scores everywhere). With joint or classifier, round 2 is still
    /// reported, as the identifier's figures.
    #[arg(long)]
    pub scorer: Option<h2e::train::Scorer>,
    /// Also save every h2e round's identifier logits on the draw
    /// (draws/NAME.h2e.logits.safetensors, about samples x classes x 4
    /// bytes a round), for `h2e bench rescore`.
    #[arg(long)]
    pub save_logits: bool,
}

pub fn bench(cmd: BenchCmd) -> Result<i32> {
    match cmd {
        BenchCmd::Quality(a) => quality(a),
        BenchCmd::Speed(a) => speed(a),
        BenchCmd::Rescore(a) => rescore(a),
    }
}

/// `base` with a command line's rule, score floor (the rule's default when
/// not given, 0 for none) and floor exemption, each kept when not given.
fn with_flags(
    base: OperatingPoint,
    rule: Option<Rule>,
    min_score: Option<f32>,
    floor_exempt: Option<FloorExempt>,
) -> OperatingPoint {
    let rule = rule.unwrap_or(base.rule);
    OperatingPoint {
        rule,
        min_score: min_score_for(rule, min_score),
        floor_exempt: floor_exempt.unwrap_or(base.floor_exempt),
        ..base
    }
}

fn rescore(a: RescoreArgs) -> Result<i32> {
    let op = with_flags(OperatingPoint::default(), a.operating_point, a.min_score, a.floor_exempt);
    op.validate()?;
    let draws = a.folder.join("draws");
    let entries = std::fs::read_dir(&draws).with_context(|| format!("reading {}", draws.display()))?;
    let mut files: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let draw = name.strip_suffix(".h2e.logits.safetensors")?.to_string();
            a.only.as_deref().is_none_or(|o| draw.contains(o)).then(|| (draw, e.path()))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        anyhow::bail!(
            "{} holds no round logits{}; run `h2e bench quality --save-logits` first",
            draws.display(),
            a.only.as_deref().map(|o| format!(" of draws matching `{o}`")).unwrap_or_default()
        );
    }
    let every = match a.floor_rounds {
        FloorRounds::Every => format!("+{EVERY_ROUND}"),
        FloorRounds::Last => String::new(),
    };
    eprintln!("{op}{every} on {} draws", files.len());
    let mut md = String::from(
        "| draw | round | P | R | F1 | F1 head | F1 tail | AUROC | flagged / noisy |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for (draw, path) in &files {
        let saved = h2e::rescore::SavedLogits::read(path)?;
        for (round, m) in saved.rescore(&op, a.floor_rounds).with_context(|| format!("rescoring {}", path.display()))? {
            md.push_str(&format!(
                "| {draw} | {round} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} / {} |\n",
                m.precision,
                m.recall,
                m.f1,
                m.head.f1,
                m.tail.f1,
                m.auroc.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into()),
                m.flagged,
                m.noisy
            ));
        }
    }
    print!("{md}");
    Ok(0)
}

fn speed(a: SpeedArgs) -> Result<i32> {
    let devices = if a.devices.is_empty() {
        let mut d = vec![DeviceChoice::Cpu];
        if matches!(h2e::device::probe_wgpu(), Some((_, true))) {
            d.push(DeviceChoice::Wgpu);
        }
        d
    } else {
        a.devices
    };
    let mut results = Vec::new();
    for choice in devices {
        let selected = select(choice)?;
        eprintln!("timing {} ...", selected.description);
        let r = h2e::bench::speed(selected.backend, &selected.description, &selected.device, a.warmup, a.steps, a.runs)
            .with_context(|| format!("speed benchmark on {}", selected.description))?;
        eprintln!("{}: train {:.0} img/s, inference {:.0} img/s", r.device, r.train_img_s, r.infer_img_s);
        results.push(r);
    }
    let json = serde_json::json!({
        "model": "small-cnn 1x28x28, 10 classes",
        "train_batch": h2e::bench::SPEED_TRAIN_BATCH,
        "infer_batch": h2e::bench::SPEED_INFER_BATCH,
        "warmup": a.warmup, "steps": a.steps, "runs": a.runs,
        "backends": results,
        "peak_rss_mb": h2e::bench::peak_rss_mb(),
        // What the CPU figures depend on besides the chip.
        "cpu_threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "allocator": crate::ALLOCATOR,
    });
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(0)
}

fn quality(a: QualityArgs) -> Result<i32> {
    let source = open_source(&a.source).with_context(|| format!("cannot open data source {}", a.source.display()))?;
    let mut draws = if a.quick { quick_grid() } else { grid(&a.seeds) };
    if let Some(only) = &a.only {
        draws.retain(|d| draw_name(d).contains(only.as_str()));
    }
    let mut cfg = if a.quick { quick_config() } else { TrainConfig::default() };
    cfg.epochs = a.epochs.unwrap_or(cfg.epochs);
    cfg.rounds = a.rounds.unwrap_or(cfg.rounds);
    cfg.identifier_epochs = a.identifier_epochs.unwrap_or(cfg.identifier_epochs);
    cfg.irm_lambda = a.irm_lambda.unwrap_or(cfg.irm_lambda);
    cfg.identifier_heads = a.identifier_heads.unwrap_or(cfg.identifier_heads);
    cfg.classifier = a.classifier;
    cfg.classifier_init = a.classifier_init.unwrap_or(cfg.classifier_init);
    cfg.operating_point = with_flags(cfg.operating_point, a.operating_point, a.min_score, a.floor_exempt);
    if let Some(r) = a.floor_rounds {
        cfg.floor_rounds = r;
    }
    cfg.round_min_score = h2e::score::round_min_score_for(a.round_min_score);
    cfg.tta_flip = a.tta_flip;
    cfg.scorer = a.scorer.unwrap_or(cfg.scorer);
    cfg.validate()?;
    if let Some(part) = a.shard {
        draws = shard(&draws, part);
    }
    // --report-only trains nothing, so it needs no accelerator.
    let (choice, missing) = if a.report_only { (DeviceChoice::Cpu, Missing::Skip) } else { (a.device, Missing::Train) };
    let selected = select(choice)?;
    let device = if a.report_only { "none (--report-only)".to_string() } else { selected.description.clone() };
    eprintln!("device: {device}; {} draws x {} methods", draws.len(), a.methods.len());
    std::fs::create_dir_all(&a.output).with_context(|| format!("creating {}", a.output.display()))?;
    let progress = TermProgress::new();
    let out = run(
        source.as_ref(),
        &draws,
        &a.methods,
        &cfg,
        &a.output.join("draws"),
        &selected.device,
        selected.backend,
        missing,
        a.save_logits,
        &progress,
        &mut |r| {
            eprintln!(
                "{} {} round {}: F1 {:.3} (head {:.3}, tail {:.3}), {:.0} s on {}",
                draw_name(&r.draw),
                r.method.as_str(),
                r.round,
                r.detection.f1,
                r.detection.head.f1,
                r.detection.tail.f1,
                r.seconds,
                r.backend
            )
        },
    )?;
    if !out.reused.is_empty() {
        eprintln!("reused {} saved results from {}", out.reused.len(), a.output.join("draws").display());
    }
    if !out.missing.is_empty() {
        eprintln!("{} not run yet: {}", out.missing.len(), out.missing.join(", "));
    }
    let summary = summarise(&out.rows);
    let json = serde_json::json!({
        "config": cfg, "device": device, "quick": a.quick,
        "missing": out.missing, "summary": summary, "rows": out.rows,
    });
    let (json, md, sm) = (serde_json::to_vec_pretty(&json)?, table(&out.rows), summary_table(&summary));
    for (name, bytes) in
        [("results.json", json.as_slice()), ("results.md", md.as_bytes()), ("summary.md", sm.as_bytes())]
    {
        let path = a.output.join(name);
        h2e::fsutil::write_atomic(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{md}\n{sm}");
    Ok(0)
}
