//! Baseline noise detectors, as pure functions over model outputs, so that
//! the engine runs them on the same backbone and schedule as H2E and scores
//! them with the same [`crate::metrics`].
//!
//! - [`ce`]: flag when the in-sample prediction differs from the label.
//! - [`small_loss`]: a two-component 1-D Gaussian mixture on the per-sample
//!   losses, as DivideMix selects clean samples; flag when p(clean) < 0.5.
//! - [`confident_learning`]: cleanlab's confident learning with its default
//!   `prune_by_noise_rate` filter, on out-of-sample probabilities (see
//!   [`kfold_indices`] for the folds).
//!
//! Probability matrices are row-major `[n, classes]` `f32` slices. The
//! confident-learning pieces ([`confident_thresholds`], [`confident_joint`],
//! [`calibrate_confident_joint`], [`noise_rates`], [`prune_by_noise_rate`])
//! take any probability matrix, e.g. H2E's adjusted probabilities.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::metrics::label_counts;
use crate::rng::Rng;

/// Output of a detector: one flag and one score per sample.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Detection {
    /// Flagged as mislabeled.
    pub flagged: Vec<bool>,
    /// Noise score in [0, 1], higher = more likely mislabeled (for ranking
    /// and AUROC).
    pub score: Vec<f32>,
}

fn check_probs(probs: &[f32], labels: &[usize], classes: usize) -> Result<()> {
    if classes == 0 {
        return Err(Error::Argument("number of classes must be positive".into()));
    }
    if probs.len() != labels.len() * classes {
        return Err(Error::Argument(format!(
            "probability matrix has {} values, expected {} samples x {classes} classes",
            probs.len(),
            labels.len()
        )));
    }
    match labels.iter().position(|&l| l >= classes) {
        Some(i) => Err(Error::Argument(format!("label {} of sample {i} is not below {classes} classes", labels[i]))),
        None => Ok(()),
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (k, &p) in row.iter().enumerate() {
        if p > row[best] {
            best = k;
        }
    }
    best
}

/// `1 - p[label]` for each row, clamped to [0, 1].
fn self_confidence_scores(probs: &[f32], labels: &[usize], classes: usize) -> Vec<f32> {
    probs.chunks(classes).zip(labels).map(|(row, &l)| (1.0 - row[l]).clamp(0.0, 1.0)).collect()
}

/// The `ce` baseline: flag a sample when the argmax of its (in-sample)
/// probabilities differs from its label; score `1 - p[label]`.
pub fn ce(probs: &[f32], labels: &[usize], classes: usize) -> Result<Detection> {
    check_probs(probs, labels, classes)?;
    let flagged = probs.chunks(classes).zip(labels).map(|(row, &l)| argmax(row) != l).collect();
    Ok(Detection { flagged, score: self_confidence_scores(probs, labels, classes) })
}

// ---------------------------------------------------------------- small loss

/// Settings of the two-component Gaussian mixture fit by EM.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GmmConfig {
    /// Maximum number of EM iterations.
    pub max_iter: usize,
    /// Stop when the mean log-likelihood improves by less than this.
    pub tol: f64,
    /// Added to each variance at every M-step (sklearn's `reg_covar`;
    /// DivideMix uses 5e-4), so no component collapses onto one point.
    pub var_floor: f64,
    /// Quantiles of the data where the low and high means start.
    pub init_quantiles: (f64, f64),
}

impl Default for GmmConfig {
    fn default() -> Self {
        GmmConfig { max_iter: 100, tol: 1e-6, var_floor: 5e-4, init_quantiles: (0.1, 0.9) }
    }
}

/// A fitted two-component 1-D Gaussian mixture; component 0 has the lower
/// mean.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Gmm1d {
    /// Mixing weights.
    pub weight: [f64; 2],
    /// Means, `mean[0] <= mean[1]`.
    pub mean: [f64; 2],
    /// Variances.
    pub var: [f64; 2],
    /// EM iterations run.
    pub iterations: usize,
    /// Whether the tolerance was reached before `max_iter`.
    pub converged: bool,
}

fn log_normal(x: f64, mean: f64, var: f64) -> f64 {
    -0.5 * ((x - mean).powi(2) / var + var.ln() + (2.0 * std::f64::consts::PI).ln())
}

