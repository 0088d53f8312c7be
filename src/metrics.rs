//! Evaluation math: noise-detection quality and classification accuracy,
//! overall and for head / medium / tail classes.
//!
//! Everything here is plain Rust over slices, so the training engine, the
//! benchmarks and `h2e eval` compute the same numbers the same way.
//!
//! Conventions (chosen so that every field is a finite number):
//! - precision is 0 when nothing is flagged;
//! - recall is 0 when there is no true noise;
//! - F1 is 0 when precision + recall is 0;
//! - AUROC is `None` when only one kind of ground truth (all noise or all
//!   clean) is present, since the ranking is then undefined.
//!
//! Class groups come from label frequency: classes sorted by count
//! descending (ties by class index); the first `round(C/3)` are *head*, the
//! last `round(C/3)` are *tail*, the rest *medium* (3/4/3 for C = 10).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Frequency group of a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// The most frequent third of the classes ("many-shot").
    Head,
    /// The classes between head and tail.
    Medium,
    /// The least frequent third of the classes ("few-shot").
    Tail,
}

/// Number of samples per class: `counts[c]` = how many `labels` equal `c`.
/// Labels `>= classes` are ignored (validate first where that matters).
pub fn label_counts(labels: &[usize], classes: usize) -> Vec<usize> {
    let mut counts = vec![0usize; classes];
    for &l in labels {
        if let Some(c) = counts.get_mut(l) {
            *c += 1;
        }
    }
    counts
}

/// The group of each class from its count (see the module docs for the
/// rule). `counts.len()` is the number of classes.
pub fn class_groups(counts: &[usize]) -> Vec<Group> {
    let c = counts.len();
    let third = (c as f64 / 3.0).round() as usize;
    let mut order: Vec<usize> = (0..c).collect();
    order.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
    let mut groups = vec![Group::Medium; c];
    for (rank, &class) in order.iter().enumerate() {
        if rank < third {
            groups[class] = Group::Head;
        } else if rank >= c - third {
            groups[class] = Group::Tail;
        }
    }
    groups
}

/// Noise-detection quality on one set of samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupMetrics {
    /// Flagged and truly noisy / flagged (0 when nothing is flagged).
    pub precision: f64,
    /// Flagged and truly noisy / truly noisy (0 when nothing is noisy).
    pub recall: f64,
    /// Harmonic mean of precision and recall (0 when both are 0).
    pub f1: f64,
    /// Probability that a random noisy sample scores above a random clean
    /// one (ties count one half); `None` when either kind is absent.
    pub auroc: Option<f64>,
    /// Number of flagged samples.
    pub flagged: usize,
    /// Number of truly noisy samples.
    pub noisy: usize,
    /// Number of samples in the set.
    pub samples: usize,
}

/// Noise-detection quality overall and per class group (by given label).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectionMetrics {
    /// Overall precision (0 when nothing is flagged).
    pub precision: f64,
    /// Overall recall (0 when nothing is noisy).
    pub recall: f64,
    /// Overall F1 (0 when precision + recall is 0).
    pub f1: f64,
    /// Overall AUROC of the score; `None` when one kind of truth is absent.
    pub auroc: Option<f64>,
    /// Number of flagged samples.
    pub flagged: usize,
    /// Number of truly noisy samples.
    pub noisy: usize,
    /// Number of samples.
    pub samples: usize,
    /// Samples whose given label is a head class.
    pub head: GroupMetrics,
    /// Samples whose given label is a medium class.
    pub medium: GroupMetrics,
    /// Samples whose given label is a tail class.
    pub tail: GroupMetrics,
}

/// Precision, recall and F1 of `flagged` against the truth `is_noise`
/// (same length), with the zero conventions of the module docs.
pub fn precision_recall_f1(flagged: &[bool], is_noise: &[bool]) -> (f64, f64, f64) {
    let tp = flagged.iter().zip(is_noise).filter(|(&f, &t)| f && t).count() as f64;
    let n_flagged = flagged.iter().filter(|&&f| f).count() as f64;
    let n_noisy = is_noise.iter().filter(|&&t| t).count() as f64;
    let precision = if n_flagged > 0.0 { tp / n_flagged } else { 0.0 };
    let recall = if n_noisy > 0.0 { tp / n_noisy } else { 0.0 };
    let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
    (precision, recall, f1)
}

