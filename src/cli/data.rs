//! `h2e bundle ...` and `h2e make-nlt`.

use super::term::TermProgress;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use h2e::bundle::{self, PackOptions};
use h2e::data::{open_source, Source};
use h2e::nlt::{make_nlt as make, NltConfig, NoiseKind};
use std::path::{Path, PathBuf};

/// `h2e bundle` subcommands.
#[derive(Debug, Subcommand)]
pub enum BundleCmd {
    /// Pack an ImageFolder (ROOT/<class>/<img> or ROOT/<split>/<class>/<img>) into a bundle.
    Pack {
        /// The folder to pack.
        dir: PathBuf,
        /// Output bundle (.zip).
        #[arg(short, long)]
        output: PathBuf,
        /// Skip images that fail to decode, listing them, instead of stopping.
        #[arg(long)]
        skip_bad: bool,
    },
    /// Print classes and per-split, per-class counts (noisy counts when ground truth is known).
    Inspect {
        /// Bundle, folder or `fashion-mnist`.
        bundle: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check structure, manifest, checksums and that every image decodes.
    Verify {
        /// The bundle.
        bundle: PathBuf,
    },
    /// Extract a bundle to a folder (which must not exist or be empty).
    Unpack {
        /// The bundle.
        bundle: PathBuf,
        /// Destination folder.
        #[arg(short, long)]
        output: PathBuf,
    },
}

/// `h2e make-nlt` flags.
#[derive(Debug, Args)]
pub struct MakeNltArgs {
    /// Where the clean images come from: `fashion-mnist` (Debian's package), a folder or a bundle.
    #[arg(long, default_value = "fashion-mnist")]
    pub source: PathBuf,
    /// Imbalance ratio rho: class c keeps floor(n_max * rho^(-c/(C-1))) training images.
    #[arg(long, default_value_t = 100.0)]
    pub imbalance: f64,
    /// Noise rate R.
    #[arg(long, default_value_t = 0.3)]
    pub noise: f64,
    /// Noise kind: sym, pair, imb or uniform.
    #[arg(long, default_value = "uniform")]
    pub kind: NoiseKind,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Training images of the head class (default: the largest source class).
    #[arg(long)]
    pub n_max: Option<usize>,
    /// Keep at most this many test images per class.
    #[arg(long)]
    pub test_per_class: Option<usize>,
    /// Pair map for `pair` noise, as the partner of each class in label order, e.g. `6,3,4,1,2,8,0,9,5,7`.
    #[arg(long, value_delimiter = ',')]
    pub pair_map: Option<Vec<usize>>,
    /// Output bundle.
    #[arg(short, long)]
    pub output: PathBuf,
}

fn open(path: &Path) -> Result<Box<dyn Source>> {
    open_source(path).with_context(|| format!("cannot open data source {}", path.display()))
}

pub fn bundle(cmd: BundleCmd) -> Result<i32> {
    let progress = TermProgress::new();
    match cmd {
        BundleCmd::Pack { dir, output, skip_bad } => {
            let src = open(&dir)?;
            let opts = PackOptions {
                skip_bad,
                provenance: Some(serde_json::json!({"packed_from": dir.display().to_string()})),
            };
            let summary = bundle::pack(src.as_ref(), &output, &opts, &mut progress.counter("pack"))
                .with_context(|| format!("packing {} into {}", dir.display(), output.display()))?;
            for s in &summary.skipped {
                eprintln!("skipped: {s}");
            }
            eprintln!("wrote {} ({} images, {} skipped)", output.display(), summary.written, summary.skipped.len());
            Ok(0)
        }
        BundleCmd::Inspect { bundle: path, json } => {
            let src = open(&path)?;
            let report = bundle::inspect(src.as_ref());
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}: {} classes", path.display(), report.classes.len());
                for split in h2e::data::Split::ALL.map(|s| s.as_str()) {
                    let Some(stats) = report.splits.get(split) else { continue };
                    println!("{split}: {} samples", stats.total);
                    for c in &stats.per_class {
                        match c.noisy {
                            Some(k) => println!(
                                "  {:<20} {:>7}  noisy {:>6} ({:.1}%)",
                                c.class,
                                c.count,
                                k,
                                100.0 * k as f64 / c.count.max(1) as f64
                            ),
                            None => println!("  {:<20} {:>7}", c.class, c.count),
                        }
                    }
                }
            }
            Ok(0)
        }
        BundleCmd::Verify { bundle: path } => {
            let report = bundle::verify(&path, &mut progress.counter("verify"))
                .with_context(|| format!("verifying {}", path.display()))?;
            for p in &report.problems {
                eprintln!("problem: {p}");
            }
            if report.problems.is_empty() {
                println!("{}: OK ({} samples)", path.display(), report.checked);
                Ok(0)
            } else {
                println!("{}: {} problem(s) in {} samples", path.display(), report.problems.len(), report.checked);
                Ok(3)
            }
        }
        BundleCmd::Unpack { bundle: path, output } => {
            let n = bundle::unpack(&path, &output)
                .with_context(|| format!("unpacking {} into {}", path.display(), output.display()))?;
            eprintln!("wrote {n} files under {}", output.display());
            Ok(0)
        }
    }
}

pub fn make_nlt(a: MakeNltArgs) -> Result<i32> {
    let src = open(&a.source)?;
    if src.samples().is_empty() {
        bail!("{}: no samples", a.source.display());
    }
    let cfg = NltConfig {
        imbalance: a.imbalance,
        noise: a.noise,
        kind: a.kind,
        seed: a.seed,
        n_max: a.n_max,
        test_per_class: a.test_per_class,
        pair_map: a.pair_map,
    };
    let progress = TermProgress::new();
    let summary = make(src.as_ref(), &cfg, &a.output, &mut progress.counter("make-nlt"))
        .with_context(|| format!("building {}", a.output.display()))?;
    eprintln!(
        "wrote {}: train {} ({} noisy), test {}",
        a.output.display(),
        summary.counts.iter().sum::<usize>(),
        summary.noisy.iter().sum::<usize>(),
        summary.test
    );
    Ok(0)
}