impl Gmm1d {
    /// Weighted log densities of both components and their log-sum.
    fn log_joint(&self, x: f64) -> ([f64; 2], f64) {
        let l = [0, 1].map(|k| self.weight[k].max(1e-300).ln() + log_normal(x, self.mean[k], self.var[k]));
        let m = l[0].max(l[1]);
        (l, m + ((l[0] - m).exp() + (l[1] - m).exp()).ln())
    }

    /// Posterior probability that `x` comes from the low-mean component.
    pub fn posterior_low(&self, x: f64) -> f64 {
        let (l, total) = self.log_joint(x);
        (l[0] - total).exp()
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = (q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[pos]
}

/// Fits a two-component Gaussian mixture to `x` by EM, deterministically:
/// means start at the configured quantiles, variances at the data
/// variance, weights at one half. `x` must not be empty.
pub fn fit_gmm(x: &[f64], cfg: &GmmConfig) -> Result<Gmm1d> {
    if x.is_empty() {
        return Err(Error::Argument("cannot fit a mixture to no data".into()));
    }
    let n = x.len() as f64;
    let mut sorted = x.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mu = x.iter().sum::<f64>() / n;
    let var0 = x.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / n + cfg.var_floor;
    let mut g = Gmm1d {
        weight: [0.5, 0.5],
        mean: [quantile(&sorted, cfg.init_quantiles.0), quantile(&sorted, cfg.init_quantiles.1)],
        var: [var0, var0],
        iterations: 0,
        converged: false,
    };
    let mut prev_ll = f64::NEG_INFINITY;
    let mut resp = vec![0.0f64; x.len()];
    while g.iterations < cfg.max_iter {
        // E-step: responsibility of component 0, and the log-likelihood.
        let mut ll = 0.0;
        for (r, &v) in resp.iter_mut().zip(x) {
            let (l, total) = g.log_joint(v);
            *r = (l[0] - total).exp();
            ll += total;
        }
        ll /= n;
        // M-step.
        for k in 0..2 {
            let w: Vec<f64> = resp.iter().map(|&r| if k == 0 { r } else { 1.0 - r }).collect();
            let nk: f64 = w.iter().sum();
            if nk < 1e-12 {
                continue; // empty component: keep its parameters
            }
            let mean = w.iter().zip(x).map(|(w, v)| w * v).sum::<f64>() / nk;
            let var = w.iter().zip(x).map(|(w, v)| w * (v - mean).powi(2)).sum::<f64>() / nk;
            g.weight[k] = nk / n;
            g.mean[k] = mean;
            g.var[k] = var + cfg.var_floor;
        }
        g.iterations += 1;
        if (ll - prev_ll).abs() < cfg.tol {
            g.converged = true;
            break;
        }
        prev_ll = ll;
    }
    if g.mean[0] > g.mean[1] {
        g.weight.swap(0, 1);
        g.mean.swap(0, 1);
        g.var.swap(0, 1);
    }
    Ok(g)
}

/// Losses min-max scaled to [0, 1] (all zeros when they are all equal).
pub fn normalise_min_max(losses: &[f32]) -> Vec<f64> {
    let (lo, hi) =
        losses.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &l| (lo.min(l as f64), hi.max(l as f64)));
    let range = hi - lo;
    losses.iter().map(|&l| if range > 0.0 { (l as f64 - lo) / range } else { 0.0 }).collect()
}

/// The `small-loss` baseline (DivideMix's selection): min-max normalise
/// the per-sample `losses`, fit [`fit_gmm`], take p(clean) = posterior of
/// the low-mean component; flag when p(clean) < 0.5; score `1 - p(clean)`.
/// When all losses are equal nothing is flagged and every score is 0.
pub fn small_loss(losses: &[f32], cfg: &GmmConfig) -> Result<Detection> {
    if let Some(i) = losses.iter().position(|l| !l.is_finite()) {
        return Err(Error::Argument(format!("loss of sample {i} is not finite ({})", losses[i])));
    }
    let x = normalise_min_max(losses);
    if x.iter().all(|&v| v == 0.0) {
        return Ok(Detection { flagged: vec![false; x.len()], score: vec![0.0; x.len()] });
    }
    let g = fit_gmm(&x, cfg)?;
    let p_clean: Vec<f64> = x.iter().map(|&v| g.posterior_low(v)).collect();
    Ok(Detection {
        flagged: p_clean.iter().map(|&p| p < 0.5).collect(),
        score: p_clean.iter().map(|&p| (1.0 - p).clamp(0.0, 1.0) as f32).collect(),
    })
}

/// Per-sample cross-entropy `-ln p[label]` (probabilities floored at 1e-12),
/// the input of [`small_loss`] when only probabilities are at hand.
pub fn cross_entropy_losses(probs: &[f32], labels: &[usize], classes: usize) -> Result<Vec<f32>> {
    check_probs(probs, labels, classes)?;
    Ok(probs.chunks(classes).zip(labels).map(|(row, &l)| -(row[l].max(1e-12)).ln()).collect())
}

// ------------------------------------------------------- confident learning

/// Threshold given to a class that no sample carries: above any probability,
/// so no sample is ever confidently counted in it.
pub const EMPTY_CLASS_THRESHOLD: f64 = 2.0;

/// Slack under which a probability still counts as reaching its threshold
/// (cleanlab's `1e-6`).
const THRESHOLD_SLACK: f64 = 1e-6;

/// Per-class thresholds `t_j` = mean of `p_j` over the samples labelled `j`
/// ([`EMPTY_CLASS_THRESHOLD`] for a class without samples).
pub fn confident_thresholds(probs: &[f32], labels: &[usize], classes: usize) -> Result<Vec<f64>> {
    check_probs(probs, labels, classes)?;
    let mut sum = vec![0.0f64; classes];
    for (row, &l) in probs.chunks(classes).zip(labels) {
        sum[l] += row[l] as f64;
    }
    let counts = label_counts(labels, classes);
    Ok((0..classes).map(|j| if counts[j] > 0 { sum[j] / counts[j] as f64 } else { EMPTY_CLASS_THRESHOLD }).collect())
}

/// The class a sample is confidently counted in: among the classes whose
/// probability reaches its threshold, the most probable one; `None` when no
/// class reaches its threshold. (cleanlab takes the overall argmax when
/// two or more classes qualify; both agree unless that argmax is itself
/// below its threshold.)
pub fn confident_class(row: &[f32], thresholds: &[f64]) -> Option<usize> {
    row.iter().zip(thresholds).enumerate().filter(|(_, (&p, &t))| p as f64 >= t - THRESHOLD_SLACK).fold(
        None,
        |best: Option<usize>, (k, _)| match best {
            Some(b) if row[b] >= row[k] => Some(b),
            _ => Some(k),
        },
    )
}

/// The (uncalibrated) confident joint: `cj[i][j]` counts samples labelled
/// `i` confidently counted in class `j` ([`confident_class`]). Each diagonal
/// entry is at least 1, as in cleanlab.
pub fn confident_joint(probs: &[f32], labels: &[usize], classes: usize, thresholds: &[f64]) -> Result<Vec<Vec<usize>>> {
    check_probs(probs, labels, classes)?;
    if thresholds.len() != classes {
        return Err(Error::Argument(format!("{} thresholds for {classes} classes", thresholds.len())));
    }
    let mut cj = vec![vec![0usize; classes]; classes];
    for (row, &l) in probs.chunks(classes).zip(labels) {
        if let Some(j) = confident_class(row, thresholds) {
            cj[l][j] += 1;
        }
    }
    for (i, r) in cj.iter_mut().enumerate() {
        r[i] = r[i].max(1);
    }
    Ok(cj)
}

/// Rounds non-negative `values` to integers whose sum is the rounded sum
/// of `values`, by giving the leftover units to the largest fractional
/// parts (ties to the lower index).
fn round_preserving_sum(values: &[f64]) -> Vec<usize> {
    let target = values.iter().sum::<f64>().round() as usize;
    let mut out: Vec<usize> = values.iter().map(|v| v.max(0.0).floor() as usize).collect();
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| (values[b] - values[b].floor()).total_cmp(&(values[a] - values[a].floor())).then(a.cmp(&b)));
    let missing = target.saturating_sub(out.iter().sum());
    for &k in order.iter().cycle().take(missing) {
        out[k] += 1;
    }
    out
}

