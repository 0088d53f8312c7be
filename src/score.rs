//! Noise scoring from identifier logits: the plain reference implementation.
//!
//! For logits `z` (the head's `W f(x) + b`), the per-class `tau` and the
//! label prior `pi`, the adjusted logits are `z - tau * log(pi)`. With
//! `p = softmax(adjusted)`:
//! - `pred = argmax p`; the `argmax` rule flags a sample when `pred != label`,
//!   the other rules ([`Rule`]) a subset of those, decided per class (the
//!   default, `agreement-noise-rate`, also needs the plain prediction to
//!   differ, caps each class at its estimated noise and drops flags under a
//!   score floor outside systematic flips);
//! - `noise_score = 1 - p[label]`, in [0, 1], monotone in the identifier's
//!   belief that the label is wrong (used for ranking, AUROC, `--threshold`);
//! - `weight` is 0.01 for flagged samples, and for the others the max
//!   probability min-max scaled over the kept samples to [0.5, 1].
//!
//! The GPU kernel `shaders/score.wgsl` computes the per-sample part (pred,
//! score, max probability) and is tested against [`per_sample`].

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Above this estimated noise rate a class is mostly noise, and
/// [`Rule::AgreementNoiseRate`] leaves its agreement flags uncapped when
/// they also look like a systematic flip (see [`SYSTEMATIC_FLIP`]).
pub const MAJORITY_NOISE: f64 = 0.5;

/// A class's flags look like a systematic flip from one other class when
/// more than this share of them have the same adjusted prediction.
/// Majority noise comes from such flips (pair noise into a smaller class);
/// a class that is merely hard to recognise (Fashion-MNIST's Shirt) also
/// gets a high estimated noise rate, but its doubtful samples spread over
/// several look-alike classes, and there the cap stays.
pub const SYSTEMATIC_FLIP: f64 = 0.5;

/// The default score floor ([`OperatingPoint::min_score`]): on the H200
/// grid of 2026-12-04 (28 draws, both seeds) the default rule with this
/// floor and [`FloorExempt::AnyFlip`] was never below the rule without a
/// floor overall, and up to 4.5 points above it.
/// Operating points saved without the field keep none.
pub const DEFAULT_MIN_SCORE: f32 = 0.9;

/// The default score floor of a rule: [`DEFAULT_MIN_SCORE`] for
/// [`Rule::AgreementNoiseRate`], whose systematic-flip test it was measured
/// with; none for the others (a threshold is its own floor).
pub fn default_min_score(rule: Rule) -> Option<f32> {
    (rule == Rule::AgreementNoiseRate).then_some(DEFAULT_MIN_SCORE)
}

/// The score floor of `rule` when a command line gives `given`: that value
/// (0 turns the floor off), else the rule's default ([`default_min_score`]).
/// Out-of-range values stay, for [`OperatingPoint::validate`] to refuse.
pub fn min_score_for(rule: Rule, given: Option<f32>) -> Option<f32> {
    match given {
        Some(t) => floor_unless_zero(t),
        None => default_min_score(rule),
    }
}

/// The floor between rounds ([`TrainConfig::round_min_score`](crate::train::TrainConfig::round_min_score))
/// when a command line gives `given`: none unless given, and 0 turns it off,
/// as with [`min_score_for`].
pub fn round_min_score_for(given: Option<f32>) -> Option<f32> {
    given.and_then(floor_unless_zero)
}

/// A floor given on a command line: 0 means none.
fn floor_unless_zero(t: f32) -> Option<f32> {
    (t != 0.0).then_some(t)
}

/// The score floors ([`OperatingPoint::min_score`]) on the default rule that
/// every h2e round reports besides the named rules, so that a benchmark
/// grid measures them without a run per floor.
pub const SCORE_FLOORS: [f32; 3] = [0.8, 0.9, 0.95];

/// Weight given to flagged samples.
pub const NOISE_WEIGHT: f32 = 0.01;

/// Per-sample result of the fused scoring pass (before the operating point).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleScore {
    /// Argmax of the adjusted logits.
    pub pred: usize,
    /// Argmax of the raw logits `z` (no prior adjustment): what a
    /// classifier of the long-tailed training distribution would predict.
    pub plain_pred: usize,
    /// `1 - p[label]` (or `1 - max p` when unlabelled).
    pub noise_score: f32,
    /// Max adjusted probability.
    pub max_prob: f32,
    /// Adjusted probability of the given label.
    pub prob_label: f32,
}

/// Adjusted softmax, argmax and score of one row. Stable for extreme
/// logits (max-subtracted); NaN-free for finite input.
pub fn per_sample(logits: &[f32], label: Option<usize>, tau: &[f32], log_prior: &[f32]) -> SampleScore {
    let c = logits.len();
    let mut adj = vec![0f32; c];
    let mut m = f32::NEG_INFINITY;
    let mut pred = 0;
    let mut plain_pred = 0;
    for k in 0..c {
        adj[k] = logits[k] - tau[k] * log_prior[k];
        if adj[k] > m {
            m = adj[k];
            pred = k;
        }
        if logits[k] > logits[plain_pred] {
            plain_pred = k;
        }
    }
    let mut sum = 0f32;
    for a in adj.iter_mut() {
        *a = (*a - m).exp();
        sum += *a;
    }
    let max_prob = 1.0 / sum;
    let prob_label = label.map(|l| adj[l] / sum).unwrap_or(max_prob);
    SampleScore { pred, plain_pred, noise_score: (1.0 - prob_label).clamp(0.0, 1.0), max_prob, prob_label }
}

/// How flags are decided from the scores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", tag = "rule", content = "value")]
pub enum Rule {
    /// Flag when the adjusted prediction differs from the label (the H2E
    /// paper's rule).
    Argmax,
    /// Flag when `noise_score >= threshold`.
    Threshold(f32),
    /// Per-class decisions: confident learning's per-class thresholds,
    /// confident joint and prune-by-noise-rate (cleanlab's defaults),
    /// computed from the identifier's *adjusted* probabilities of the
    /// scored set instead of ordinary ones. Needs the full probability
    /// matrix. It flags a subset of what [`Rule::Argmax`] flags, sized per
    /// class by the estimated noise rate.
    ConfidentLearning,
    /// [`Rule::Argmax`]'s flags, at most the estimated number of noisy
    /// samples per class (confident learning's noise-rate estimate on the
    /// adjusted probabilities times the class size), highest noise score
    /// first. Needs the full probability matrix.
    NoiseRate,
    /// Flag when the adjusted prediction *and* the plain prediction (the
    /// raw logits `z`, no prior adjustment) both differ from the label. The
    /// prior adjustment alone over-flags head classes (their clean samples
    /// whose adjusted prediction tips to a tail class); a plain prediction
    /// that still agrees with the label vetoes those. Per sample, so shards
    /// decide exactly as a whole set does (the default before
    /// [`Rule::AgreementNoiseRate`]). It keeps the adjusted rule's tail
    /// recall and flags a subset of what [`Rule::Argmax`] flags.
    Agreement,
    /// [`Rule::Agreement`]'s flags, at most the estimated number of noisy
    /// samples per class, highest noise score first: the cap of
    /// [`Rule::NoiseRate`] on the agreement rule's flags, except in a class
    /// whose estimated noise rate exceeds [`MAJORITY_NOISE`] and whose
    /// flags mostly point at one other class ([`SYSTEMATIC_FLIP`]). The cap
    /// trims the clean but ambiguous samples that agreement over-flags in
    /// medium classes at mild noise; in a class that is mostly noise from a
    /// systematic flip (pair noise into a tail class) agreement's flags are
    /// already mostly right and the cap would drop true noise. Needs the
    /// full probability matrix, so it decides over a whole set (or shard).
    /// The default.
    #[default]
    AgreementNoiseRate,
}

