//! `h2e report` (a filter report as one HTML page) and `h2e merge`
//! (shard reports into the unsharded report).

use super::out::{create, finish, write_html};
use anyhow::{bail, Context, Result};
use clap::Args;
use h2e::data::open_source;
use h2e::report::{merge_shards, read_report, DEFAULT_TOP_K};
use std::path::PathBuf;

/// `h2e report` flags.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Report written by `h2e filter` (--report CSV or --jsonl), or by `h2e merge`.
    pub report: PathBuf,
    /// The data the report is about (as given to `h2e filter`): thumbnails are decoded from it by path.
    pub data: PathBuf,
    /// The HTML file to write (self-contained: open it anywhere, offline).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Thumbnails per class: the samples with the highest noise score.
    #[arg(long, default_value_t = DEFAULT_TOP_K)]
    pub top: usize,
}

/// `h2e merge` flags.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Shard reports of `h2e filter --shard i/n --report` (or --jsonl), in shard order 0/n, 1/n, ..., n-1/n.
    /// Rows are restored to the unsharded order; flags are kept as each shard decided them
    /// (--max-flag-rate and --min-per-class applied per shard).
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
    /// Merged report to write: CSV, or JSON lines when the name ends in .jsonl.
    #[arg(short, long)]
    pub output: PathBuf,
}

pub fn report(a: ReportArgs) -> Result<i32> {
    let out = create(&a.output)?;
    let report = read_report(&a.report).with_context(|| format!("cannot read report {}", a.report.display()))?;
    let src = open_source(&a.data).with_context(|| format!("cannot open data source {}", a.data.display()))?;
    write_html(out, &report, src.as_ref(), a.top)?;
    eprintln!("report: {} samples, {} flagged, {} errors", report.rows.len(), report.flagged(), report.errors());
    Ok(0)
}

pub fn merge(a: MergeArgs) -> Result<i32> {
    let mut seen = Vec::new();
    for p in &a.shards {
        let canon = p.canonicalize().with_context(|| format!("cannot open {}", p.display()))?;
        if seen.contains(&canon) {
            bail!("{} is given twice; pass each shard's report once, in shard order", p.display());
        }
        seen.push(canon);
    }
    let out = create(&a.output)?;
    let shards = a
        .shards
        .iter()
        .map(|p| {
            Ok((
                p.display().to_string(),
                read_report(p).with_context(|| format!("cannot read report {}", p.display()))?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let n = shards.len();
    let merged = merge_shards(shards).context("merging shard reports")?;
    let mut bytes = Vec::new();
    match a.output.extension().is_some_and(|e| e == "jsonl") {
        true => merged.write_jsonl(&mut bytes),
        false => merged.write_csv(&mut bytes),
    }
    .context("formatting the merged report")?;
    finish(out, &bytes)?;
    eprintln!(
        "merge: {n} shards, {} samples, {} flagged, {} errors",
        merged.rows.len(),
        merged.flagged(),
        merged.errors()
    );
    Ok(0)
}