/// Calibrates a confident joint so that row `i` sums to `label_counts[i]`
/// (the number of samples labelled `i`), rounding each row to integers
/// that keep its total. An all-zero row stays zero.
pub fn calibrate_confident_joint(cj: &[Vec<usize>], label_counts: &[usize]) -> Vec<Vec<usize>> {
    cj.iter()
        .zip(label_counts)
        .map(|(row, &count)| {
            let total: usize = row.iter().sum();
            if total == 0 {
                return vec![0; row.len()];
            }
            let scaled: Vec<f64> = row.iter().map(|&v| v as f64 * count as f64 / total as f64).collect();
            round_preserving_sum(&scaled)
        })
        .collect()
}

/// The estimated joint distribution `Q[i][j]` of given label `i` and true
/// label `j`: the confident joint divided by its total.
pub fn estimate_joint(cj: &[Vec<usize>]) -> Vec<Vec<f64>> {
    let total: usize = cj.iter().flatten().sum();
    let denom = total.max(1) as f64;
    cj.iter().map(|row| row.iter().map(|&v| v as f64 / denom).collect()).collect()
}

/// Estimated noise rate per given label: the off-diagonal share of each
/// row of the (calibrated) confident joint, i.e. the fraction of samples
/// labelled `i` whose true class is estimated to differ (0 for an empty
/// row).
pub fn noise_rates(cj: &[Vec<usize>]) -> Vec<f64> {
    cj.iter()
        .enumerate()
        .map(|(i, row)| {
            let total: usize = row.iter().sum();
            if total == 0 {
                0.0
            } else {
                (total - row[i]) as f64 / total as f64
            }
        })
        .collect()
}