impl Rule {
    /// Every rule but [`Rule::Threshold`]: the operating points each h2e
    /// round reports.
    pub const NAMED: [Rule; 5] =
        [Rule::Argmax, Rule::ConfidentLearning, Rule::NoiseRate, Rule::Agreement, Rule::AgreementNoiseRate];

    /// Whether deciding needs the full `[n, classes]` probability matrix.
    pub fn needs_probabilities(&self) -> bool {
        matches!(self, Rule::ConfidentLearning | Rule::NoiseRate | Rule::AgreementNoiseRate)
    }
}

impl std::fmt::Display for Rule {
    /// The command-line spelling, which [`FromStr`](std::str::FromStr) reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rule::Argmax => f.write_str("argmax"),
            Rule::ConfidentLearning => f.write_str("confident-learning"),
            Rule::NoiseRate => f.write_str("noise-rate"),
            Rule::Agreement => f.write_str("agreement"),
            Rule::AgreementNoiseRate => f.write_str("agreement-noise-rate"),
            Rule::Threshold(t) => write!(f, "threshold={t}"),
        }
    }
}

impl std::str::FromStr for Rule {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Rule> {
        match s {
            "argmax" => Ok(Rule::Argmax),
            "confident-learning" | "cl" => Ok(Rule::ConfidentLearning),
            "noise-rate" => Ok(Rule::NoiseRate),
            "agreement" => Ok(Rule::Agreement),
            "agreement-noise-rate" => Ok(Rule::AgreementNoiseRate),
            t => match t.strip_prefix("threshold=").map(str::parse::<f32>) {
                Some(Ok(v)) if (0.0..=1.0).contains(&v) => Ok(Rule::Threshold(v)),
                _ => Err(crate::Error::Argument(format!(
                    "unknown operating point {s:?}; expected agreement, agreement-noise-rate, argmax, confident-learning, noise-rate or threshold=T with T in [0, 1]"
                ))),
            },
        }
    }
}

/// Which classes a score floor ([`OperatingPoint::min_score`]) leaves
/// alone. Only [`Rule::AgreementNoiseRate`] computes flips; under the other
/// rules the floor applies to every class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FloorExempt {
    /// The classes the noise-rate cap exempts (estimated noise rate over
    /// [`MAJORITY_NOISE`] and flags a systematic flip) and the classes
    /// their flips point at. What operating points saved before this
    /// choice existed read as.
    MajorityFlip,
    /// Every class whose flags look like a systematic flip
    /// ([`SYSTEMATIC_FLIP`]), whatever its estimated noise rate, and the
    /// classes they point at. Pair noise between classes of similar size
    /// leaves the smaller side's estimate near 0.5, where
    /// [`FloorExempt::MajorityFlip`] can floor both sides of the pair. The
    /// default.
    #[default]
    AnyFlip,
}

impl std::fmt::Display for FloorExempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FloorExempt::MajorityFlip => "majority-flip",
            FloorExempt::AnyFlip => "any-flip",
        })
    }
}

impl std::str::FromStr for FloorExempt {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<FloorExempt> {
        match s {
            "majority-flip" => Ok(FloorExempt::MajorityFlip),
            "any-flip" => Ok(FloorExempt::AnyFlip),
            _ => Err(crate::Error::Argument(format!(
                "unknown floor exemption {s:?}; expected majority-flip or any-flip"
            ))),
        }
    }
}

/// The suffix of a benchmark operating point whose floor reads every
/// round ([`FloorRounds::Every`]): `agreement-noise-rate+min-score=0.9+any-flip+every-round`.
pub const EVERY_ROUND: &str = "every-round";

/// Which rounds' identifiers a training run's score floor reads
/// ([`OperatingPoint::min_score`] on the final flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FloorRounds {
    /// The final round's noise score only (also what `filter` and a saved
    /// identifier can do: they hold the final identifier alone).
    #[default]
    Last,
    /// Each sample's lowest noise score over every round
    /// ([`apply_over_rounds`]). The final round trained without what round
    /// 1 flagged; on uniform rho 10 noise 0.2 seed 0, 854 of its 919 false
    /// flags are such samples.
    Every,
}

impl FloorRounds {
    /// The earlier rounds' noise scores a floor under `self` reads: all of
    /// `earlier` with [`FloorRounds::Every`], none with [`FloorRounds::Last`]
    /// (the `earlier` argument of [`apply_over_rounds`]).
    pub fn history(self, earlier: &[Vec<f32>]) -> Vec<&[f32]> {
        match self {
            FloorRounds::Every => earlier.iter().map(Vec::as_slice).collect(),
            FloorRounds::Last => Vec::new(),
        }
    }
}

impl std::fmt::Display for FloorRounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FloorRounds::Last => "last",
            FloorRounds::Every => "every",
        })
    }
}

impl std::str::FromStr for FloorRounds {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<FloorRounds> {
        match s {
            "last" => Ok(FloorRounds::Last),
            "every" => Ok(FloorRounds::Every),
            _ => Err(crate::Error::Argument(format!("unknown floor rounds {s:?}; expected last or every"))),
        }
    }
}

/// Operating point: the rule plus caps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OperatingPoint {
    /// The flagging rule.
    pub rule: Rule,
    /// Flag at most this fraction of the samples (highest scores first).
    pub max_flag_rate: Option<f32>,
    /// Never flag so many samples of a class that fewer than this many stay.
    pub min_per_class: usize,
    /// A score floor: flags also need `noise_score >= min_score`, except
    /// (with [`Rule::AgreementNoiseRate`]) in a class whose flags look like
    /// a systematic flip ([`FloorExempt`] says which) and in the class that
    /// flip points at: both sides of a flipped pair are ambiguous to the
    /// identifier, and there a borderline flag is still mostly noise.
    /// Elsewhere it trims the borderline flags (label probability just
    /// under the prediction's)
    /// that the noise-rate cap keeps when it over-estimates a class's
    /// noise, mostly clean samples. Training applies it to the final
    /// round's flags only ([`crate::train::round_operating_point`]).
    /// `None`: no floor; the default is [`DEFAULT_MIN_SCORE`] (a saved
    /// operating point without the field has none, as it was saved).
    #[serde(default)]
    pub min_score: Option<f32>,
    /// Which classes the score floor spares (a saved operating point
    /// without the field reads as [`FloorExempt::MajorityFlip`], the only
    /// exemption when it was saved).
    #[serde(default = "FloorExempt::saved_before_choice")]
    pub floor_exempt: FloorExempt,
}

impl FloorExempt {
    /// The exemption of operating points saved before there was a choice.
    fn saved_before_choice() -> FloorExempt {
        FloorExempt::MajorityFlip
    }
}

impl Default for OperatingPoint {
    fn default() -> Self {
        OperatingPoint {
            rule: Rule::default(),
            max_flag_rate: None,
            min_per_class: 1,
            min_score: Some(DEFAULT_MIN_SCORE),
            floor_exempt: FloorExempt::default(),
        }
    }
}

impl std::fmt::Display for OperatingPoint {
    /// The rule, plus the score floor when there is one (the name the
    /// quality benchmark reports): `agreement-noise-rate+min-score=0.9`,
    /// with `+any-flip` when the floor spares every flipped class.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.min_score, self.floor_exempt) {
            (Some(t), FloorExempt::MajorityFlip) => write!(f, "{}+min-score={t}", self.rule),
            (Some(t), e) => write!(f, "{}+min-score={t}+{e}", self.rule),
            (None, _) => write!(f, "{}", self.rule),
        }
    }
}

impl OperatingPoint {
    /// Checks ranges: rates and the score floor in [0, 1].
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f32| Error::Argument(format!("{what} {v} is outside [0, 1]"));
        for (what, v) in [("max flag rate", self.max_flag_rate), ("min score", self.min_score)] {
            if let Some(v) = v.filter(|v| !(0.0..=1.0).contains(v)) {
                return Err(bad(what, v));
            }
        }
        if let Rule::Threshold(t) = self.rule {
            if !(0.0..=1.0).contains(&t) {
                return Err(bad("threshold", t));
            }
        }
        Ok(())
    }
}

