//! Applying a saved identifier to new data (`h2e filter`): one
//! [`FilterRow`] per sample with the given and predicted labels, the
//! probability of the given label and whether it is a suspected label issue.
//!
//! Samples are decoded in batches (on all cores, while the previous batch is
//! scored), resized to the identifier's input size exactly as training did,
//! and scored by the networks the scorer needs (the bundle's
//! [`crate::train::Scorer`] unless [`FilterOptions::scorer`] says
//! otherwise; the joint scorer uses both and decides over the whole set,
//! like the rules below); only a few numbers per sample
//! are kept (plus its adjusted probability row, `classes` floats, under the
//! rules that estimate per-class noise rates), never the images. The
//! operating point is applied once at the end, over every scored labelled
//! sample, because the `agreement-noise-rate` (default), `confident-learning`
//! and `noise-rate` rules (per-class noise rates estimated from the whole
//! set) and the caps (`max_flag_rate`, `min_per_class`) are global. With
//! [`Shard`]s they apply per shard; the `agreement`, `argmax` and
//! `threshold=T` rules without caps decide each sample alone.
//!
//! An image that cannot be read yields a row with `error` set instead of
//! stopping the run. Column names follow cleanlab's `find_label_issues`
//! report: `path, given_label, predicted_label, label_score, is_label_issue`,
//! plus `error`.
//!
//! ```no_run
//! use h2e::filter::{filter_source, FilterOptions};
//! use h2e::identifier::Identifier;
//! let id = Identifier::open("identifier.zip".as_ref(), burn::tensor::Device::flex()).unwrap();
//! let src = h2e::data::open_source("new_images/".as_ref()).unwrap();
//! let report = filter_source(&id, src.as_ref(), &FilterOptions::default(), &h2e::progress::Silent).unwrap();
//! report.write_csv(&mut std::io::stdout()).unwrap();
//! ```

use std::borrow::Cow;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;
use std::time::Instant;

use serde::Serialize;

use crate::bundle::BundleWriter;
use crate::data::{resize, Image, Source, TensorSet};
use crate::error::{Error, Result};
use crate::fsutil::safe_component;
use crate::identifier::{Identifier, SetScoring};
use crate::kernels::PackedBatch;
use crate::progress::{Event, Progress};
use crate::score::{self, FloorExempt, OperatingPoint, Rule, SampleScore, Scores};
use crate::train::Scorer;

/// Default number of images decoded and scored together.
pub const DEFAULT_BATCH: usize = 512;

/// Columns of the CSV report, in order.
pub const CSV_COLUMNS: [&str; 6] = ["path", "given_label", "predicted_label", "label_score", "is_label_issue", "error"];

/// What to do with samples whose class the identifier does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownClass {
    /// Refuse the data set, listing the unknown class names.
    #[default]
    Error,
    /// Give each such sample a row with `error` "unknown class NAME".
    Skip,
}

impl FromStr for UnknownClass {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "error" => Ok(UnknownClass::Error),
            "skip" => Ok(UnknownClass::Skip),
            o => Err(Error::Argument(format!("unknown-class {o:?}: expected error or skip"))),
        }
    }
}

/// Shard `index` of `count`: the samples whose position in the source
/// modulo `count` is `index`. The shards of a job array cover every sample
/// exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 0-based shard number, below `count`.
    pub index: usize,
    /// Number of shards (at least 1).
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

impl Shard {
    /// Shard `index` of `count`; errors unless `index < count`.
    pub fn new(index: usize, count: usize) -> Result<Shard> {
        if index >= count {
            return Err(Error::Argument(format!(
                "shard {index}/{count}: the shard number must be below the shard count (0-based)"
            )));
        }
        Ok(Shard { index, count })
    }

    /// True when sample `i` belongs to this shard.
    pub fn contains(&self, i: usize) -> bool {
        i % self.count == self.index
    }
}