/// Raises the diagonal of each row to at least `min_keep` by taking units
/// from the largest off-diagonal counts, so pruning leaves that many
/// samples in every class.
fn keep_at_least(cj: &[Vec<usize>], min_keep: usize) -> Vec<Vec<usize>> {
    let mut out = cj.to_vec();
    for (i, row) in out.iter_mut().enumerate() {
        while row[i] < min_keep {
            let Some(j) = (0..row.len()).filter(|&j| j != i && row[j] > 0).max_by_key(|&j| (row[j], usize::MAX - j))
            else {
                break;
            };
            row[j] -= 1;
            row[i] += 1;
        }
    }
    out
}

/// cleanlab's `prune_by_noise_rate` filter: for each given label `i` with
/// more than `min_keep` samples and each `j != i`, flag the `cj[i][j]`
/// samples labelled `i` with the largest margin `p_j - p_i` (`cj` being
/// the calibrated confident joint, i.e. `n * Q`); finally unflag every
/// sample whose argmax equals its label.
pub fn prune_by_noise_rate(
    probs: &[f32],
    labels: &[usize],
    classes: usize,
    cj: &[Vec<usize>],
    min_keep: usize,
) -> Result<Vec<bool>> {
    check_probs(probs, labels, classes)?;
    if cj.len() != classes || cj.iter().any(|r| r.len() != classes) {
        return Err(Error::Argument(format!("confident joint is not {classes} x {classes}")));
    }
    let prune = keep_at_least(cj, min_keep);
    let row = |s: usize| &probs[s * classes..(s + 1) * classes];
    let mut flagged = vec![false; labels.len()];
    for (i, to_prune) in prune.iter().enumerate() {
        let members: Vec<usize> = (0..labels.len()).filter(|&s| labels[s] == i).collect();
        if members.len() <= min_keep {
            continue;
        }
        for j in (0..classes).filter(|&j| j != i && to_prune[j] > 0) {
            let margin = |s: usize| row(s)[j] - row(s)[i];
            let mut order = members.clone();
            order.sort_by(|&a, &b| margin(b).total_cmp(&margin(a)).then(a.cmp(&b)));
            for &s in order.iter().take(to_prune[j]) {
                flagged[s] = true;
            }
        }
    }
    for (s, f) in flagged.iter_mut().enumerate() {
        *f &= argmax(row(s)) != labels[s];
    }
    Ok(flagged)
}

/// Result of [`confident_learning`]: the detection plus the estimates
/// behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfidentLearning {
    /// Flags (pruned by noise rate) and scores (`1 - p[label]`).
    pub detection: Detection,
    /// Per-class thresholds ([`confident_thresholds`]).
    pub thresholds: Vec<f64>,
    /// Calibrated confident joint (rows: given label, columns: true label).
    pub joint: Vec<Vec<usize>>,
    /// Estimated noise rate per given label ([`noise_rates`]).
    pub noise_rate: Vec<f64>,
}