/// Area under the ROC curve of `score` for detecting `positive`, by the
/// Mann-Whitney rank statistic with average ranks for tied scores (a tied
/// positive/negative pair counts one half). `None` when there are no
/// positives or no negatives.
pub fn auroc(score: &[f32], positive: &[bool]) -> Option<f64> {
    let n = score.len().min(positive.len());
    let n_pos = positive[..n].iter().filter(|&&p| p).count();
    let n_neg = n - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| score[a].total_cmp(&score[b]));
    let mut rank_sum_pos = 0.0f64;
    let mut start = 0;
    while start < n {
        let mut end = start + 1;
        while end < n && score[order[end]].total_cmp(&score[order[start]]).is_eq() {
            end += 1;
        }
        // Ranks start..end (1-based start+1..=end) share their average.
        let avg_rank = (start + 1 + end) as f64 / 2.0;
        let pos_in_tie = order[start..end].iter().filter(|&&i| positive[i]).count();
        rank_sum_pos += avg_rank * pos_in_tie as f64;
        start = end;
    }
    let (p, q) = (n_pos as f64, n_neg as f64);
    Some((rank_sum_pos - p * (p + 1.0) / 2.0) / (p * q))
}

fn group_metrics(flagged: &[bool], score: &[f32], is_noise: &[bool]) -> GroupMetrics {
    let (precision, recall, f1) = precision_recall_f1(flagged, is_noise);
    GroupMetrics {
        precision,
        recall,
        f1,
        auroc: auroc(score, is_noise),
        flagged: flagged.iter().filter(|&&f| f).count(),
        noisy: is_noise.iter().filter(|&&t| t).count(),
        samples: flagged.len(),
    }
}

fn check_labels(labels: &[usize], classes: usize) -> Result<()> {
    if classes == 0 {
        return Err(Error::Argument("number of classes must be positive".into()));
    }
    match labels.iter().position(|&l| l >= classes) {
        Some(i) => Err(Error::Argument(format!("label {} of sample {i} is not below {classes} classes", labels[i]))),
        None => Ok(()),
    }
}

fn check_len(what: &str, len: usize, expected: usize) -> Result<()> {
    if len == expected {
        Ok(())
    } else {
        Err(Error::Argument(format!("{what} has {len} entries, expected {expected}")))
    }
}

/// Noise-detection metrics of `flagged` (the decision) and `score` (higher
/// = more likely noise) against `is_noise`, overall and for the head /
/// medium / tail groups defined by the counts of the given `labels`.
///
/// Errors when the slices differ in length or a label is `>= classes`.
pub fn detection_metrics(
    flagged: &[bool],
    score: &[f32],
    is_noise: &[bool],
    labels: &[usize],
    classes: usize,
) -> Result<DetectionMetrics> {
    let n = labels.len();
    check_len("flags", flagged.len(), n)?;
    check_len("scores", score.len(), n)?;
    check_len("noise truth", is_noise.len(), n)?;
    check_labels(labels, classes)?;
    let groups = class_groups(&label_counts(labels, classes));
    let subset = |g: Group| {
        let idx: Vec<usize> = (0..n).filter(|&i| groups[labels[i]] == g).collect();
        let f: Vec<bool> = idx.iter().map(|&i| flagged[i]).collect();
        let s: Vec<f32> = idx.iter().map(|&i| score[i]).collect();
        let t: Vec<bool> = idx.iter().map(|&i| is_noise[i]).collect();
        group_metrics(&f, &s, &t)
    };
    let all = group_metrics(flagged, score, is_noise);
    Ok(DetectionMetrics {
        precision: all.precision,
        recall: all.recall,
        f1: all.f1,
        auroc: all.auroc,
        flagged: all.flagged,
        noisy: all.noisy,
        samples: all.samples,
        head: subset(Group::Head),
        medium: subset(Group::Medium),
        tail: subset(Group::Tail),
    })
}

/// Classification accuracy on a test set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccuracyMetrics {
    /// Fraction of correct predictions (0 for an empty set).
    pub accuracy: f64,
    /// Mean per-class accuracy over the classes present in the test set.
    pub balanced_accuracy: f64,
    /// Accuracy of each class; `None` for a class absent from the test set.
    pub per_class: Vec<Option<f64>>,
    /// Mean per-class accuracy of the head classes of the training set;
    /// `None` when none of them is in the test set.
    pub many_shot: Option<f64>,
    /// Same for the medium classes.
    pub medium_shot: Option<f64>,
    /// Same for the tail classes.
    pub few_shot: Option<f64>,
    /// Number of test samples.
    pub samples: usize,
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, count) = values.fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
    (count > 0).then(|| sum / count as f64)
}