impl FromStr for Shard {
    type Err = Error;
    /// Parses `i/n`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Argument(format!("shard {s:?}: expected i/n with 0 <= i < n, e.g. 0/4"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        Shard::new(i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Options of [`filter_source`]. The operating point is the identifier's,
/// with each field the caller sets replacing its counterpart.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterOptions {
    /// Images decoded and scored together ([`DEFAULT_BATCH`]).
    pub batch_size: usize,
    /// Flag when `noise_score >= threshold` (= `label_score <= 1 - threshold`)
    /// instead of the identifier's rule.
    pub threshold: Option<f32>,
    /// Flagging rule instead of the identifier's (`threshold` wins over it).
    pub rule: Option<Rule>,
    /// Flag at most this fraction of the scored labelled samples.
    pub max_flag_rate: Option<f32>,
    /// Never flag so many samples of a class that fewer than this many stay.
    pub min_per_class: Option<usize>,
    /// Score floor ([`OperatingPoint::min_score`]); `Some(0.0)` removes the
    /// identifier's.
    pub min_score: Option<f32>,
    /// Which classes the score floor spares ([`OperatingPoint::floor_exempt`]).
    pub floor_exempt: Option<FloorExempt>,
    /// Samples of classes the identifier does not know.
    pub unknown_class: UnknownClass,
    /// Which samples to process.
    pub shard: Shard,
    /// Which network decides instead of the bundle's scorer
    /// ([`Identifier::check_scorer`]).
    pub scorer: Option<Scorer>,
}

impl Default for FilterOptions {
    fn default() -> Self {
        FilterOptions {
            batch_size: DEFAULT_BATCH,
            threshold: None,
            rule: None,
            max_flag_rate: None,
            min_per_class: None,
            min_score: None,
            floor_exempt: None,
            unknown_class: UnknownClass::Error,
            shard: Shard::default(),
            scorer: None,
        }
    }
}

impl FilterOptions {
    /// Checks ranges: batch size positive, threshold and rate in [0, 1].
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::Argument("batch size must be positive".into()));
        }
        // The overrides as given (before `operating_point` maps a zero
        // floor to none), checked by the operating point's own ranges.
        OperatingPoint {
            rule: self.threshold.map(Rule::Threshold).or(self.rule).unwrap_or_default(),
            max_flag_rate: self.max_flag_rate,
            min_per_class: 0,
            min_score: self.min_score,
            floor_exempt: self.floor_exempt.unwrap_or_default(),
        }
        .validate()?;
        Shard::new(self.shard.index, self.shard.count).map(|_| ())
    }

    /// `base` (an identifier's operating point) with these overrides. A
    /// rule or threshold override brings that rule's default score floor
    /// ([`score::default_min_score`]) instead of the identifier's, unless a
    /// floor is given too.
    pub fn operating_point(&self, base: &OperatingPoint) -> OperatingPoint {
        let overridden = self.threshold.map(Rule::Threshold).or(self.rule);
        OperatingPoint {
            rule: overridden.unwrap_or(base.rule),
            max_flag_rate: self.max_flag_rate.or(base.max_flag_rate),
            min_per_class: self.min_per_class.unwrap_or(base.min_per_class),
            min_score: match (self.min_score, overridden) {
                (Some(t), _) if t <= 0.0 => None,
                (Some(t), _) => Some(t),
                (None, Some(rule)) => score::default_min_score(rule),
                (None, None) => base.min_score,
            },
            floor_exempt: self.floor_exempt.unwrap_or(base.floor_exempt),
        }
    }
}

/// One sample of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FilterRow {
    /// The sample's path as its source names it (relative to a folder or
    /// list, or a bundle member).
    pub path: String,
    /// Given class name; empty for unlabelled data.
    pub given_label: String,
    /// The identifier's (prior-adjusted) prediction; empty on error.
    pub predicted_label: String,
    /// Probability of the given label (of the predicted one when
    /// unlabelled); `None` on error.
    pub label_score: Option<f32>,
    /// `1 - label_score`, the identifier's noise score; `None` on error.
    pub noise_score: Option<f32>,
    /// Suspected label issue under the operating point (never for errors
    /// or unlabelled samples).
    pub is_label_issue: bool,
    /// Why the sample was not scored.
    pub error: Option<String>,
}

