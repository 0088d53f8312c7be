//! `make-nlt`: noisy long-tailed benchmark bundles with known ground truth.
//!
//! Class `c` keeps `floor(n_max * rho^(-c/(C-1)))` training images, then label
//! noise of one of four kinds is injected (see [`NoiseKind`]). Everything is
//! driven by [`Rng`] seeded from the config, so a given source and seed give
//! the same bundle byte for byte.

use crate::bundle::BundleWriter;
use crate::data::{Source, Split};
use crate::error::{Error, Result};
use crate::rng::Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How labels are corrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoiseKind {
    /// `round(R*N)` samples chosen uniformly, each relabelled uniformly to another class.
    Sym,
    /// Each sample flips with probability R to a fixed partner class.
    Pair,
    /// `round(R*N)` samples chosen uniformly, relabelled to `j != y` with probability ∝ `n_j`.
    Imb,
    /// In every class c, `floor(R*n_c)` of the samples labelled c are images
    /// of other classes from the unused pool: the same noise rate in every
    /// class, tail included (H2E's hard-noise setting).
    Uniform,
}

impl std::str::FromStr for NoiseKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sym" => Ok(NoiseKind::Sym),
            "pair" => Ok(NoiseKind::Pair),
            "imb" => Ok(NoiseKind::Imb),
            "uniform" => Ok(NoiseKind::Uniform),
            _ => Err(Error::Argument(format!("unknown noise kind {s:?} (expected sym, pair, imb or uniform)"))),
        }
    }
}

/// Parameters of a benchmark draw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NltConfig {
    /// Imbalance ratio rho = n_max / n_min (1 = balanced).
    pub imbalance: f64,
    /// Noise rate R in [0, 1).
    pub noise: f64,
    /// Noise kind.
    pub kind: NoiseKind,
    /// Seed of every random choice.
    pub seed: u64,
    /// Training images of the head class; default: the largest class of the source.
    pub n_max: Option<usize>,
    /// Keep at most this many test images per class (first in source order).
    pub test_per_class: Option<usize>,
    /// Partner of each class for `pair` noise; default: Fashion-MNIST's
    /// confusable pairs for its 10 classes, else `c -> (c+1) % C`.
    pub pair_map: Option<Vec<usize>>,
}

impl Default for NltConfig {
    fn default() -> Self {
        NltConfig {
            imbalance: 100.0,
            noise: 0.3,
            kind: NoiseKind::Uniform,
            seed: 0,
            n_max: None,
            test_per_class: None,
            pair_map: None,
        }
    }
}

/// Long-tailed class sizes `floor(n_max * rho^(-c/(C-1)))`.
pub fn lt_counts(n_max: usize, classes: usize, rho: f64) -> Vec<usize> {
    if classes == 1 {
        return vec![n_max];
    }
    (0..classes)
        .map(|c| {
            let x = n_max as f64 * rho.powf(-(c as f64) / (classes as f64 - 1.0));
            (x + 1e-9).floor() as usize
        })
        .collect()
}

/// The default pair map: Fashion-MNIST's confusable pairs when the classes
/// are Fashion-MNIST's, else `c -> (c+1) % C`.
pub fn default_pair_map(classes: &[String]) -> Vec<usize> {
    if classes == crate::data::fashion_mnist_classes().as_slice() {
        // T-shirt<->Shirt, Trouser<->Dress, Pullover<->Coat, Sandal<->Bag, Sneaker<->Ankle boot
        vec![6, 3, 4, 1, 2, 8, 0, 9, 5, 7]
    } else {
        (0..classes.len()).map(|c| (c + 1) % classes.len()).collect()
    }
}

/// What a draw produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NltSummary {
    /// Training images per given label.
    pub counts: Vec<usize>,
    /// Noisy training images per given label.
    pub noisy: Vec<usize>,
    /// Test images written.
    pub test: usize,
}

/// The drawn training samples as `(source index, given label)` pairs, and
/// the long-tailed count of each class.
type Drawn = (Vec<(usize, usize)>, Vec<usize>);