/// Accuracy of `pred` against `truth` (test set); `train_counts[c]` is the
/// number of training samples of class `c` (its length is the number of
/// classes) and defines the many / medium / few-shot groups with
/// [`class_groups`].
///
/// Errors when `pred` and `truth` differ in length or a class is out of
/// range.
pub fn accuracy_metrics(pred: &[usize], truth: &[usize], train_counts: &[usize]) -> Result<AccuracyMetrics> {
    let classes = train_counts.len();
    check_len("predictions", pred.len(), truth.len())?;
    check_labels(truth, classes)?;
    check_labels(pred, classes)?;
    let mut correct = vec![0usize; classes];
    let total = label_counts(truth, classes);
    for (&p, &t) in pred.iter().zip(truth) {
        correct[t] += usize::from(p == t);
    }
    let per_class: Vec<Option<f64>> =
        (0..classes).map(|c| (total[c] > 0).then(|| correct[c] as f64 / total[c] as f64)).collect();
    let groups = class_groups(train_counts);
    let group_mean = |g: Group| mean((0..classes).filter(|&c| groups[c] == g).filter_map(|c| per_class[c]));
    let n = truth.len();
    Ok(AccuracyMetrics {
        accuracy: if n > 0 { correct.iter().sum::<usize>() as f64 / n as f64 } else { 0.0 },
        balanced_accuracy: mean(per_class.iter().flatten().copied()).unwrap_or(0.0),
        many_shot: group_mean(Group::Head),
        medium_shot: group_mean(Group::Medium),
        few_shot: group_mean(Group::Tail),
        per_class,
        samples: n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// Pairwise definition: P(score_pos > score_neg) + 0.5 P(equal).
    fn auroc_pairwise(score: &[f32], positive: &[bool]) -> f64 {
        let (mut num, mut den) = (0.0, 0.0);
        for i in (0..score.len()).filter(|&i| positive[i]) {
            for j in (0..score.len()).filter(|&j| !positive[j]) {
                den += 1.0;
                num += if score[i] > score[j] {
                    1.0
                } else if score[i] == score[j] {
                    0.5
                } else {
                    0.0
                };
            }
        }
        num / den
    }

    #[test]
    fn auroc_with_ties_matches_hand_computation() {
        // Positives {0.4, 0.8}, negatives {0.1, 0.4}: pairs 1 + 0.5 + 1 + 1 = 3.5 of 4.
        let a = auroc(&[0.1, 0.4, 0.4, 0.8], &[false, true, false, true]).unwrap();
        assert!(close(a, 0.875), "{a}");
        // All tied: 0.5.
        let a = auroc(&[0.3; 5], &[true, false, true, false, false]).unwrap();
        assert!(close(a, 0.5), "{a}");
    }

    #[test]
    fn auroc_perfect_inverted_and_undefined() {
        let truth = [false, false, true, true, false, true];
        let perfect = [0.1, 0.2, 0.9, 0.8, 0.3, 0.7];
        let inverted: Vec<f32> = perfect.iter().map(|s| 1.0 - s).collect();
        assert!(close(auroc(&perfect, &truth).unwrap(), 1.0));
        assert!(close(auroc(&inverted, &truth).unwrap(), 0.0));
        assert_eq!(auroc(&[0.1, 0.2], &[true, true]), None);
        assert_eq!(auroc(&[0.1, 0.2], &[false, false]), None);
    }

    #[test]
    fn auroc_rank_formula_equals_pairwise_definition_on_random_data() {
        let mut rng = Rng::new(11);
        for _ in 0..20 {
            let n = 2 + rng.below(60);
            // Coarse scores so that ties are frequent.
            let score: Vec<f32> = (0..n).map(|_| rng.below(7) as f32 / 7.0).collect();
            let mut truth: Vec<bool> = (0..n).map(|_| rng.below(3) == 0).collect();
            truth[0] = true;
            truth[1] = false;
            let a = auroc(&score, &truth).unwrap();
            assert!((a - auroc_pairwise(&score, &truth)).abs() < 1e-9);
        }
    }

    #[test]
    fn precision_recall_f1_small_example_and_conventions() {
        // 3 flagged, 2 of them noisy; 4 noisy in total.
        let flagged = [true, true, true, false, false, false, false];
        let noise = [true, true, false, true, true, false, false];
        let (p, r, f) = precision_recall_f1(&flagged, &noise);
        assert!(close(p, 2.0 / 3.0) && close(r, 0.5));
        assert!(close(f, 2.0 * (2.0 / 3.0) * 0.5 / (2.0 / 3.0 + 0.5)), "{f}"); // 4/7
        assert!(close(f, 4.0 / 7.0));
        assert_eq!(precision_recall_f1(&[false; 3], &[true, false, false]), (0.0, 0.0, 0.0));
        assert_eq!(precision_recall_f1(&[true, false], &[false, false]), (0.0, 0.0, 0.0));
    }

    #[test]
    fn groups_for_ten_long_tailed_classes_are_3_4_3() {
        // Class sizes in a scrambled order, one tie (classes 2 and 7 both 50).
        let counts = [500, 20, 50, 5000, 10, 1000, 200, 50, 2000, 100];
        let g = class_groups(&counts);
        let of = |grp: Group| (0..10).filter(|&c| g[c] == grp).collect::<Vec<_>>();
        assert_eq!(of(Group::Head), vec![3, 5, 8]);
        assert_eq!(of(Group::Tail), vec![1, 4, 7]); // 7 ranks after 2 on the tie
        assert_eq!(of(Group::Medium), vec![0, 2, 6, 9]);
        assert_eq!(class_groups(&[5, 5]), vec![Group::Head, Group::Tail]);
        assert_eq!(class_groups(&[7]), vec![Group::Medium]);
    }

    #[test]
    fn detection_metrics_split_by_label_group() {
        // 3 classes: counts 4 (head), 2 (medium), 1 (tail); C=3 gives 1/1/1.
        let labels = [0, 0, 0, 0, 1, 1, 2];
        let noise = [false, true, false, false, true, false, true];
        let flagged = [true, true, false, false, false, false, true];
        let score = [0.6, 0.9, 0.1, 0.2, 0.4, 0.5, 0.8];
        let m = detection_metrics(&flagged, &score, &noise, &labels, 3).unwrap();
        assert_eq!((m.flagged, m.noisy, m.samples), (3, 3, 7));
        assert!(close(m.precision, 2.0 / 3.0) && close(m.recall, 2.0 / 3.0));
        assert_eq!((m.head.flagged, m.head.noisy, m.head.samples), (2, 1, 4));
        assert!(close(m.head.precision, 0.5) && close(m.head.recall, 1.0));
        assert_eq!(m.head.auroc, Some(1.0));
        assert_eq!(m.medium.auroc, Some(0.0)); // the noisy one scores lower
        assert!(close(m.medium.f1, 0.0));
        assert!(close(m.tail.f1, 1.0));
        assert_eq!(m.tail.auroc, None);
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"tail\":{\"precision\":1.0"), "{json}");
        assert!(detection_metrics(&flagged[..6], &score, &noise, &labels, 3).is_err());
        assert!(detection_metrics(&flagged, &score, &noise, &labels, 2).is_err());
    }

    #[test]
    fn accuracy_balanced_and_shot_groups() {
        // Train counts make class 0 head, 1 medium, 2 tail.
        let train_counts = [100, 10, 1];
        let truth = [0, 0, 0, 0, 1, 1, 2, 2];
        let pred = [0, 0, 0, 1, 1, 0, 0, 0];
        let a = accuracy_metrics(&pred, &truth, &train_counts).unwrap();
        assert!(close(a.accuracy, 4.0 / 8.0));
        assert_eq!(a.per_class, vec![Some(0.75), Some(0.5), Some(0.0)]);
        assert!(close(a.balanced_accuracy, (0.75 + 0.5 + 0.0) / 3.0));
        assert_eq!((a.many_shot, a.medium_shot, a.few_shot), (Some(0.75), Some(0.5), Some(0.0)));
        // A class absent from the test set is left out of the means.
        let a = accuracy_metrics(&[0, 1], &[0, 1], &train_counts).unwrap();
        assert_eq!(a.few_shot, None);
        assert!(close(a.balanced_accuracy, 1.0));
        assert!(accuracy_metrics(&[0, 3], &[0, 1], &train_counts).is_err());
    }
}