/// Scores of a whole set after the operating point is applied.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Scores {
    /// Adjusted prediction per sample.
    pub pred: Vec<usize>,
    /// Continuous noise score per sample.
    pub noise_score: Vec<f32>,
    /// Flagged as noise.
    pub flagged: Vec<bool>,
    /// Sample weight for stage 2.
    pub weight: Vec<f32>,
}

/// Decides flags and weights for per-sample scores of samples with `labels`
/// (`classes` classes) under `op`. `probs` is the row-major adjusted
/// probability matrix, needed only when [`Rule::needs_probabilities`].
pub fn apply(
    per: &[SampleScore],
    probs: Option<&[f32]>,
    labels: &[usize],
    classes: usize,
    op: &OperatingPoint,
) -> Result<Scores> {
    apply_over_rounds(per, probs, labels, classes, op, &[])
}

/// [`apply`], with the score floor ([`OperatingPoint::min_score`]) applied
/// to each sample's lowest noise score over this round and the `earlier`
/// rounds' identifiers (one noise score per sample each): a flag needs
/// every round's identifier to doubt the label that much. A later round
/// trained without the samples an earlier one flagged, so it scores those
/// out of sample, and a clean but unusual sample it never saw can look
/// surely mislabelled to it alone (see [`FloorRounds::Every`]).
pub fn apply_over_rounds(
    per: &[SampleScore],
    probs: Option<&[f32]>,
    labels: &[usize],
    classes: usize,
    op: &OperatingPoint,
    earlier: &[&[f32]],
) -> Result<Scores> {
    if let Some(e) = earlier.iter().find(|e| e.len() != per.len()) {
        return Err(Error::Argument(format!("{} earlier noise scores for {} samples", e.len(), per.len())));
    }
    let needs_probs = || {
        probs
            .ok_or_else(|| Error::Argument(format!("the {} operating point needs the adjusted probabilities", op.rule)))
    };
    let argmax = || per.iter().zip(labels).map(|(s, &l)| s.pred != l).collect::<Vec<bool>>();
    let agreement = || agreement_flags(per, labels);
    // At most the estimated number of noisy samples per class; with
    // `exempt_majority`, no cap in a class estimated to be mostly noise
    // whose flags look like a systematic flip. Also returns the classes a
    // score floor leaves alone (`op.floor_exempt`): the flipped ones and
    // the classes their flags point at (both sides of a flipped pair).
    let noise_rate_cap = |mut flagged: Vec<bool>, exempt_majority: bool| -> Result<(Vec<bool>, Vec<bool>)> {
        let rate = crate::baselines::confident_learning(needs_probs()?, labels, classes)?.noise_rate;
        let flips = if exempt_majority { flip_shares(per, &flagged, labels, classes) } else { vec![(0.0, 0); classes] };
        let exempt: Vec<bool> =
            (0..classes).map(|c| rate[c] > MAJORITY_NOISE && flips[c].0 > SYSTEMATIC_FLIP).collect();
        cap_per_class(per, &mut flagged, labels, classes, |c, n| {
            if exempt[c] {
                n
            } else {
                (rate[c] * n as f64).round() as usize
            }
        });
        Ok((flagged, spared_classes(&rate, &flips, op.floor_exempt)))
    };
    let none_exempt = || vec![false; classes];
    let (mut flagged, floor_free): (Vec<bool>, Vec<bool>) = match op.rule {
        Rule::Argmax => (argmax(), none_exempt()),
        Rule::Agreement => (agreement(), none_exempt()),
        Rule::Threshold(t) => (per.iter().map(|s| s.noise_score >= t).collect(), none_exempt()),
        Rule::ConfidentLearning => {
            (crate::baselines::confident_learning(needs_probs()?, labels, classes)?.detection.flagged, none_exempt())
        }
        Rule::NoiseRate => noise_rate_cap(argmax(), false)?,
        Rule::AgreementNoiseRate => noise_rate_cap(agreement(), true)?,
    };
    if let Some(floor) = op.min_score {
        for (i, ((f, s), &l)) in flagged.iter_mut().zip(per).zip(labels).enumerate() {
            let lowest = earlier.iter().fold(s.noise_score, |m, e| m.min(e[i]));
            if *f && lowest < floor && !floor_free.get(l).copied().unwrap_or(false) {
                *f = false;
            }
        }
    }
    Ok(apply_caps(per, flagged, labels, classes, op))
}

/// What [`Rule::AgreementNoiseRate`] sees in one class (given label):
/// recorded in every h2e round's report so that a run shows why the cap
/// and a score floor treated a class as they did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassEstimate {
    /// Samples with this label.
    pub samples: usize,
    /// Confident learning's noise-rate estimate on the adjusted probabilities.
    pub noise_rate: f64,
    /// Agreement-rule flags (before the cap).
    pub agreement_flags: usize,
    /// Share of those flags whose adjusted prediction is `flip_to` (0 without flags).
    pub flip_share: f64,
    /// Their most common adjusted prediction.
    pub flip_to: usize,
}

/// [`ClassEstimate`] of every class from per-sample scores and the
/// row-major adjusted probabilities.
pub fn class_estimates(
    per: &[SampleScore],
    probs: &[f32],
    labels: &[usize],
    classes: usize,
) -> Result<Vec<ClassEstimate>> {
    let rate = crate::baselines::confident_learning(probs, labels, classes)?.noise_rate;
    let flagged = agreement_flags(per, labels);
    let flips = flip_shares(per, &flagged, labels, classes);
    let samples = crate::metrics::label_counts(labels, classes);
    let flagged_labels: Vec<usize> = labels.iter().zip(&flagged).filter(|&(_, &f)| f).map(|(&l, _)| l).collect();
    let flags = crate::metrics::label_counts(&flagged_labels, classes);
    Ok((0..classes)
        .map(|c| ClassEstimate {
            samples: samples[c],
            noise_rate: rate[c],
            agreement_flags: flags[c],
            flip_share: flips[c].0,
            flip_to: flips[c].1,
        })
        .collect())
}

/// [`Rule::Agreement`]'s flags: the adjusted and the plain prediction
/// both differ from the label.
fn agreement_flags(per: &[SampleScore], labels: &[usize]) -> Vec<bool> {
    per.iter().zip(labels).map(|(s, &l)| s.pred != l && s.plain_pred != l).collect()
}

/// The classes a score floor leaves alone under `exempt`, from a round's
/// [`ClassEstimate`]s (as [`apply`] decides them on a whole set). A caller
/// that decides one sample at a time (an ingestion gate) can take them from
/// the identifier's training report, whose final round saw the whole
/// training set.
pub fn floor_free_classes(estimates: &[ClassEstimate], exempt: FloorExempt) -> Vec<bool> {
    let rate: Vec<f64> = estimates.iter().map(|e| e.noise_rate).collect();
    let flips: Vec<(f64, usize)> = estimates.iter().map(|e| (e.flip_share, e.flip_to)).collect();
    spared_classes(&rate, &flips, exempt)
}

/// The flipped classes `exempt` spares (see [`FloorExempt`]) and the
/// classes their flags point at.
fn spared_classes(rate: &[f64], flips: &[(f64, usize)], exempt: FloorExempt) -> Vec<bool> {
    let spared: Vec<bool> = rate
        .iter()
        .zip(flips)
        .map(|(&r, &(share, _))| share > SYSTEMATIC_FLIP && (exempt == FloorExempt::AnyFlip || r > MAJORITY_NOISE))
        .collect();
    let mut out = spared.clone();
    for (c, &(_, to)) in flips.iter().enumerate() {
        if spared[c] && to < out.len() {
            out[to] = true;
        }
    }
    out
}

