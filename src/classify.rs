//! Predicting classes with an identifier's stage-2 classifier (`h2e
//! classify`): one [`ClassifyRow`] per sample with the predicted class and
//! its probability, and, for labelled data, the accuracy per split.
//!
//! ```no_run
//! use h2e::classify::classify_source;
//! use h2e::identifier::Identifier;
//! let id = Identifier::open("identifier.zip".as_ref(), burn::tensor::Device::flex()).unwrap();
//! let src = h2e::data::open_source("images/".as_ref()).unwrap();
//! let report = classify_source(&id, src.as_ref(), 512, &h2e::progress::Silent).unwrap();
//! report.write_csv(&mut std::io::stdout()).unwrap();
//! ```

use std::io::Write;
use std::time::Instant;

use serde::Serialize;

use crate::data::{Source, Split};
use crate::error::{Error, Result};
use crate::filter::{csv_field, decode};
use crate::identifier::Identifier;
use crate::kernels::PackedBatch;
use crate::metrics::{accuracy_metrics, AccuracyMetrics};
use crate::progress::{Event, Progress};

/// Columns of the CSV report, in order.
pub const CSV_COLUMNS: [&str; 5] = ["path", "given_label", "predicted_label", "probability", "error"];

/// One sample of a classification report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassifyRow {
    /// The sample's path as its source names it.
    pub path: String,
    /// Its split in the source.
    pub split: Split,
    /// Given class name; empty for unlabelled data.
    pub given_label: String,
    /// The classifier's prediction; empty on error.
    pub predicted_label: String,
    /// Probability of the predicted class; `None` on error.
    pub probability: Option<f32>,
    /// Why the sample was not classified.
    pub error: Option<String>,
}

/// The result of a classification run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClassifyReport {
    /// One row per sample, in source order.
    pub rows: Vec<ClassifyRow>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl ClassifyReport {
    /// Writes the CSV report ([`CSV_COLUMNS`]; missing values empty).
    pub fn write_csv(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let mut w = std::io::BufWriter::new(w);
        writeln!(w, "{}", CSV_COLUMNS.join(","))?;
        for r in &self.rows {
            writeln!(
                w,
                "{},{},{},{},{}",
                csv_field(&r.path),
                csv_field(&r.given_label),
                csv_field(&r.predicted_label),
                r.probability.map(|p| p.to_string()).unwrap_or_default(),
                csv_field(r.error.as_deref().unwrap_or("")),
            )?;
        }
        w.flush()
    }

    /// Rows with an error.
    pub fn errors(&self) -> usize {
        self.rows.iter().filter(|r| r.error.is_some()).count()
    }
}

/// Classifies every sample of `src` with `id`'s stage-2 classifier,
/// `batch_size` images at a time (decoded on all cores, resized to the
/// identifier's input size). Unreadable images become rows with `error`.
/// Errors when the identifier has no classifier.
pub fn classify_source(
    id: &Identifier,
    src: &dyn Source,
    batch_size: usize,
    progress: &dyn Progress,
) -> Result<ClassifyReport> {
    if !id.has_classifier() {
        return Err(Error::Argument("this identifier has no classifier; train it with --classifier".into()));
    }
    if batch_size == 0 {
        return Err(Error::Argument("batch size must be positive".into()));
    }
    let t0 = Instant::now();
    let classes = id.classes();
    let (channels, size) = (id.channels() as u8, id.input_size() as u32);
    let n = src.samples().len();
    // Batches never mix splits, so a split is batched as training batched
    // it and gets the same numbers.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| src.samples()[i].split);
    let chunks: Vec<&[usize]> = Split::ALL
        .iter()
        .flat_map(|&split| {
            let from = order.partition_point(|&i| src.samples()[i].split < split);
            let to = order.partition_point(|&i| src.samples()[i].split <= split);
            order[from..to].chunks(batch_size)
        })
        .collect();
    let mut rows: Vec<ClassifyRow> = src
        .samples()
        .iter()
        .map(|meta| ClassifyRow {
            path: meta.path.clone(),
            split: meta.split,
            given_label: if src.labelled() {
                src.classes().get(meta.label).cloned().unwrap_or_default()
            } else {
                String::new()
            },
            predicted_label: String::new(),
            probability: None,
            error: None,
        })
        .collect();
    progress.event(Event::Start { stage: "classify", total: n as u64 });
    let mut done = 0;
    for chunk in chunks {
        let mut batch = PackedBatch::new(id.channels())?;
        let mut scored = Vec::new();
        for (&i, image) in chunk.iter().zip(decode(src, chunk, channels, size)) {
            match image {
                Ok(img) => {
                    batch.push(size, size, &img.pixels)?;
                    scored.push(i);
                }
                Err(e) => rows[i].error = Some(e.to_string()),
            }
        }
        let p = id.classifier_probabilities(&batch)?;
        for (i, probs) in scored.into_iter().zip(p.chunks(classes.len())) {
            let k = crate::baselines::argmax(probs);
            rows[i].predicted_label = classes[k].clone();
            rows[i].probability = Some(probs[k]);
        }
        done += chunk.len();
        let rate = done as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        progress.event(Event::Advance { done: done as u64, message: &format!("{rate:.0} images/s") });
    }
    progress.event(Event::Finish { summary: &format!("{n} samples classified") });
    Ok(ClassifyReport { rows, seconds: t0.elapsed().as_secs_f64() })
}

/// Accuracy per split of `report`, a [`classify_source`] run on `src`
/// (one row per sample, in source order), against the true labels when
/// the source has them (NLT bundles) and the given labels otherwise; rows
/// with errors or of classes the identifier does not know are left out.
/// The many / medium / few-shot groups come from the identifier's training
/// counts (the order of its class priors for a bundle without a report).
/// Empty for unlabelled sources.
pub fn accuracy(report: &ClassifyReport, src: &dyn Source, id: &Identifier) -> Result<Vec<(Split, AccuracyMetrics)>> {
    if report.rows.len() != src.samples().len() {
        return Err(Error::Argument(format!(
            "{} report rows for {} samples in {}",
            report.rows.len(),
            src.samples().len(),
            src.location()
        )));
    }
    if !src.labelled() {
        return Ok(Vec::new());
    }
    let classes = id.classes();
    let counts: Vec<usize> = match id.report() {
        Some(r) if r.class_counts.len() == classes.len() => r.class_counts.clone(),
        _ => id.config().class_priors.iter().map(|&p| (p as f64 * 1e6).round() as usize).collect(),
    };
    let index = |name: &str| classes.iter().position(|c| c == name);
    let mut out = Vec::new();
    for split in Split::ALL {
        let (mut pred, mut truth) = (Vec::new(), Vec::new());
        for (row, meta) in report.rows.iter().zip(src.samples()) {
            if meta.split != split || row.error.is_some() {
                continue;
            }
            let t = meta.true_label.unwrap_or(meta.label);
            let (Some(t), Some(p)) = (src.classes().get(t).and_then(|n| index(n)), index(&row.predicted_label)) else {
                continue;
            };
            pred.push(p);
            truth.push(t);
        }
        if !pred.is_empty() {
            out.push((split, accuracy_metrics(&pred, &truth, &counts)?));
        }
    }
    Ok(out)
}