/// Chooses the training samples: `(source index, given label)` pairs.
fn draw(source: &dyn Source, cfg: &NltConfig) -> Result<Drawn> {
    let c_n = source.classes().len();
    let loc = source.location();
    if cfg.imbalance.is_nan() || cfg.imbalance < 1.0 {
        return Err(Error::Argument(format!("--imbalance must be >= 1, got {}", cfg.imbalance)));
    }
    if !(0.0..1.0).contains(&cfg.noise) {
        return Err(Error::Argument(format!("--noise must be in [0, 1), got {}", cfg.noise)));
    }
    if c_n < 2 {
        return Err(Error::dataset(loc, "need at least two classes"));
    }
    let mut rng = Rng::new(cfg.seed);
    let mut pools: Vec<Vec<usize>> = vec![Vec::new(); c_n];
    for (i, s) in source.samples().iter().enumerate() {
        if s.split == Split::Train {
            pools[s.true_label.unwrap_or(s.label)].push(i);
        }
    }
    for p in pools.iter_mut() {
        rng.shuffle(p);
    }
    let n_max = cfg.n_max.unwrap_or_else(|| pools.iter().map(|p| p.len()).max().unwrap_or(0));
    let counts = lt_counts(n_max, c_n, cfg.imbalance);
    let r = cfg.noise;
    let mut out: Vec<(usize, usize)> = Vec::new();
    let truth = |i: usize| source.samples()[i].true_label.unwrap_or(source.samples()[i].label);
    match cfg.kind {
        NoiseKind::Uniform => {
            let mut used = vec![false; source.samples().len()];
            let noise_n: Vec<usize> = counts.iter().map(|&n| (r * n as f64 + 1e-9).floor() as usize).collect();
            for c in 0..c_n {
                let clean = counts[c] - noise_n[c];
                if pools[c].len() < clean {
                    return Err(Error::dataset(
                        loc,
                        format!(
                            "class {:?} has {} training images, {clean} needed",
                            source.classes()[c],
                            pools[c].len()
                        ),
                    ));
                }
                for &i in &pools[c][..clean] {
                    used[i] = true;
                    out.push((i, c));
                }
            }
            // The unused pool, in a seeded order.
            let mut unused: Vec<usize> = pools.iter().flatten().copied().filter(|&i| !used[i]).collect();
            rng.shuffle(&mut unused);
            for (c, &want) in noise_n.iter().enumerate() {
                let mut candidates: Vec<usize> =
                    unused.iter().copied().filter(|&i| !used[i] && truth(i) != c).collect();
                if candidates.len() < want {
                    return Err(Error::dataset(
                        loc,
                        format!("not enough unused images of other classes to make {want} noisy samples for class {c}"),
                    ));
                }
                for k in 0..want {
                    let j = k + rng.below(candidates.len() - k);
                    candidates.swap(k, j);
                    used[candidates[k]] = true;
                    out.push((candidates[k], c));
                }
            }
        }
        kind => {
            for c in 0..c_n {
                if pools[c].len() < counts[c] {
                    return Err(Error::dataset(
                        loc,
                        format!(
                            "class {:?} has {} training images, {} needed",
                            source.classes()[c],
                            pools[c].len(),
                            counts[c]
                        ),
                    ));
                }
                out.extend(pools[c][..counts[c]].iter().map(|&i| (i, c)));
            }
            let n = out.len();
            match kind {
                NoiseKind::Sym | NoiseKind::Imb => {
                    let k = (r * n as f64).round() as usize;
                    let mut order: Vec<usize> = (0..n).collect();
                    rng.shuffle(&mut order);
                    for &p in &order[..k] {
                        let y = out[p].1;
                        let new = if kind == NoiseKind::Sym {
                            let j = rng.below(c_n - 1);
                            if j >= y {
                                j + 1
                            } else {
                                j
                            }
                        } else {
                            let w: Vec<f64> = (0..c_n).map(|j| if j == y { 0.0 } else { counts[j] as f64 }).collect();
                            rng.weighted(&w)
                        };
                        out[p].1 = new;
                    }
                }
                NoiseKind::Pair => {
                    let map = cfg.pair_map.clone().unwrap_or_else(|| default_pair_map(source.classes()));
                    if map.len() != c_n || map.iter().enumerate().any(|(c, &m)| m >= c_n || m == c) {
                        return Err(Error::Argument(format!(
                            "pair map must give every class a different partner in 0..{c_n}"
                        )));
                    }
                    for e in out.iter_mut() {
                        if rng.f64() < r {
                            e.1 = map[e.1];
                        }
                    }
                }
                NoiseKind::Uniform => unreachable!(),
            }
        }
    }
    // Grouped by given label, source order within a class.
    out.sort_by_key(|&(i, l)| (l, i));
    Ok((out, counts))
}

/// Builds the benchmark bundle at `out`. `on_progress(done, total)` is
/// called per image written.
pub fn make_nlt(
    source: &dyn Source,
    cfg: &NltConfig,
    out: &Path,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<NltSummary> {
    let (train, _) = draw(source, cfg)?;
    let c_n = source.classes().len();
    let mut test: Vec<usize> = Vec::new();
    let mut per_class = vec![0usize; c_n];
    for (i, s) in source.samples().iter().enumerate() {
        if s.split == Split::Test {
            let t = s.true_label.unwrap_or(s.label);
            if cfg.test_per_class.is_none_or(|k| per_class[t] < k) {
                per_class[t] += 1;
                test.push(i);
            }
        }
    }
    let total = train.len() + test.len();
    let mut w = BundleWriter::create(out, source.classes().to_vec())?;
    let mut summary = NltSummary { counts: vec![0; c_n], noisy: vec![0; c_n], test: test.len() };
    let file_name = |i: usize| {
        let p = &source.samples()[i].path;
        p.rsplit('/').next().unwrap_or(p).to_string()
    };
    let mut done = 0;
    for &(i, label) in &train {
        let t = source.samples()[i].true_label.unwrap_or(source.samples()[i].label);
        w.add(Split::Train, label, Some(t), &file_name(i), &source.read_encoded(i)?)?;
        summary.counts[label] += 1;
        summary.noisy[label] += (t != label) as usize;
        done += 1;
        on_progress(done, total);
    }
    for &i in &test {
        let t = source.samples()[i].true_label.unwrap_or(source.samples()[i].label);
        w.add(Split::Test, t, Some(t), &file_name(i), &source.read_encoded(i)?)?;
        done += 1;
        on_progress(done, total);
    }
    let provenance = serde_json::json!({
        "made_by": format!("h2e {} make-nlt", env!("CARGO_PKG_VERSION")),
        "config": cfg,
        "counts": summary.counts,
        "noisy": summary.noisy,
    });
    w.finish(Some(provenance))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_match_the_issue_table() {
        assert_eq!(lt_counts(6000, 10, 100.0), vec![6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]);
        assert_eq!(lt_counts(50, 5, 1.0), vec![50; 5]);
    }

    #[test]
    fn pair_map_is_an_involution_for_fashion() {
        let m = default_pair_map(&crate::data::fashion_mnist_classes());
        for c in 0..10 {
            assert_ne!(m[c], c);
            assert_eq!(m[m[c]], c);
        }
    }
}