/// Per class, the share of its flagged samples whose adjusted prediction
/// is the most common one among them, and that prediction ((0, 0) for a
/// class without flags).
fn flip_shares(per: &[SampleScore], flagged: &[bool], labels: &[usize], classes: usize) -> Vec<(f64, usize)> {
    let mut counts = vec![vec![0usize; classes]; classes];
    for ((s, &f), &l) in per.iter().zip(flagged).zip(labels) {
        if f && l < classes && s.pred < classes {
            counts[l][s.pred] += 1;
        }
    }
    counts
        .iter()
        .map(|row| {
            let total: usize = row.iter().sum();
            // The most common prediction; the lowest class on a tie.
            let (top, &most) = row.iter().enumerate().rev().max_by_key(|&(_, n)| *n).unwrap_or((0, &0));
            if total == 0 {
                (0.0, 0)
            } else {
                (most as f64 / total as f64, top)
            }
        })
        .collect()
}

/// Samples sorted by noise score, highest first (index as tie-break:
/// deterministic).
fn by_score(per: &[SampleScore], idx: &mut [usize]) {
    idx.sort_by(|&a, &b| per[b].noise_score.total_cmp(&per[a].noise_score).then(a.cmp(&b)));
}

/// Leaves, in every class `c` of `n` samples, at most `max_flags(c, n)`
/// flags: the highest-scored ones.
fn cap_per_class(
    per: &[SampleScore],
    flagged: &mut [bool],
    labels: &[usize],
    classes: usize,
    max_flags: impl Fn(usize, usize) -> usize,
) {
    for c in 0..classes {
        let members: Vec<usize> = (0..per.len()).filter(|&i| labels[i] == c).collect();
        let cap = max_flags(c, members.len());
        let mut idx: Vec<usize> = members.into_iter().filter(|&i| flagged[i]).collect();
        if idx.len() > cap {
            by_score(per, &mut idx);
            for &i in &idx[cap..] {
                flagged[i] = false;
            }
        }
    }
}

/// Applies `op`'s caps (maximum flag rate, minimum kept per class) to flags
/// decided elsewhere (e.g. by a baseline detector), then computes weights.
/// Caps unflag the lowest-scored samples first.
pub fn apply_caps(
    per: &[SampleScore],
    mut flagged: Vec<bool>,
    labels: &[usize],
    classes: usize,
    op: &OperatingPoint,
) -> Scores {
    let n = per.len();
    if let Some(rate) = op.max_flag_rate {
        let cap = (rate.clamp(0.0, 1.0) as f64 * n as f64).floor() as usize;
        let mut idx: Vec<usize> = (0..n).filter(|&i| flagged[i]).collect();
        if idx.len() > cap {
            by_score(per, &mut idx);
            for &i in &idx[cap..] {
                flagged[i] = false;
            }
        }
    }
    if op.min_per_class > 0 {
        cap_per_class(per, &mut flagged, labels, classes, |_, n| n.saturating_sub(op.min_per_class));
    }
    let kept = (0..n).filter(|&i| !flagged[i]).map(|i| per[i].max_prob);
    let (lo, hi) = kept.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), p| (lo.min(p), hi.max(p)));
    let weight = (0..n)
        .map(|i| {
            if flagged[i] {
                NOISE_WEIGHT
            } else if hi > lo {
                0.5 + 0.5 * (per[i].max_prob - lo) / (hi - lo)
            } else {
                1.0
            }
        })
        .collect();
    Scores {
        pred: per.iter().map(|s| s.pred).collect(),
        noise_score: per.iter().map(|s| s.noise_score).collect(),
        flagged,
        weight,
    }
}

/// The final scores when the stage-2 classifier scores
/// ([`crate::train::Scorer`]), from the last identifier's `identifier`
/// scores, the classifier's per-sample scores `per` and its flags
/// `by_classifier` (decided under the same operating point):
/// - a sample the identifier flagged that stage 2 trained on all the same
///   (`trained_on`) keeps its flag, at the higher of the two scores: the
///   classifier fit it, so it cannot clear it;
/// - in a class of `spared` (with [`crate::train::Scorer::Joint`], the
///   classes the identifier's score floor spares: systematic flips and
///   the classes they point at) the classifier can only clear the
///   identifier's flags, and the score stays the identifier's: stage 2
///   learnt part of a flip from the half of each class it keeps, so its
///   own doubts there are no evidence, while its agreement with a label
///   still is;
/// - elsewhere the classifier's flags and scores decide.
///
/// Then `op`'s caps, and weights from the classifier's confidence.
#[allow(clippy::too_many_arguments)]
pub fn classifier_scores(
    identifier: &Scores,
    per: &[SampleScore],
    by_classifier: &[bool],
    trained_on: &[bool],
    spared: &[bool],
    labels: &[usize],
    classes: usize,
    op: &OperatingPoint,
) -> Result<Scores> {
    let n = labels.len();
    let lengths =
        [identifier.flagged.len(), identifier.noise_score.len(), per.len(), by_classifier.len(), trained_on.len()];
    if lengths.iter().any(|&l| l != n) || spared.len() != classes {
        return Err(Error::Argument(format!(
            "classifier scores for {n} samples and {classes} classes got lengths {lengths:?} and {} spared classes",
            spared.len()
        )));
    }
    let mut per = per.to_vec();
    let mut flagged = Vec::with_capacity(n);
    for i in 0..n {
        let rescued = trained_on[i] && identifier.flagged[i];
        let by_clf = by_classifier[i] || rescued;
        if spared.get(labels[i]).copied().unwrap_or(false) {
            flagged.push(identifier.flagged[i] && by_clf);
            per[i].noise_score = identifier.noise_score[i];
        } else {
            flagged.push(by_clf);
            if rescued {
                per[i].noise_score = per[i].noise_score.max(identifier.noise_score[i]);
            }
        }
    }
    Ok(apply_caps(&per, flagged, labels, classes, op))
}

/// The joint scorer on a set neither network trained on (a saved
/// identifier on new data): the identifier's flags under `op` from its
/// per-sample scores and adjusted probabilities, the classes its score
/// floor would spare estimated on this set ([`class_estimates`],
/// [`floor_free_classes`]), the classifier's flags under `op`, then
/// [`classifier_scores`] with no sample trained on. `classifier_probs`
/// is needed only when [`Rule::needs_probabilities`]. Also returns the
/// spared classes.
#[allow(clippy::too_many_arguments)]
pub fn joint_scores(
    identifier: &[SampleScore],
    identifier_probs: &[f32],
    classifier: &[SampleScore],
    classifier_probs: Option<&[f32]>,
    labels: &[usize],
    classes: usize,
    op: &OperatingPoint,
) -> Result<(Scores, Vec<bool>)> {
    let id = apply(identifier, Some(identifier_probs), labels, classes, op)?;
    let spared = floor_free_classes(&class_estimates(identifier, identifier_probs, labels, classes)?, op.floor_exempt);
    let by_classifier = apply(classifier, classifier_probs, labels, classes, op)?;
    let none = vec![false; labels.len()];
    let scores = classifier_scores(&id, classifier, &by_classifier.flagged, &none, &spared, labels, classes, op)?;
    Ok((scores, spared))
}

/// `softmax(z - tau * log_prior)` of every row of a row-major `[n, classes]`
/// logits buffer (max-subtracted, as [`per_sample`]).
pub fn adjusted_probabilities(logits: &[f32], classes: usize, tau: &[f32], log_prior: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks_exact(classes) {
        let adj: Vec<f32> = (0..classes).map(|k| row[k] - tau[k] * log_prior[k]).collect();
        let m = adj.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = adj.iter().map(|a| (a - m).exp()).collect();
        let sum: f32 = e.iter().sum();
        out.extend(e.iter().map(|v| v / sum));
    }
    out
}