/// The `confident-learning` baseline as cleanlab's default
/// `find_label_issues` (`filter_by="prune_by_noise_rate"`,
/// `min_examples_per_class=1`), on out-of-sample probabilities.
pub fn confident_learning(probs: &[f32], labels: &[usize], classes: usize) -> Result<ConfidentLearning> {
    let thresholds = confident_thresholds(probs, labels, classes)?;
    let cj = confident_joint(probs, labels, classes, &thresholds)?;
    let joint = calibrate_confident_joint(&cj, &label_counts(labels, classes));
    let flagged = prune_by_noise_rate(probs, labels, classes, &joint, 1)?;
    Ok(ConfidentLearning {
        detection: Detection { flagged, score: self_confidence_scores(probs, labels, classes) },
        thresholds,
        noise_rate: noise_rates(&joint),
        joint,
    })
}

// ----------------------------------------------------------------- k-fold

/// Stratified k-fold split of the samples with `labels`: returns `k` pairs
/// `(train, held_out)` of sorted sample indices. Every index is held out in
/// exactly one fold; each class is spread over the folds as evenly as
/// possible (shuffled with `seed`, then dealt round-robin, continuing
/// across classes so fold sizes differ by at most one).
pub fn kfold_indices(labels: &[usize], k: usize, seed: u64) -> Result<Vec<(Vec<usize>, Vec<usize>)>> {
    let n = labels.len();
    if k < 2 || k > n {
        return Err(Error::Argument(format!("k-fold needs 2 <= k <= number of samples ({n}), got k = {k}")));
    }
    let classes = labels.iter().max().map_or(0, |&m| m + 1);
    let mut fold_of = vec![0usize; n];
    let mut next = 0;
    for c in 0..classes {
        let mut members: Vec<usize> = (0..n).filter(|&i| labels[i] == c).collect();
        Rng::derive(seed, c as u64).shuffle(&mut members);
        for i in members {
            fold_of[i] = next;
            next = (next + 1) % k;
        }
    }
    Ok((0..k)
        .map(|f| {
            let (held, train): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| fold_of[i] == f);
            (train, held)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::precision_recall_f1;

    #[test]
    fn ce_flags_argmax_disagreement_and_scores_self_confidence() {
        let probs = [0.7, 0.2, 0.1, 0.1, 0.3, 0.6, 0.5, 0.5, 0.0];
        let d = ce(&probs, &[0, 1, 1], 3).unwrap();
        assert_eq!(d.flagged, vec![false, true, true]); // tie 0.5/0.5 -> class 0
        assert!((d.score[0] - 0.3).abs() < 1e-6 && (d.score[1] - 0.7).abs() < 1e-6);
        assert!(ce(&probs[..8], &[0, 1, 1], 3).is_err());
        assert!(ce(&probs, &[0, 1, 3], 3).is_err());
    }

    #[test]
    fn gmm_separates_two_well_separated_loss_clusters() {
        let mut rng = Rng::new(5);
        // 400 clean samples with small loss, 100 noisy ones with large loss.
        let mut losses = Vec::new();
        let mut is_noise = Vec::new();
        for i in 0..500 {
            let noisy = i % 5 == 0;
            let (m, s) = if noisy { (3.0, 0.3) } else { (0.2, 0.1) };
            losses.push((m + s * rng.normal()).max(0.0) as f32);
            is_noise.push(noisy);
        }
        let g = fit_gmm(&normalise_min_max(&losses), &GmmConfig::default()).unwrap();
        assert!(g.mean[0] < 0.2 && g.mean[1] > 0.6, "{g:?}");
        assert!((g.weight[0] - 0.8).abs() < 0.02, "{g:?}");
        let d = small_loss(&losses, &GmmConfig::default()).unwrap();
        assert_eq!(d.flagged, is_noise);
        let lowest = losses.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert!(d.score[lowest] < 1e-3);
        // Equal losses: nothing to separate.
        let d = small_loss(&[0.5; 4], &GmmConfig::default()).unwrap();
        assert_eq!(d.flagged, vec![false; 4]);
        assert!(small_loss(&[0.1, f32::NAN], &GmmConfig::default()).is_err());
    }

    #[test]
    fn thresholds_joint_calibration_and_noise_rate_by_hand() {
        // Two classes; samples 0-2 labelled 0, 3-4 labelled 1.
        let probs = [0.9, 0.1, 0.7, 0.3, 0.2, 0.8, 0.4, 0.6, 0.2, 0.8];
        let labels = [0, 0, 0, 1, 1];
        let t = confident_thresholds(&probs, &labels, 2).unwrap();
        assert!((t[0] - 0.6).abs() < 1e-6 && (t[1] - 0.7).abs() < 1e-6, "{t:?}");
        // Sample 2 (label 0) is confident in class 1 only; sample 3 in none.
        let cj = confident_joint(&probs, &labels, 2, &t).unwrap();
        assert_eq!(cj, vec![vec![2, 1], vec![0, 1]]);
        let cal = calibrate_confident_joint(&cj, &[3, 2]);
        assert_eq!(cal, vec![vec![2, 1], vec![0, 2]]);
        let nr = noise_rates(&cal);
        assert!((nr[0] - 1.0 / 3.0).abs() < 1e-12 && nr[1] == 0.0);
        let q = estimate_joint(&cal);
        assert!((q[0][1] - 0.2).abs() < 1e-12);
        let flagged = prune_by_noise_rate(&probs, &labels, 2, &cal, 1).unwrap();
        assert_eq!(flagged, vec![false, false, true, false, false]);
    }

    #[test]
    fn confident_class_takes_the_most_probable_confident_class() {
        let t = [0.9, 0.1, 0.1];
        assert_eq!(confident_class(&[0.5, 0.2, 0.3], &t), Some(2)); // 0 is below its threshold
        assert_eq!(confident_class(&[0.5, 0.05, 0.05], &t), None);
        assert_eq!(round_preserving_sum(&[1.4, 1.4, 1.2]), vec![2, 1, 1]);
        assert_eq!(round_preserving_sum(&[0.5, 0.5]).iter().sum::<usize>(), 1);
    }

    #[test]
    fn confident_learning_finds_flipped_labels_and_spares_clean_ones() {
        let classes = 4;
        let mut rng = Rng::new(9);
        let (mut probs, mut labels, mut is_noise) = (Vec::new(), Vec::new(), Vec::new());
        for s in 0..200 {
            let truth = s % classes;
            // Every 10th sample of a class gets the next class's label.
            let flipped = (s / classes) % 10 == 3;
            let p_true = if flipped { 0.8 + 0.1 * rng.f32() } else { 0.55 + 0.4 * rng.f32() };
            let rest = (1.0 - p_true) / (classes - 1) as f32;
            probs.extend((0..classes).map(|k| if k == truth { p_true } else { rest }));
            labels.push(if flipped { (truth + 1) % classes } else { truth });
            is_noise.push(flipped);
        }
        let cl = confident_learning(&probs, &labels, classes).unwrap();
        assert_eq!(cl.detection.flagged, is_noise);
        let (p, r, _) = precision_recall_f1(&cl.detection.flagged, &is_noise);
        assert_eq!((p, r), (1.0, 1.0));
        // Each given class holds 45 clean samples and 5 flipped in (true
        // rate 0.1). Only the confident part of the clean samples is counted
        // before calibration, so the estimate is at least 0.1, not far above.
        for (c, &rate) in cl.noise_rate.iter().enumerate() {
            assert!((0.1..0.2).contains(&rate), "class {c}: {rate}");
        }
        for (i, row) in cl.joint.iter().enumerate() {
            assert_eq!(row.iter().sum::<usize>(), 50, "row {i} keeps its label count");
        }
    }

    #[test]
    fn kfold_holds_out_each_index_once_and_is_stratified() {
        let labels: Vec<usize> = (0..103)
            .map(|i| {
                if i < 60 {
                    0
                } else if i < 90 {
                    1
                } else {
                    2
                }
            })
            .collect();
        let folds = kfold_indices(&labels, 4, 3).unwrap();
        assert_eq!(folds.len(), 4);
        let mut seen = vec![0usize; labels.len()];
        for (train, held) in &folds {
            assert_eq!(train.len() + held.len(), labels.len());
            assert!(held.iter().all(|i| train.binary_search(i).is_err()));
            for &i in held {
                seen[i] += 1;
            }
            for (c, size) in [(0, 60), (1, 30), (2, 13)] {
                let in_fold = held.iter().filter(|&&i| labels[i] == c).count();
                assert!(in_fold == size / 4 || in_fold == size.div_ceil(4), "class {c}: {in_fold}");
            }
        }
        assert!(seen.iter().all(|&s| s == 1));
        let sizes: Vec<usize> = folds.iter().map(|f| f.1.len()).collect();
        assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
        assert_eq!(kfold_indices(&labels, 4, 3).unwrap(), folds);
        assert_ne!(kfold_indices(&labels, 4, 4).unwrap(), folds);
        assert!(kfold_indices(&labels, 1, 0).is_err());
        assert!(kfold_indices(&labels[..3], 4, 0).is_err());
    }
}
