//! `h2e classify`.

use super::term::TermProgress;
use anyhow::{bail, Context, Result};
use clap::Args;
use h2e::classify::{accuracy, classify_source, ClassifyReport};
use h2e::data::open_source;
use h2e::device::{select, DeviceChoice};
use h2e::filter::DEFAULT_BATCH;
use h2e::fsutil::AtomicFile;
use h2e::identifier::Identifier;
use std::path::PathBuf;

/// `h2e classify` flags.
#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// Identifier bundle trained with --classifier.
    pub identifier: PathBuf,
    /// Data to classify: a folder, a dataset bundle, an image list or `fashion-mnist`.
    pub data: PathBuf,
    /// Write the predictions as CSV (path,given_label,predicted_label,probability,error); default: stdout.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Device: auto, wgpu, vulkan, metal, dx12, cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Images decoded and classified together.
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    pub batch_size: usize,
}

pub fn classify(a: ClassifyArgs) -> Result<i32> {
    let out = match &a.report {
        Some(p) if p.is_dir() => bail!("{} is a folder; give a file name", p.display()),
        Some(p) => Some(AtomicFile::create(p).with_context(|| format!("cannot write {}", p.display()))?),
        None => None,
    };
    let selected = select(a.device)?;
    eprintln!("device: {}", selected.description);
    let id = Identifier::open(&a.identifier, selected.device)
        .with_context(|| format!("cannot open identifier {}", a.identifier.display()))?;
    if !id.has_classifier() {
        bail!("{} has no stage-2 classifier: train it with `h2e train --classifier`", a.identifier.display());
    }
    let src = open_source(&a.data).with_context(|| format!("cannot open data source {}", a.data.display()))?;
    let report = classify_source(&id, src.as_ref(), a.batch_size, &TermProgress::new())
        .with_context(|| format!("classifying {} with {}", a.data.display(), a.identifier.display()))?;
    match out {
        Some(mut f) => {
            let dest = f.dest().to_path_buf();
            report.write_csv(&mut f).with_context(|| format!("writing {}", dest.display()))?;
            f.commit().with_context(|| format!("writing {}", dest.display()))?;
            eprintln!("wrote {}", dest.display());
        }
        None => report.write_csv(&mut std::io::stdout().lock()).context("writing the predictions to stdout")?,
    }
    summary(&report, src.as_ref(), &id)?;
    Ok(0)
}

fn summary(report: &ClassifyReport, src: &dyn h2e::data::Source, id: &Identifier) -> Result<()> {
    let n = report.rows.len();
    eprintln!("classify: {n} samples, {} errors, {:.0} images/s", report.errors(), n as f64 / report.seconds.max(1e-9));
    for (split, m) in accuracy(report, src, id)? {
        eprintln!(
            "{} ({} samples): accuracy {:.3}, balanced {:.3}; many / medium / few-shot {}",
            split.as_str(),
            m.samples,
            m.accuracy,
            m.balanced_accuracy,
            [m.many_shot, m.medium_shot, m.few_shot].map(|v| v.map_or("n/a".into(), |v| format!("{v:.3}"))).join(" / ")
        );
    }
    Ok(())
}