/// Convenience: [`per_sample`] over a row-major `[n, classes]` logits
/// buffer, then [`apply`].
pub fn score_logits(
    logits: &[f32],
    classes: usize,
    labels: &[usize],
    tau: &[f32],
    log_prior: &[f32],
    op: &OperatingPoint,
) -> Result<Scores> {
    score_logits_over_rounds(logits, classes, labels, tau, log_prior, op, &[])
}

/// [`score_logits`] with the score floor over this and the `earlier`
/// rounds' noise scores ([`apply_over_rounds`]).
pub fn score_logits_over_rounds(
    logits: &[f32],
    classes: usize,
    labels: &[usize],
    tau: &[f32],
    log_prior: &[f32],
    op: &OperatingPoint,
    earlier: &[&[f32]],
) -> Result<Scores> {
    let per = per_samples(logits, classes, labels, tau, log_prior);
    let probs = adjusted_probabilities(logits, classes, tau, log_prior);
    apply_over_rounds(&per, Some(&probs), labels, classes, op, earlier)
}

/// [`per_sample`] over each labelled row of a row-major `[n, classes]`
/// logits buffer.
pub fn per_samples(
    logits: &[f32],
    classes: usize,
    labels: &[usize],
    tau: &[f32],
    log_prior: &[f32],
) -> Vec<SampleScore> {
    logits.chunks_exact(classes).zip(labels).map(|(row, &l)| per_sample(row, Some(l), tau, log_prior)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Confident learning's per-class noise-rate estimates on the softmax
    /// of `logits` (no prior adjustment).
    fn noise_rates(logits: &[f32], labels: &[usize], classes: usize) -> Vec<f64> {
        let zero = vec![0.0; classes];
        let probs = adjusted_probabilities(logits, classes, &zero, &zero);
        crate::baselines::confident_learning(&probs, labels, classes).unwrap().noise_rate
    }

    #[test]
    fn adjustment_changes_the_prediction_toward_the_tail() {
        // Raw logits favour class 0 slightly; class 1 is rare (log prior very negative),
        // so subtracting tau*log(pi) lifts class 1 above class 0.
        let s = per_sample(&[1.0, 0.5], Some(1), &[1.0, 1.0], &[(0.9f32).ln(), (0.1f32).ln()]);
        assert_eq!(s.pred, 1);
        assert!(s.noise_score < 0.5);
        let plain = per_sample(&[1.0, 0.5], Some(1), &[0.0, 0.0], &[(0.9f32).ln(), (0.1f32).ln()]);
        assert_eq!(plain.pred, 0);
    }

    #[test]
    fn extreme_logits_stay_finite() {
        let s = per_sample(&[1e30, -1e30, 0.0], Some(1), &[1.0; 3], &[-1.0; 3]);
        assert!(s.noise_score.is_finite() && s.max_prob.is_finite());
        assert_eq!(s.pred, 0);
        assert!((s.noise_score - 1.0).abs() < 1e-6);
    }

    #[test]
    fn weights_caps_and_min_per_class() {
        let logits = [5.0, 0.0, 0.0, 5.0, 0.0, 5.0, 1.0, 0.0];
        let labels = [0, 0, 0, 1];
        let zero = [0.0; 2];
        let argmax = OperatingPoint { rule: Rule::Argmax, min_score: None, ..Default::default() };
        let s =
            score_logits(&logits, 2, &labels, &zero, &zero, &OperatingPoint { min_per_class: 0, ..argmax }).unwrap();
        assert_eq!(s.flagged, vec![false, true, true, true]);
        assert_eq!(s.weight[1], NOISE_WEIGHT);
        assert_eq!(s.weight[0], 1.0);
        // Class 1 has one sample: min_per_class 1 keeps it.
        let s = score_logits(&logits, 2, &labels, &zero, &zero, &argmax).unwrap();
        assert!(!s.flagged[3]);
        // Rate cap 0.25 of 4 samples: one flag, the highest score.
        let op = OperatingPoint { max_flag_rate: Some(0.25), min_per_class: 0, ..argmax };
        let s = score_logits(&logits, 2, &labels, &zero, &zero, &op).unwrap();
        assert_eq!(s.flagged.iter().filter(|&&f| f).count(), 1);
        let top = (0..4).max_by(|&a, &b| s.noise_score[a].total_cmp(&s.noise_score[b]).then(b.cmp(&a))).unwrap();
        assert!(s.flagged[top]);
    }

    #[test]
    fn confident_learning_rule_needs_and_uses_the_probabilities() {
        // Class 0: 6 samples, class 1: 4; sample 2 looks like class 1.
        let logits: Vec<f32> = [
            [4.0, 0.0],
            [3.5, 0.2],
            [0.1, 3.0],
            [3.9, 0.1],
            [4.2, 0.0],
            [3.0, 0.5],
            [0.0, 3.0],
            [0.3, 2.5],
            [0.1, 3.3],
            [0.0, 2.9],
        ]
        .concat();
        let labels = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1];
        let zero = [0.0; 2];
        let op =
            OperatingPoint { rule: Rule::ConfidentLearning, min_per_class: 0, min_score: None, ..Default::default() };
        let per = per_samples(&logits, 2, &labels, &zero, &zero);
        assert!(apply(&per, None, &labels, 2, &op).is_err());
        let s = score_logits(&logits, 2, &labels, &zero, &zero, &op).unwrap();
        let probs = adjusted_probabilities(&logits, 2, &zero, &zero);
        let want = crate::baselines::confident_learning(&probs, &labels, 2).unwrap().detection.flagged;
        assert_eq!(s.flagged, want);
        assert!(s.flagged[2] && s.flagged.iter().filter(|&&f| f).count() == 1, "{:?}", s.flagged);
        // Rows of the adjusted probabilities sum to one and follow the shift.
        let p = adjusted_probabilities(&[0.0, 0.0], 2, &[1.0, 1.0], &[(0.9f32).ln(), (0.1f32).ln()]);
        assert!((p[0] + p[1] - 1.0).abs() < 1e-6 && p[1] > 0.85);
        assert_eq!("cl".parse::<Rule>().unwrap(), Rule::ConfidentLearning);
        assert_eq!("threshold=0.7".parse::<Rule>().unwrap(), Rule::Threshold(0.7));
        assert!("threshold=2".parse::<Rule>().is_err() && "median".parse::<Rule>().is_err());
        // noise-rate: a subset of argmax's flags, at most the estimated noisy count per class.
        let op = OperatingPoint { rule: Rule::NoiseRate, min_per_class: 0, min_score: None, ..Default::default() };
        assert!(apply(&per, None, &labels, 2, &op).is_err());
        let nr = score_logits(&logits, 2, &labels, &zero, &zero, &op).unwrap();
        let rate = crate::baselines::confident_learning(&probs, &labels, 2).unwrap().noise_rate;
        let am = score_logits(&logits, 2, &labels, &zero, &zero, &OperatingPoint { rule: Rule::Argmax, ..op }).unwrap();
        for (c, r) in rate.iter().enumerate() {
            let n = labels.iter().filter(|&&l| l == c).count();
            let flags = (0..10).filter(|&i| labels[i] == c && nr.flagged[i]).count();
            assert!(flags as f64 <= (r * n as f64).round());
        }
        assert!(nr.flagged.iter().zip(&am.flagged).all(|(n, a)| !n || *a));
        assert!(nr.flagged[2]);
        for r in Rule::NAMED.into_iter().chain([Rule::Threshold(0.25)]) {
            assert_eq!(r.to_string().parse::<Rule>().unwrap(), r);
        }
    }

    #[test]
    fn agreement_needs_both_predictions_to_disagree() {
        // Class 0 is the head (pi 0.9), class 1 the tail (pi 0.1); tau 1
        // shifts class 1 up by ln 9 = 2.2 relative to class 0.
        let lp = [(0.9f32).ln(), (0.1f32).ln()];
        let tau = [1.0, 1.0];
        let logits = [
            1.0, 0.0, // plain 0, adjusted 1: the prior alone tips it
            3.0, 0.0, // plain 0, adjusted 0
            0.0, 1.0, // plain 1, adjusted 1
            3.0, 0.0, // plain 0, adjusted 0, but labelled 1
        ];
        let labels = [0, 0, 0, 1];
        let per: Vec<SampleScore> =
            logits.chunks(2).zip(&labels).map(|(r, &l)| per_sample(r, Some(l), &tau, &lp)).collect();
        assert_eq!(
            per.iter().map(|s| (s.pred, s.plain_pred)).collect::<Vec<_>>(),
            vec![(1, 0), (0, 0), (1, 1), (0, 0)]
        );
        let op = |rule| OperatingPoint { rule, min_per_class: 0, min_score: None, ..Default::default() };
        let am = apply(&per, None, &labels, 2, &op(Rule::Argmax)).unwrap();
        assert_eq!(am.flagged, vec![true, false, true, true]);
        // Per sample: no probability matrix needed.
        assert!(!Rule::Agreement.needs_probabilities());
        let ag = apply(&per, None, &labels, 2, &op(Rule::Agreement)).unwrap();
        assert_eq!(ag.flagged, vec![false, false, true, true]);
        assert_eq!(ag.weight[2], NOISE_WEIGHT);
        assert!(ag.weight[0] >= 0.5);
    }

    #[test]
    fn agreement_noise_rate_caps_the_agreement_flags_per_class() {
        // Class 0: 8 samples, 4 of which both predictions send to class 1;
        // class 1: 4 clean-looking samples. The estimated noise rate of
        // class 0 is below 4/8, so the cap keeps only the most suspicious.
        let logits: Vec<f32> = [
            [4.0, 0.0],
            [3.5, 0.2],
            [3.9, 0.1],
            [4.2, 0.0],
            [0.0, 3.0],
            [0.4, 1.0],
            [0.8, 1.0],
            [0.9, 1.0],
            [0.0, 3.0],
            [0.3, 2.5],
            [0.1, 3.3],
            [0.0, 2.9],
        ]
        .concat();
        let labels = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1];
        let zero = [0.0; 2];
        let op = |rule| OperatingPoint { rule, min_per_class: 0, min_score: None, ..Default::default() };
        assert!(Rule::AgreementNoiseRate.needs_probabilities());
        let per = per_samples(&logits, 2, &labels, &zero, &zero);
        assert!(apply(&per, None, &labels, 2, &op(Rule::AgreementNoiseRate)).is_err());
        let capped = score_logits(&logits, 2, &labels, &zero, &zero, &op(Rule::AgreementNoiseRate)).unwrap();
        let agree = score_logits(&logits, 2, &labels, &zero, &zero, &op(Rule::Agreement)).unwrap();
        let rate = noise_rates(&logits, &labels, 2);
        let cap0 = (rate[0] * 8.0).round() as usize;
        assert_eq!(agree.flagged.iter().filter(|&&f| f).count(), 4, "{:?}", agree.flagged);
        assert!(cap0 < 4, "the example must engage the cap: rate {rate:?}");
        // A subset of the agreement flags, exactly the cap's size, highest scores first.
        assert!(capped.flagged.iter().zip(&agree.flagged).all(|(c, a)| !c || *a));
        assert_eq!(capped.flagged.iter().filter(|&&f| f).count(), cap0);
        let lowest_kept =
            (0..12).filter(|&i| capped.flagged[i]).map(|i| capped.noise_score[i]).fold(f32::INFINITY, f32::min);
        let highest_dropped = (0..12)
            .filter(|&i| agree.flagged[i] && !capped.flagged[i])
            .map(|i| capped.noise_score[i])
            .fold(0.0, f32::max);
        assert!(lowest_kept >= highest_dropped);
        assert_eq!("agreement-noise-rate".parse::<Rule>().unwrap(), Rule::AgreementNoiseRate);

        // With a prior shift the two bases differ: samples 3 and 4 have a
        // plain prediction that keeps their label 0 and an adjusted one that
        // does not. Where the cap leaves room, argmax's cap keeps them and
        // the agreement cap does not.
        let lp = [(0.9f32).ln(), (0.1f32).ln()];
        let tau = [1.0, 1.0];
        let logits: Vec<f32> =
            [[4.0, 0.0], [3.5, 0.2], [0.0, 3.0], [1.0, 0.6], [1.0, 0.7], [1.0, 0.2], [1.0, 0.2], [0.9, 0.3]].concat();
        let labels = [0, 0, 0, 0, 0, 1, 1, 1];
        let capped = score_logits(&logits, 2, &labels, &tau, &lp, &op(Rule::AgreementNoiseRate)).unwrap();
        let argmax_capped = score_logits(&logits, 2, &labels, &tau, &lp, &op(Rule::NoiseRate)).unwrap();
        assert_eq!(capped.flagged, vec![false, false, true, false, false, false, false, false]);
        assert!(argmax_capped.flagged[3] && argmax_capped.flagged[4], "{:?}", argmax_capped.flagged);
    }

    #[test]
    fn agreement_noise_rate_leaves_a_mostly_noisy_class_uncapped() {
        // Class 1 (8 samples): 6 look like class 0 to both predictions (4
        // confidently, 2 less so), 2 like class 1. Confident learning
        // estimates its noise rate at 4/6 (the 2 unconfident ones do not
        // count), above one half: all six agreement flags stay, where the
        // noise-rate cap on argmax (the same flags here: no prior) keeps 5.
        let mut rows = vec![[3.0f32, 0.0]; 8];
        rows.extend([[4.0, 0.0], [4.1, 0.0], [4.2, 0.0], [4.3, 0.0], [1.5, 0.5], [1.4, 0.5], [0.0, 3.0], [0.2, 2.0]]);
        let logits: Vec<f32> = rows.concat();
        let labels: Vec<usize> = [vec![0; 8], vec![1; 8]].concat();
        let zero = [0.0; 2];
        let op = |rule| OperatingPoint { rule, min_per_class: 0, min_score: None, ..Default::default() };
        let rate = noise_rates(&logits, &labels, 2);
        assert!(
            rate[1] > MAJORITY_NOISE && rate[1] * 8.0 < 5.5,
            "the example needs a majority-noise class capped below 6: {rate:?}"
        );
        let agree = score_logits(&logits, 2, &labels, &zero, &zero, &op(Rule::Agreement)).unwrap();
        let anr = score_logits(&logits, 2, &labels, &zero, &zero, &op(Rule::AgreementNoiseRate)).unwrap();
        let nr = score_logits(&logits, 2, &labels, &zero, &zero, &op(Rule::NoiseRate)).unwrap();
        let count = |f: &[bool]| f[8..].iter().filter(|&&x| x).count();
        assert_eq!(count(&agree.flagged), 6);
        assert_eq!(anr.flagged, agree.flagged);
        assert_eq!(count(&nr.flagged), (rate[1] * 8.0).round() as usize);
    }

    #[test]
    fn a_score_floor_trims_borderline_flags_outside_systematic_flips() {
        // Class 1 is the mostly-noisy class of the test above: six
        // agreement flags pointing at class 0, four confident (noise score
        // ~0.98) and two borderline (~0.73). Class 0 (9 samples) has one
        // borderline flag of its own (sample 8, ~0.69).
        let mut rows = vec![[3.0f32, 0.0]; 8];
        rows.push([1.0, 1.8]);
        rows.extend([[4.0, 0.0], [4.1, 0.0], [4.2, 0.0], [4.3, 0.0], [1.5, 0.5], [1.4, 0.5], [0.0, 3.0], [0.2, 2.0]]);
        let logits: Vec<f32> = rows.concat();
        let labels: Vec<usize> = [vec![0; 9], vec![1; 8]].concat();
        let zero = [0.0; 2];
        let op = |rule, min_score| OperatingPoint { rule, min_per_class: 0, min_score, ..Default::default() };
        let agree = score_logits(&logits, 2, &labels, &zero, &zero, &op(Rule::Agreement, None)).unwrap();
        assert_eq!(agree.flagged.iter().filter(|&&f| f).count(), 7, "{:?}", agree.flagged);
        let floored = score_logits(&logits, 2, &labels, &zero, &zero, &op(Rule::Agreement, Some(0.9))).unwrap();
        // Without an exemption the floor drops exactly the flags scored under it.
        for i in 0..17 {
            assert_eq!(floored.flagged[i], agree.flagged[i] && agree.noise_score[i] >= 0.9, "sample {i}");
        }
        assert_eq!(floored.flagged.iter().filter(|&&f| f).count(), 4);
        assert!(!floored.flagged[8] && !floored.flagged[13] && !floored.flagged[14]);
        // Dropped flags become kept samples with a confidence weight.
        assert!(floored.weight[13] >= 0.5);
        // Agreement-noise-rate exempts class 1 (a systematic flip into
        // class 0): neither side of the pair gets the floor, and every
        // flag stays.
        let anr = score_logits(&logits, 2, &labels, &zero, &zero, &op(Rule::AgreementNoiseRate, None)).unwrap();
        assert_eq!(anr.flagged, agree.flagged);
        let anr9 = score_logits(&logits, 2, &labels, &zero, &zero, &op(Rule::AgreementNoiseRate, Some(0.9))).unwrap();
        assert_eq!(anr9.flagged, agree.flagged);
        // A floor of 0 changes nothing; the name carries the floor.
        let none = score_logits(&logits, 2, &labels, &zero, &zero, &op(Rule::Agreement, Some(0.0))).unwrap();
        assert_eq!(none.flagged, agree.flagged);
        assert_eq!(op(Rule::AgreementNoiseRate, Some(0.9)).to_string(), "agreement-noise-rate+min-score=0.9+any-flip");
        assert_eq!(op(Rule::Argmax, None).to_string(), "argmax");
        assert!(op(Rule::Argmax, Some(1.5)).validate().is_err());
        assert!(op(Rule::Threshold(-0.1), None).validate().is_err());
        assert!(op(Rule::AgreementNoiseRate, Some(0.9)).validate().is_ok());
    }

    #[test]
    fn the_floor_applies_to_classes_outside_a_flipped_pair() {
        // Three classes: class 1 is a systematic flip into class 0 (as
        // above); class 2 has one borderline flag pointing at class 0.
        // Classes 0 and 1 are floor-free, class 2 is not.
        // Class 0's own samples are not confident (p0 0.67), so the
        // borderline class-2 sample (p0 0.7, p2 0.2) counts as noise in
        // confident learning's estimate and survives class 2's cap.
        let mut rows = vec![[1.4f32, 0.0, 0.0]; 8];
        rows.extend([[4.0, 0.0, 0.0], [4.1, 0.0, 0.0], [4.2, 0.0, 0.0], [4.3, 0.0, 0.0]]);
        rows.extend([[1.5, 0.5, 0.0], [1.4, 0.5, 0.0], [0.0, 3.0, 0.0], [0.2, 2.0, 0.0]]);
        rows.extend(vec![[0.0, 0.0, 3.0]; 8]);
        rows.push([7f32.ln(), 0.0, 2f32.ln()]);
        let logits: Vec<f32> = rows.concat();
        let labels: Vec<usize> = [vec![0; 8], vec![1; 8], vec![2; 9]].concat();
        let zero = [0.0; 3];
        let op = |min_score| OperatingPoint {
            rule: Rule::AgreementNoiseRate,
            min_per_class: 0,
            min_score,
            floor_exempt: FloorExempt::MajorityFlip,
            ..Default::default()
        };
        let anr = score_logits(&logits, 3, &labels, &zero, &zero, &op(None)).unwrap();
        let anr9 = score_logits(&logits, 3, &labels, &zero, &zero, &op(Some(0.9))).unwrap();
        assert!(anr.flagged[24] && anr.noise_score[24] < 0.9, "{:?}", anr.flagged);
        assert!(anr.flagged[12] && anr.noise_score[12] < 0.9, "{:?}", anr.flagged);
        // Class 2's borderline flag goes; class 1's stays.
        assert!(!anr9.flagged[24] && anr9.flagged[12]);
        assert_eq!(anr9.flagged[..24], anr.flagged[..24]);
        // With `any-flip`, class 2's flags (one, pointing at class 0) are a
        // flip too although its estimated noise rate is far under one
        // half, so nothing is floored.
        let rates = noise_rates(&logits, &labels, 3);
        assert!(rates[2] < MAJORITY_NOISE, "{rates:?}");
        let any = OperatingPoint { floor_exempt: FloorExempt::AnyFlip, ..op(Some(0.9)) };
        let any9 = score_logits(&logits, 3, &labels, &zero, &zero, &any).unwrap();
        assert_eq!(any9.flagged, anr.flagged);
        assert_eq!(any.to_string(), "agreement-noise-rate+min-score=0.9+any-flip");
        // The per-class record says why.
        let per: Vec<SampleScore> =
            logits.chunks_exact(3).zip(&labels).map(|(row, &l)| per_sample(row, Some(l), &zero, &zero)).collect();
        let probs = adjusted_probabilities(&logits, 3, &zero, &zero);
        let est = class_estimates(&per, &probs, &labels, 3).unwrap();
        assert_eq!(est.iter().map(|e| e.samples).collect::<Vec<_>>(), vec![8, 8, 9]);
        assert_eq!((est[2].agreement_flags, est[2].flip_to, est[2].flip_share), (1, 0, 1.0));
        assert_eq!((est[1].flip_to, est[1].agreement_flags), (0, 6));
        assert_eq!(est[0].agreement_flags, 0);
        assert!((est[2].noise_rate - rates[2]).abs() < 1e-12);
        // From the record alone, the same floor-free classes as above: every
        // class with `any-flip`; class 1 (mostly noise) and class 0, which
        // it flips into, with `majority-flip`.
        assert_eq!(floor_free_classes(&est, FloorExempt::AnyFlip), vec![true, true, true]);
        assert_eq!(floor_free_classes(&est, FloorExempt::MajorityFlip), vec![true, true, false]);
    }

    #[test]
    fn floor_exemption_reads_back_and_defaults_for_old_bundles() {
        for e in [FloorExempt::MajorityFlip, FloorExempt::AnyFlip] {
            assert_eq!(e.to_string().parse::<FloorExempt>().unwrap(), e);
        }
        assert!("any".parse::<FloorExempt>().is_err());
        // A command line's floor: given, off at 0, else the rule's default.
        assert_eq!(min_score_for(Rule::AgreementNoiseRate, None), Some(DEFAULT_MIN_SCORE));
        assert_eq!(min_score_for(Rule::Argmax, None), None);
        assert_eq!(min_score_for(Rule::AgreementNoiseRate, Some(0.0)), None);
        assert_eq!(min_score_for(Rule::Argmax, Some(0.8)), Some(0.8));
        assert_eq!(min_score_for(Rule::Argmax, Some(-0.1)), Some(-0.1));
        // The floor between rounds: none unless given, off at 0.
        assert_eq!(round_min_score_for(None), None);
        assert_eq!(round_min_score_for(Some(0.0)), None);
        assert_eq!(round_min_score_for(Some(0.85)), Some(0.85));
        assert_eq!(round_min_score_for(Some(1.5)), Some(1.5));
        // An operating point saved before the field existed.
        let old: OperatingPoint = serde_json::from_str(
            r#"{"rule":{"rule":"agreement-noise-rate"},"max_flag_rate":null,"min_per_class":1,"min_score":0.9}"#,
        )
        .unwrap();
        assert_eq!(old.floor_exempt, FloorExempt::MajorityFlip);
        assert_eq!(old.min_score, Some(0.9));
        let any = OperatingPoint { floor_exempt: FloorExempt::AnyFlip, ..old };
        let back: OperatingPoint = serde_json::from_str(&serde_json::to_string(&any).unwrap()).unwrap();
        assert_eq!(back, any);
        // Without a floor the exemption changes nothing, and the name says so.
        assert_eq!(OperatingPoint { min_score: None, ..any }.to_string(), "agreement-noise-rate");
    }

    #[test]
    fn agreement_noise_rate_caps_a_hard_class_whose_flags_spread() {
        // Class 2 (9 samples: 4 confidently like class 0 or 1, 2 less so, 3
        // clean) is estimated to be mostly noise (5/9), as in the test
        // above, but its six flags split evenly between classes 0 and 1:
        // no systematic flip, so the cap applies (a hard class such as
        // Fashion-MNIST's Shirt, not pair noise).
        let mut rows = vec![[3.0f32, 0.0, 0.0]; 8];
        rows.extend(vec![[0.0f32, 3.0, 0.0]; 8]);
        rows.extend([
            [4.0, 0.0, 0.0],
            [0.0, 4.1, 0.0],
            [4.2, 0.0, 0.0],
            [0.0, 4.3, 0.0],
            [1.5, 0.0, 0.5],
            [0.0, 1.4, 0.5],
            [0.0, 0.0, 3.0],
            [0.0, 0.2, 2.0],
            [0.0, 0.0, 2.5],
        ]);
        let logits: Vec<f32> = rows.concat();
        let labels: Vec<usize> = [vec![0; 8], vec![1; 8], vec![2; 9]].concat();
        let zero = [0.0; 3];
        let op = |rule| OperatingPoint { rule, min_per_class: 0, min_score: None, ..Default::default() };
        let rate = noise_rates(&logits, &labels, 3);
        assert!(
            rate[2] > MAJORITY_NOISE && rate[2] * 9.0 < 5.5,
            "the example needs a majority-noise class capped below 6: {rate:?}"
        );
        let agree = score_logits(&logits, 3, &labels, &zero, &zero, &op(Rule::Agreement)).unwrap();
        let anr = score_logits(&logits, 3, &labels, &zero, &zero, &op(Rule::AgreementNoiseRate)).unwrap();
        let count = |f: &[bool]| f[16..].iter().filter(|&&x| x).count();
        assert_eq!(count(&agree.flagged), 6);
        assert_eq!(count(&anr.flagged), (rate[2] * 9.0).round() as usize);
        assert!(anr.flagged.iter().zip(&agree.flagged).all(|(a, g)| !a || *g));
        let per = per_samples(&logits, 3, &labels, &zero, &zero);
        assert_eq!(flip_shares(&per, &agree.flagged, &labels, 3)[2], (0.5, 0));
    }

    #[test]
    fn a_floor_over_rounds_needs_every_round_to_doubt_the_label() {
        // Two classes; samples 0-2 carry label 0 but look like class 1 to
        // this round (noise scores about 0.95); sample 3 is clean.
        let logits: Vec<f32> = [[0.0f32, 3.0], [0.0, 3.0], [0.0, 3.0], [3.0, 0.0]].concat();
        let labels = [0, 0, 0, 0];
        let zero = [0.0; 2];
        let per = per_samples(&logits, 2, &labels, &zero, &zero);
        let op = OperatingPoint { rule: Rule::Argmax, min_per_class: 0, min_score: Some(0.9), ..Default::default() };
        let last = apply(&per, None, &labels, 2, &op).unwrap();
        assert_eq!(last.flagged, vec![true, true, true, false]);
        // An earlier round doubted sample 1 less than the floor, sample 2
        // exactly at it: only sample 1 loses its flag.
        let earlier = [0.95f32, 0.4, 0.9, 0.99];
        let every = apply_over_rounds(&per, None, &labels, 2, &op, &[&earlier]).unwrap();
        assert_eq!(every.flagged, vec![true, false, true, false]);
        // The earlier round's score only reaches the floor: no floor, no change.
        let no_floor = OperatingPoint { min_score: None, ..op };
        assert_eq!(apply_over_rounds(&per, None, &labels, 2, &no_floor, &[&earlier]).unwrap().flagged, last.flagged);
        // The reported score stays this round's.
        assert_eq!(every.noise_score, last.noise_score);
        assert!(apply_over_rounds(&per, None, &labels, 2, &op, &[&earlier[..3]]).is_err());
        assert_eq!("every".parse::<FloorRounds>().unwrap(), FloorRounds::Every);
        assert_eq!(FloorRounds::Last.to_string(), "last");
        assert!("all".parse::<FloorRounds>().unwrap_err().to_string().contains("expected last or every"));
    }

    #[test]
    fn the_classifier_decides_outside_spared_classes_and_only_clears_inside() {
        // Class 0 is spared (a flipped class), class 1 is not.
        let labels = [0, 0, 0, 0, 1, 1, 1, 1];
        let id_flags = [true, true, false, true, true, false, false, true];
        let id_score = [0.95, 0.92, 0.1, 0.97, 0.9, 0.2, 0.3, 0.6];
        let clf_flags = [true, false, true, false, false, true, false, false];
        let clf_score = [0.99, 0.2, 0.96, 0.3, 0.4, 0.93, 0.1, 0.5];
        // Stage 2 trained on sample 3 (flagged by the identifier, class 0)
        // and sample 7 (flagged by the identifier, class 1).
        let trained_on = [false, false, true, true, false, true, true, true];
        let identifier = Scores {
            pred: vec![0; 8],
            noise_score: id_score.to_vec(),
            flagged: id_flags.to_vec(),
            weight: vec![1.0; 8],
        };
        let per: Vec<SampleScore> = (0..8)
            .map(|i| SampleScore {
                pred: 1 - labels[i],
                plain_pred: 1 - labels[i],
                noise_score: clf_score[i],
                max_prob: 0.5 + 0.05 * i as f32,
                prob_label: 1.0 - clf_score[i],
            })
            .collect();
        let op = OperatingPoint { min_per_class: 0, ..OperatingPoint::default() };
        let s = classifier_scores(&identifier, &per, &clf_flags, &trained_on, &[true, false], &labels, 2, &op).unwrap();
        // Class 0: both agree (0) -> flagged; the classifier clears 1;
        // it cannot add 2; 3 was trained on, so it keeps its flag.
        // Class 1: the classifier's own flags (5), plus the trained-on 7.
        assert_eq!(s.flagged, vec![true, false, false, true, false, true, false, true]);
        // Scores: the identifier's in the spared class, the classifier's
        // elsewhere, the higher of the two for the rescued sample 7.
        assert_eq!(s.noise_score, vec![0.95, 0.92, 0.1, 0.97, 0.4, 0.93, 0.1, 0.6]);
        // Weights: flagged 0.01, cleared samples a confidence weight.
        for (w, f) in s.weight.iter().zip(&s.flagged) {
            assert!(if *f { *w == NOISE_WEIGHT } else { (0.5..=1.0).contains(w) }, "{w} {f}");
        }
        // Without spared classes: the classifier decides everywhere.
        let s =
            classifier_scores(&identifier, &per, &clf_flags, &trained_on, &[false, false], &labels, 2, &op).unwrap();
        assert_eq!(s.flagged, vec![true, false, true, true, false, true, false, true]);
        assert_eq!(s.noise_score[3], 0.97);
        // Mismatched lengths are an error, not a panic.
        let err = classifier_scores(&identifier, &per[..7], &clf_flags, &trained_on, &[false, false], &labels, 2, &op);
        assert!(err.unwrap_err().to_string().contains("8 samples"));
        let err = classifier_scores(&identifier, &per, &clf_flags, &trained_on, &[false], &labels, 2, &op);
        assert!(err.is_err());
    }
}
