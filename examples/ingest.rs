//! An ingestion gate built on a saved identifier: new labelled images are
//! checked one at a time, as they arrive, and routed to a clean or a
//! quarantine folder.
//!
//! ```text
//! cargo run --release --example ingest -- IDENTIFIER.zip INCOMING_DIR OUT_DIR [--threshold T] [--device cpu]
//! ```
//!
//! Every file `INCOMING_DIR/<class>/<file>` is an arriving image labelled
//! `<class>` (matched by name to the identifier's classes, or to the folder
//! name such a class gets, e.g. `T-shirt_top` for `T-shirt/top`). Each one
//! is decoded, scored with [`Identifier::score_batch`] on a batch of one,
//! and **copied** to
//!
//! - `OUT_DIR/clean/<class>/<file>` when the identifier accepts its label, or
//! - `OUT_DIR/quarantine/<class>/<file>` when the label looks wrong (the
//!   identifier's rule, with `argmax` for `confident-learning` and
//!   `noise-rate` and `agreement` for `agreement-noise-rate` since those
//!   decide over a whole set, and its score floor outside the classes that
//!   the final training round found systematically flipped; or
//!   `noise_score >= T` with `--threshold T`), the class is unknown to the
//!   identifier, or the file is not a readable image.
//!
//! Hidden files and anything not at `<class>/<file>` are skipped. Since each
//! image is decided alone, the identifier's global caps (maximum flag rate,
//! minimum kept per class) do not apply here; `h2e filter` applies them over
//! a whole batch of data. Nothing is written outside `OUT_DIR`: class and
//! file names pass through [`safe_component`], and every copy is written
//! atomically (a re-run overwrites, and removes a stale copy from the other
//! side). `OUT_DIR/ingest.csv` lists every decision with its reason, and a
//! summary goes to stdout.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use h2e::data::{decode_image, resize, DecodeLimits};
use h2e::device::{select, DeviceChoice};
use h2e::filter::csv_field;
use h2e::fsutil::{safe_component, write_atomic};
use h2e::identifier::Identifier;
use h2e::kernels::PackedBatch;
use h2e::score::{self, OperatingPoint, Rule};

/// Route arriving images to clean/ or quarantine/ with a saved identifier.
#[derive(Debug, Parser)]
struct Args {
    /// Identifier bundle written by `h2e train`.
    identifier: PathBuf,
    /// Folder of arriving images: INCOMING_DIR/<class>/<file>.
    incoming: PathBuf,
    /// Output folder (clean/, quarantine/ and ingest.csv are written here).
    out: PathBuf,
    /// Quarantine when the noise score (1 - probability of the given label) reaches this value, instead of the identifier's rule.
    #[arg(long)]
    threshold: Option<f32>,
    /// Device: auto, wgpu, vulkan, metal, dx12, cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
}

/// Where one image went and why.
struct Decision {
    source: PathBuf,
    class: String,
    clean: bool,
    predicted: String,
    noise_score: Option<f32>,
    reason: String,
}

/// The identifier's score floor and the classes it spares.
struct Floor {
    min_score: f32,
    free: Vec<bool>,
}

/// Scores one image against its label; `Ok((clean, predicted, noise, reason))`.
fn check(
    id: &Identifier,
    op: &OperatingPoint,
    floor: Option<&Floor>,
    bytes: &[u8],
    name: &str,
    label: usize,
) -> h2e::Result<(bool, String, f32, String)> {
    let s = id.input_size() as u32;
    let image = resize(&decode_image(bytes, name, &DecodeLimits::default())?, id.channels() as u8, s, s);
    let mut batch = PackedBatch::new(id.channels())?;
    batch.push(s, s, &image.pixels)?;
    let score = id.score_batch(&batch, &[Some(label)])?[0];
    let floored = floor.is_some_and(|f| score.noise_score < f.min_score && !f.free[label]);
    let flagged = score::apply(&[score], None, &[label], id.classes().len(), op)?.flagged[0] && !floored;
    let predicted = id.classes()[score.pred].clone();
    let reason = match (flagged, op.rule) {
        (false, _) => String::new(),
        (true, Rule::Threshold(t)) => format!("noise score {:.3} >= {t}", score.noise_score),
        (true, _) => format!("looks like {predicted}"),
    };
    Ok((!flagged, predicted, score.noise_score, reason))
}

/// Directory entries sorted by name, hidden ones left out.
fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let p = e.with_context(|| format!("cannot list {}", dir.display()))?.path();
        if !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