/// The result of a filter run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FilterReport {
    /// One row per processed sample, in source order.
    pub rows: Vec<FilterRow>,
    /// Wall-clock seconds of the run.
    pub seconds: f64,
}

/// Quotes a CSV field when it holds a comma, quote, newline or surrounding
/// space (RFC 4180: inner quotes doubled).
pub fn csv_field(s: &str) -> Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(s)
    }
}

impl FilterReport {
    /// The report of a training run on `set`, in the same columns as a
    /// filter report: one row per training sample with the final round's
    /// flags (the ones stage 2 trains around), its adjusted prediction and
    /// `label_score = 1 - noise_score`. For h2e that is the adjusted
    /// probability of the given label; for the baselines, one minus the
    /// detector's own score (small-loss: its probability of being clean).
    pub fn from_scores(set: &TensorSet, scores: &Scores, seconds: f64) -> Result<FilterReport> {
        let n = set.len();
        if [scores.pred.len(), scores.noise_score.len(), scores.flagged.len(), set.paths.len()].iter().any(|&l| l != n)
        {
            return Err(Error::Argument(format!(
                "scores of {} samples (paths: {}) do not match a set of {n}",
                scores.flagged.len(),
                set.paths.len()
            )));
        }
        let name = |c: usize| {
            set.classes
                .get(c)
                .cloned()
                .ok_or_else(|| Error::Argument(format!("class {c} is not below the set's {}", set.classes.len())))
        };
        let rows = (0..n)
            .map(|i| {
                let noise = scores.noise_score[i];
                Ok(FilterRow {
                    path: set.paths[i].clone(),
                    given_label: name(set.labels[i])?,
                    predicted_label: name(scores.pred[i])?,
                    label_score: Some(1.0 - noise),
                    noise_score: Some(noise),
                    is_label_issue: scores.flagged[i],
                    error: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(FilterReport { rows, seconds })
    }

    /// Rows flagged as label issues.
    pub fn flagged(&self) -> usize {
        self.rows.iter().filter(|r| r.is_label_issue).count()
    }

    /// Rows with an error.
    pub fn errors(&self) -> usize {
        self.rows.iter().filter(|r| r.error.is_some()).count()
    }

    /// Writes the CSV report ([`CSV_COLUMNS`]; booleans `true`/`false`,
    /// missing values empty).
    pub fn write_csv(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let mut w = std::io::BufWriter::new(w);
        writeln!(w, "{}", CSV_COLUMNS.join(","))?;
        for r in &self.rows {
            writeln!(
                w,
                "{},{},{},{},{},{}",
                csv_field(&r.path),
                csv_field(&r.given_label),
                csv_field(&r.predicted_label),
                r.label_score.map(|s| s.to_string()).unwrap_or_default(),
                r.is_label_issue,
                csv_field(r.error.as_deref().unwrap_or("")),
            )?;
        }
        w.flush()
    }

    /// Writes one JSON object per row (the CSV's fields plus `noise_score`).
    pub fn write_jsonl(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let mut w = std::io::BufWriter::new(w);
        for r in &self.rows {
            serde_json::to_writer(&mut w, r)?;
            w.write_all(b"\n")?;
        }
        w.flush()
    }
}

/// A streaming scorer: push samples one by one (from any iterator), they
/// are scored a batch at a time; [`finish`](Filter::finish) applies the
/// operating point and returns the rows.
#[derive(Debug)]
pub struct Filter<'a> {
    id: &'a Identifier,
    batch_size: usize,
    batch: PackedBatch,
    /// Row and label of each image in `batch`.
    pending: Vec<(usize, Option<usize>)>,
    rows: Vec<FilterRow>,
    /// Row of every scored labelled sample, in scoring order.
    scored: Vec<usize>,
    /// Their scores, kept for the decision at the end.
    scoring: SetScoring<'a>,
}

impl<'a> Filter<'a> {
    /// A scorer with the bundle's scorer and operating point `op`, scoring
    /// `batch_size` images at a time.
    pub fn new(id: &'a Identifier, op: OperatingPoint, batch_size: usize) -> Result<Filter<'a>> {
        Filter::with_scorer(id, id.scorer(), op, batch_size)
    }

    /// [`new`](Filter::new) with `scorer` deciding ([`Identifier::check_scorer`]).
    pub fn with_scorer(
        id: &'a Identifier,
        scorer: Scorer,
        op: OperatingPoint,
        batch_size: usize,
    ) -> Result<Filter<'a>> {
        if batch_size == 0 {
            return Err(Error::Argument("batch size must be positive".into()));
        }
        let batch = PackedBatch::new(id.channels())?;
        Ok(Filter {
            id,
            batch_size,
            batch,
            pending: Vec::new(),
            rows: Vec::new(),
            scored: Vec::new(),
            scoring: SetScoring::new(id, scorer, op)?,
        })
    }

    /// Adds a sample. `label` indexes the identifier's classes (`None`:
    /// unlabelled); a failed `image` becomes an error row.
    pub fn push(&mut self, path: String, label: Option<usize>, image: Result<Image>) -> Result<()> {
        let classes = self.id.classes();
        if let Some(l) = label.filter(|&l| l >= classes.len()) {
            return Err(Error::Argument(format!(
                "{path}: label {l} is not below the identifier's {} classes",
                classes.len()
            )));
        }
        let given = label.map(|l| classes[l].clone()).unwrap_or_default();
        let image = match image {
            Ok(image) => image,
            Err(e) => {
                self.push_error(path, given, e.to_string());
                return Ok(());
            }
        };
        let s = self.id.input_size() as u32;
        let image = resize(&image, self.id.channels() as u8, s, s);
        self.batch.push(s, s, &image.pixels)?;
        self.pending.push((self.rows.len(), label));
        self.rows.push(FilterRow {
            path,
            given_label: given,
            predicted_label: String::new(),
            label_score: None,
            noise_score: None,
            is_label_issue: false,
            error: None,
        });
        if self.batch.len() >= self.batch_size {
            self.flush()?;
        }
        Ok(())
    }

    /// Adds a row for a sample that is not scored.
    pub fn push_error(&mut self, path: String, given_label: String, error: String) {
        self.rows.push(FilterRow {
            path,
            given_label,
            predicted_label: String::new(),
            label_score: None,
            noise_score: None,
            is_label_issue: false,
            error: Some(error),
        });
    }

    /// Rows so far.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True before the first sample.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, PackedBatch::new(self.id.channels())?);
        let labels: Vec<Option<usize>> = self.pending.iter().map(|p| p.1).collect();
        let shown = self.scoring.push(&batch, &labels)?;
        for ((row, label), s) in self.pending.drain(..).zip(shown) {
            show(&mut self.rows[row], self.id, &s);
            if label.is_some() {
                self.scored.push(row);
            }
        }
        Ok(())
    }

    /// Scores what is pending, decides the flags over every scored labelled
    /// sample, and returns the rows in push order.
    pub fn finish(mut self) -> Result<Vec<FilterRow>> {
        self.flush()?;
        let (scores, shown) = self.scoring.finish()?;
        for ((&row, flag), s) in self.scored.iter().zip(scores.flagged).zip(shown) {
            show(&mut self.rows[row], self.id, &s);
            self.rows[row].is_label_issue = flag;
        }
        Ok(self.rows)
    }
}

/// Sets a row's prediction and scores from `s`.
fn show(row: &mut FilterRow, id: &Identifier, s: &SampleScore) {
    row.predicted_label = id.classes()[s.pred].clone();
    row.label_score = Some(s.prob_label);
    row.noise_score = Some(s.noise_score);
}

/// The identifier's label for each of `src`'s classes, matched by name,
/// or else by the folder name a class gets when unpacked (`T-shirt/top` is
/// the folder `T-shirt_top`); `None`: unknown. Errors on an unknown class
/// that has samples, unless `unknown` is [`UnknownClass::Skip`].
fn class_map(id: &Identifier, src: &dyn Source, unknown: UnknownClass) -> Result<Vec<Option<usize>>> {
    let known = id.classes();
    let find =
        |c: &String| known.iter().position(|k| k == c).or_else(|| known.iter().position(|k| safe_component(k) == *c));
    let map: Vec<Option<usize>> = src.classes().iter().map(find).collect();
    let mut used = vec![false; map.len()];
    for s in src.samples() {
        if let Some(u) = used.get_mut(s.label) {
            *u = true;
        }
    }
    let missing: Vec<&str> =
        (0..map.len()).filter(|&c| used[c] && map[c].is_none()).map(|c| src.classes()[c].as_str()).collect();
    if !missing.is_empty() && unknown == UnknownClass::Error {
        return Err(Error::dataset(
            src.location(),
            format!(
                "{} class(es) unknown to the identifier: {} (it knows {}); skip their samples with --unknown-class skip",
                missing.len(),
                missing.join(", "),
                id.classes().join(", ")
            ),
        ));
    }
    Ok(map)
}

/// Decodes `indices` of `src` on all cores, converted and resized to
/// `channels` x `size` x `size`.
pub(crate) fn decode(src: &dyn Source, indices: &[usize], channels: u8, size: u32) -> Vec<Result<Image>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = indices.len().div_ceil(threads).max(1);
    let load = |i: usize| src.load(i).map(|img| resize(&img, channels, size, size));
    std::thread::scope(|s| {
        let parts: Vec<_> =
            indices.chunks(chunk).map(|c| s.spawn(move || c.iter().map(|&i| load(i)).collect::<Vec<_>>())).collect();
        parts.into_iter().flat_map(|p| p.join().expect("image decoder panicked")).collect()
    })
}

/// Filters the samples of `src` (those of `opts.shard`) with `id`.
///
/// Source classes are matched to the identifier's by name. Unlabelled
/// sources get predictions and `label_score` (the top probability) only,
/// never flags.
pub fn filter_source(
    id: &Identifier,
    src: &dyn Source,
    opts: &FilterOptions,
    progress: &dyn Progress,
) -> Result<FilterReport> {
    opts.validate()?;
    let t0 = Instant::now();
    let labelled = src.labelled();
    let map = if labelled { class_map(id, src, opts.unknown_class)? } else { Vec::new() };
    // Per selected sample: its identifier label, or Err(class name) when unknown.
    let plan: Vec<(usize, std::result::Result<Option<usize>, &str>)> = (0..src.samples().len())
        .filter(|&i| opts.shard.contains(i))
        .map(|i| {
            let l = src.samples()[i].label;
            let label = match labelled {
                false => Ok(None),
                true => map
                    .get(l)
                    .copied()
                    .flatten()
                    .map(Some)
                    .ok_or_else(|| src.classes().get(l).map_or("?", |c| c.as_str())),
            };
            (i, label)
        })
        .collect();
    let total = plan.len();
    let scorer = opts.scorer.unwrap_or(id.scorer());
    let mut filter =
        Filter::with_scorer(id, scorer, opts.operating_point(&id.config().operating_point), opts.batch_size)?;
    let (channels, size) = (id.channels() as u8, id.input_size() as u32);
    progress.event(Event::Start { stage: "filter", total: total as u64 });
    std::thread::scope(|s| -> Result<()> {
        // Decode the next batch while this one is scored.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let plan = &plan;
        s.spawn(move || {
            for chunk in plan.chunks(opts.batch_size) {
                let wanted: Vec<usize> = chunk.iter().filter(|p| p.1.is_ok()).map(|p| p.0).collect();
                if tx.send((chunk, decode(src, &wanted, channels, size))).is_err() {
                    break;
                }
            }
        });
        let mut done = 0;
        for (chunk, images) in rx {
            let mut images = images.into_iter();
            for &(i, label) in chunk {
                let path = src.samples()[i].path.clone();
                match label {
                    Ok(label) => filter.push(path, label, images.next().expect("one image per wanted sample"))?,
                    Err(name) => filter.push_error(path, name.to_string(), format!("unknown class {name}")),
                }
            }
            done += chunk.len();
            let rate = done as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            progress.event(Event::Advance { done: done as u64, message: &format!("{rate:.0} images/s") });
        }
        Ok(())
    })?;
    let report = FilterReport { rows: filter.finish()?, seconds: t0.elapsed().as_secs_f64() };
    progress.event(Event::Finish { summary: &format!("{} samples read", report.rows.len()) });
    Ok(report)
}

/// Noise-detection quality of a filter run against the ground truth the
/// source carries (NLT bundles), per split: `(split, metrics)` for every
/// split whose scored, labelled rows all have a known true label. Empty
/// when the source has no ground truth.
pub fn evaluate(
    report: &FilterReport,
    src: &dyn Source,
) -> Result<Vec<(crate::data::Split, crate::metrics::DetectionMetrics)>> {
    let by_path = index_by_path(src);
    let classes = src.classes().len();
    let mut out = Vec::new();
    for split in crate::data::Split::ALL {
        let (mut flagged, mut score, mut truth, mut labels) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut complete = true;
        for row in &report.rows {
            let (Some(&i), Some(noise)) = (by_path.get(row.path.as_str()), row.noise_score) else { continue };
            let meta = &src.samples()[i];
            if meta.split != split || row.given_label.is_empty() {
                continue;
            }
            let Some(t) = meta.true_label else {
                complete = false;
                break;
            };
            flagged.push(row.is_label_issue);
            score.push(noise);
            truth.push(t != meta.label);
            labels.push(meta.label);
        }
        if complete && !labels.is_empty() {
            out.push((split, crate::metrics::detection_metrics(&flagged, &score, &truth, &labels, classes)?));
        }
    }
    Ok(out)
}

/// Sample index of each path of `src`.
fn index_by_path(src: &dyn Source) -> std::collections::HashMap<&str, usize> {
    src.samples().iter().enumerate().map(|(i, s)| (s.path.as_str(), i)).collect()
}

fn is_zip(out: &Path) -> bool {
    out.extension().is_some_and(|e| e.eq_ignore_ascii_case("zip"))
}

/// Checks that [`export`] may write to `out`: a `.zip` path that is not a
/// folder, or a folder path that is new or an empty folder. Call it before
/// long work so a bad destination fails first.
pub fn check_export_target(out: &Path) -> Result<()> {
    let refuse = |why: &str| {
        Err(Error::io("exporting into", out, std::io::Error::new(std::io::ErrorKind::AlreadyExists, why.to_string())))
    };
    match (is_zip(out), out.is_dir(), out.is_file()) {
        (true, true, _) => refuse("it is a folder; give a .zip file name or a folder without .zip"),
        (false, _, true) => refuse("it is a file; give a new or empty folder, or a .zip path"),
        (false, true, _) if std::fs::read_dir(out).map_err(|e| Error::io("reading", out, e))?.next().is_some() => {
            refuse("the folder exists and is not empty")
        }
        _ => Ok(()),
    }
}

/// Writes the samples of `src` that `report` kept (`flagged == false`) or
/// flagged (`true`) to `out`: a dataset bundle when `out` ends in `.zip`,
/// else an ImageFolder laid out `out/<split>/<class>/<file>` (as `bundle
/// unpack` gives, which `h2e` reads again). Images are copied as stored,
/// with their given label (and ground truth when the source has it);
/// error rows are left out. Atomic: nothing appears at `out` unless all
/// of it was written. Returns the number of images written.
pub fn export(report: &FilterReport, src: &dyn Source, flagged: bool, out: &Path) -> Result<usize> {
    check_export_target(out)?;
    let by_path = index_by_path(src);
    let folder = !is_zip(out);
    let zip_path = match folder {
        true => {
            let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
            out.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .join(format!(".{name}.{}.export.zip", std::process::id()))
        }
        false => out.to_path_buf(),
    };
    let mut writer = BundleWriter::create(&zip_path, src.classes().to_vec())?;
    for row in report.rows.iter().filter(|r| r.error.is_none() && r.is_label_issue == flagged) {
        let Some(&i) = by_path.get(row.path.as_str()) else { continue };
        let meta = &src.samples()[i];
        let bytes = src.read_encoded(i)?;
        let file = row.path.rsplit('/').next().unwrap_or(&row.path);
        writer.add(meta.split, meta.label, meta.true_label, file, &bytes)?;
    }
    let n = writer.len();
    let what = if flagged { "flagged" } else { "kept" };
    writer.finish(Some(serde_json::json!({"made_by": "h2e filter", what: src.location()})))?;
    if folder {
        let unpacked = crate::bundle::unpack(&zip_path, out);
        let _ = std::fs::remove_file(&zip_path);
        unpacked?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_and_quoting() {
        assert_eq!("1/3".parse::<Shard>().unwrap(), Shard { index: 1, count: 3 });
        for bad in ["3/3", "1", "a/2", "0/0", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert!(Shard::new(1, 3).unwrap().contains(4));
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,\"b\"\n"), "\"a,\"\"b\"\"\n\"");
    }

    #[test]
    fn overrides_replace_only_what_is_given() {
        let base = OperatingPoint {
            rule: Rule::Argmax,
            max_flag_rate: Some(0.5),
            min_per_class: 3,
            min_score: Some(0.9),
            floor_exempt: FloorExempt::AnyFlip,
        };
        let o = FilterOptions { threshold: Some(0.2), min_per_class: Some(0), ..Default::default() };
        assert_eq!(
            o.operating_point(&base),
            OperatingPoint {
                rule: Rule::Threshold(0.2),
                max_flag_rate: Some(0.5),
                min_per_class: 0,
                min_score: None,
                floor_exempt: FloorExempt::AnyFlip,
            }
        );
        let majority = FilterOptions { floor_exempt: Some(FloorExempt::MajorityFlip), ..Default::default() };
        assert_eq!(majority.operating_point(&base).floor_exempt, FloorExempt::MajorityFlip);
        assert!(FilterOptions { batch_size: 0, ..Default::default() }.validate().is_err());
        assert!(FilterOptions { max_flag_rate: Some(1.5), ..Default::default() }.validate().is_err());
        // A floor replaces the identifier's; zero removes it.
        let floor = |t| FilterOptions { min_score: Some(t), ..Default::default() }.operating_point(&base).min_score;
        assert_eq!(floor(0.95), Some(0.95));
        assert_eq!(floor(0.0), None);
        // Without one, the identifier's floor stays with its rule; another
        // rule brings its own default (none for a threshold or argmax).
        assert_eq!(FilterOptions::default().operating_point(&base).min_score, Some(0.9));
        assert_eq!(o.operating_point(&base).min_score, None);
        let rule = |r| FilterOptions { rule: Some(r), ..Default::default() }.operating_point(&base).min_score;
        assert_eq!(rule(Rule::Argmax), None);
        assert_eq!(rule(Rule::AgreementNoiseRate), Some(crate::score::DEFAULT_MIN_SCORE));
        assert!(FilterOptions { min_score: Some(1.5), ..Default::default() }.validate().is_err());
    }
}
