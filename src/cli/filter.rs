//! `h2e filter`.

use super::out::ReportFiles;
use super::term::TermProgress;
use anyhow::{Context, Result};
use clap::Args;
use h2e::data::open_source;
use h2e::device::{select, DeviceChoice};
use h2e::filter::{evaluate, filter_source, FilterOptions, Shard, UnknownClass, DEFAULT_BATCH};
use h2e::identifier::Identifier;
use h2e::train::Scorer;
use std::path::{Path, PathBuf};

/// `h2e filter` flags.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Identifier bundle written by `h2e train`.
    pub identifier: PathBuf,
    /// Data to check: a folder, a dataset bundle, an image list (.csv/.jsonl with `path` and optional `label`) or `fashion-mnist`.
    pub data: PathBuf,
    /// Write the report as CSV (path,given_label,predicted_label,label_score,is_label_issue,error).
    /// Without --report or --jsonl the CSV goes to stdout.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write the report as JSON lines (the CSV's fields plus noise_score).
    #[arg(long)]
    pub jsonl: Option<PathBuf>,
    /// Also write a self-contained HTML page: summary, per-class bars and the most suspicious images per class.
    #[arg(long, value_name = "OUT.html")]
    pub html: Option<PathBuf>,
    /// Flag when the noise score (1 - label_score) reaches this value instead of the identifier's rule.
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Also write the kept samples: a dataset bundle (.zip) or an ImageFolder (new or empty folder).
    #[arg(long, value_name = "OUT")]
    pub clean_out: Option<PathBuf>,
    /// Also write the flagged samples, likewise.
    #[arg(long, value_name = "OUT")]
    pub noisy_out: Option<PathBuf>,
    /// Flagging rule instead of the identifier's: agreement, agreement-noise-rate, argmax, confident-learning, noise-rate or threshold=T.
    #[arg(long)]
    pub operating_point: Option<h2e::score::Rule>,
    /// Flag at most this fraction of the samples (default: the identifier's).
    #[arg(long)]
    pub max_flag_rate: Option<f32>,
    /// Keep at least this many samples of every class unflagged (default: the identifier's).
    #[arg(long)]
    pub min_per_class: Option<usize>,
    /// Score floor: a flag also needs a noise score of at least this, except on both sides of a
    /// systematic flip that agreement-noise-rate exempts (default: the identifier's, or with
    /// --operating-point / --threshold that rule's: 0.9 for agreement-noise-rate, none for the
    /// others; 0 removes it).
    #[arg(long)]
    pub min_score: Option<f32>,
    /// Which classes the score floor spares: majority-flip or any-flip (default: the identifier's;
    /// see `h2e train --help`).
    #[arg(long)]
    pub floor_exempt: Option<h2e::score::FloorExempt>,
    /// Which network decides: identifier, classifier or joint (default: the scorer the bundle was
    /// trained with). classifier and joint need a bundle trained with --classifier; joint decides
    /// over the whole set (the classes it spares are estimated on this data).
    #[arg(long)]
    pub scorer: Option<Scorer>,
    /// Samples of classes the identifier does not know: error (refuse the data) or skip (error rows).
    #[arg(long, default_value = "error")]
    pub unknown_class: UnknownClass,
    /// Device: auto, wgpu, vulkan, metal, dx12, cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Images decoded and scored together.
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    pub batch_size: usize,
    /// Process only shard i of n (0-based): the samples whose index modulo n is i.
    #[arg(long, default_value = "0/1")]
    pub shard: Shard,
}

pub fn filter(a: FilterArgs) -> Result<i32> {
    let opts = FilterOptions {
        batch_size: a.batch_size,
        threshold: a.threshold,
        rule: a.operating_point,
        max_flag_rate: a.max_flag_rate,
        min_per_class: a.min_per_class,
        min_score: a.min_score,
        floor_exempt: a.floor_exempt,
        unknown_class: a.unknown_class,
        shard: a.shard,
        scorer: a.scorer,
    };
    opts.validate()?;
    let exports: Vec<&Path> = [a.clean_out.as_deref(), a.noisy_out.as_deref()].into_iter().flatten().collect();
    let files = ReportFiles::create(a.report.as_deref(), a.jsonl.as_deref(), a.html.as_deref(), &exports)?;
    for out in [&a.clean_out, &a.noisy_out].into_iter().flatten() {
        h2e::filter::check_export_target(out)?;
    }
    let selected = select(a.device)?;
    eprintln!("device: {}", selected.description);
    let id = Identifier::open(&a.identifier, selected.device)
        .with_context(|| format!("cannot open identifier {}", a.identifier.display()))?;
    let src = open_source(&a.data).with_context(|| format!("cannot open data source {}", a.data.display()))?;
    // filter_source refuses a scorer the bundle cannot use (check_scorer).
    let scorer = a.scorer.unwrap_or(id.scorer());
    if scorer != Scorer::Identifier {
        eprintln!("scorer: {scorer}");
    }
    let op = opts.operating_point(&id.config().operating_point);
    if a.shard.count > 1
        && (op.rule.needs_probabilities()
            || op.max_flag_rate.is_some()
            || op.min_per_class > 0
            || scorer == Scorer::Joint)
    {
        eprintln!(
            "note: flags are decided within this shard (the {} rule and the caps are set-wide); \
             --operating-point argmax --min-per-class 0 decides each sample alone",
            op.rule
        );
    }
    let progress = TermProgress::new();
    let report = filter_source(&id, src.as_ref(), &opts, &progress)
        .with_context(|| format!("filtering {} with {}", a.data.display(), a.identifier.display()))?;
    if files.no_table() {
        report.write_csv(&mut std::io::stdout().lock()).context("writing the report to stdout")?;
    }
    files.write(&report, src.as_ref())?;
    for (out, flagged) in [(&a.clean_out, false), (&a.noisy_out, true)] {
        if let Some(out) = out {
            let n = h2e::filter::export(&report, src.as_ref(), flagged, out)
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!("wrote {} ({n} {} images)", out.display(), if flagged { "flagged" } else { "kept" });
        }
    }
    let n = report.rows.len();
    eprintln!(
        "filter{}: {n} samples, {} flagged, {} errors, {:.0} images/s",
        if a.shard.count > 1 { format!(" (shard {})", a.shard) } else { String::new() },
        report.flagged(),
        report.errors(),
        n as f64 / report.seconds.max(1e-9)
    );
    for (split, m) in evaluate(&report, src.as_ref())? {
        eprintln!(
            "ground truth ({}: {} samples, {} noisy): {}",
            split.as_str(),
            m.samples,
            m.noisy,
            super::term::detection_line(&m)
        );
    }
    Ok(0)
}