fn main() -> Result<()> {
    let a = Args::parse();
    if a.threshold.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
        bail!("--threshold must be in [0, 1]");
    }
    let device = select(a.device)?;
    let id = Identifier::open(&a.identifier, device.device)
        .with_context(|| format!("cannot open identifier {}", a.identifier.display()))?;
    // Per-image decisions: the rule alone, no global caps. Confident
    // learning decides over a whole set, so one image at a time it becomes
    // the argmax rule, and the capped agreement rule the agreement rule.
    let base = match id.config().operating_point.rule {
        Rule::ConfidentLearning | Rule::NoiseRate => Rule::Argmax,
        Rule::AgreementNoiseRate => Rule::Agreement,
        rule => rule,
    };
    let op = OperatingPoint {
        rule: a.threshold.map_or(base, Rule::Threshold),
        max_flag_rate: None,
        min_per_class: 0,
        min_score: None,
        floor_exempt: id.config().operating_point.floor_exempt,
    };
    // The identifier's score floor spares the classes of systematic flips,
    // which one image cannot show: take them from what the final training
    // round saw over the whole training set (an identifier saved without
    // that record floors every class).
    let saved = &id.config().operating_point;
    let floor = match (a.threshold, saved.min_score) {
        (None, Some(t)) => {
            let estimates = id.report().and_then(|r| r.rounds.last()).map(|r| r.class_estimates.as_slice());
            let free = match estimates {
                Some(e) if saved.rule == Rule::AgreementNoiseRate && e.len() == id.classes().len() => {
                    score::floor_free_classes(e, saved.floor_exempt)
                }
                _ => vec![false; id.classes().len()],
            };
            Some(Floor { min_score: t, free })
        }
        _ => None,
    };
    let existed = a.out.exists();
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let canon = |p: &Path| p.canonicalize().with_context(|| format!("cannot open {}", p.display()));
    if canon(&a.out)?.starts_with(canon(&a.incoming)?) {
        if !existed {
            let _ = std::fs::remove_dir(&a.out);
        }
        bail!("OUT_DIR {} is inside INCOMING_DIR {}; put it elsewhere", a.out.display(), a.incoming.display());
    }
    let t0 = Instant::now();
    let mut log: Vec<Decision> = Vec::new();
    for class_dir in entries(&a.incoming)? {
        if !class_dir.is_dir() {
            eprintln!("skipping {}: not in a class folder", class_dir.display());
            continue;
        }
        let class = class_dir.file_name().expect("listed entry").to_string_lossy().into_owned();
        let label = id.classes().iter().position(|k| *k == class || safe_component(k) == class);
        for file in entries(&class_dir)? {
            if file.is_dir() {
                eprintln!("skipping {}: a folder inside a class folder", file.display());
                continue;
            }
            let name = file.display().to_string();
            // The image arrives: read it, decide, route it.
            let bytes = match std::fs::read(&file) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("cannot read {name}: {e}; left where it is");
                    continue;
                }
            };
            let (clean, predicted, noise_score, reason) = match label {
                None => (
                    false,
                    String::new(),
                    None,
                    format!("unknown class {class} (the identifier knows {})", id.classes().join(", ")),
                ),
                Some(l) => match check(&id, &op, floor.as_ref(), &bytes, &name, l) {
                    Ok((clean, p, s, r)) => (clean, p, Some(s), r),
                    Err(e) => (false, String::new(), None, format!("unreadable: {e}")),
                },
            };
            let rel = Path::new(&safe_component(&class))
                .join(safe_component(&file.file_name().expect("file").to_string_lossy()));
            let (to, other) = if clean { ("clean", "quarantine") } else { ("quarantine", "clean") };
            let dest = a.out.join(to).join(&rel);
            std::fs::create_dir_all(dest.parent().expect("has a parent"))
                .with_context(|| format!("cannot create {}", dest.display()))?;
            write_atomic(&dest, &bytes).with_context(|| format!("cannot write {}", dest.display()))?;
            let stale = a.out.join(other).join(&rel);
            if stale.is_file() {
                std::fs::remove_file(&stale).with_context(|| format!("cannot remove stale {}", stale.display()))?;
            }
            if !clean {
                println!("quarantine {}: {reason}", rel.display());
            }
            log.push(Decision { source: file, class: class.clone(), clean, predicted, noise_score, reason });
        }
    }
    let mut csv = String::from("path,class,destination,predicted_label,noise_score,reason\n");
    for d in &log {
        csv.push_str(&format!(
            "{},{},{},{},{},{}\n",
            csv_field(&d.source.display().to_string()),
            csv_field(&d.class),
            if d.clean { "clean" } else { "quarantine" },
            csv_field(&d.predicted),
            d.noise_score.map(|s| s.to_string()).unwrap_or_default(),
            csv_field(&d.reason)
        ));
    }
    let log_path = a.out.join("ingest.csv");
    write_atomic(&log_path, csv.as_bytes()).with_context(|| format!("cannot write {}", log_path.display()))?;
    let clean = log.iter().filter(|d| d.clean).count();
    let unknown = log.iter().filter(|d| d.reason.starts_with("unknown class")).count();
    let unreadable = log.iter().filter(|d| d.reason.starts_with("unreadable")).count();
    println!(
        "ingest: {} images in {:.1}s on {}: {clean} clean, {} quarantined ({} suspected label issues, {unknown} unknown class, {unreadable} unreadable); log {}",
        log.len(),
        t0.elapsed().as_secs_f64(),
        device.description,
        log.len() - clean,
        log.len() - clean - unknown - unreadable,
        log_path.display()
    );
    Ok(())
}
