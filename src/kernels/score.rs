//! Fused identifier scoring: `shaders/score.wgsl` on wgpu, tensor ops with
//! the same semantics elsewhere. The reference is
//! [`crate::score::per_sample`].

use burn::tensor::{Int, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::score::SampleScore;

/// Per-sample scoring results, as tensors on the logits' device.
#[derive(Debug, Clone)]
pub struct ScoreOutput {
    /// Argmax of the adjusted logits (lowest index on ties), `[n]`.
    pub pred: Tensor<1, Int>,
    /// Argmax of the raw logits (lowest index on ties), `[n]`.
    pub plain_pred: Tensor<1, Int>,
    /// `1 - p[label]` in `[0, 1]` (`1 - max p` when unlabelled), `[n]`.
    pub noise_score: Tensor<1>,
    /// Max adjusted probability, `[n]`.
    pub max_prob: Tensor<1>,
    /// Adjusted probability of the label (`max_prob` when unlabelled), `[n]`.
    pub prob_label: Tensor<1>,
}

impl ScoreOutput {
    /// Reads the results back as [`SampleScore`]s (one sync with the device).
    pub fn to_samples(&self) -> Result<Vec<SampleScore>> {
        let read = |t: &Tensor<1>, what: &str| {
            t.to_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| Error::Train(format!("reading {what}: {e:?}")))
        };
        let read_int = |t: &Tensor<1, Int>, what: &str| {
            t.to_data().convert::<i64>().try_to_vec::<i64>().map_err(|e| Error::Train(format!("reading {what}: {e:?}")))
        };
        let pred = read_int(&self.pred, "predictions")?;
        let plain = read_int(&self.plain_pred, "plain predictions")?;
        let noise = read(&self.noise_score, "noise scores")?;
        let maxp = read(&self.max_prob, "max probabilities")?;
        let pl = read(&self.prob_label, "label probabilities")?;
        Ok((0..pred.len())
            .map(|i| SampleScore {
                pred: pred[i] as usize,
                plain_pred: plain[i] as usize,
                noise_score: noise[i],
                max_prob: maxp[i],
                prob_label: pl[i],
            })
            .collect())
    }
}

pub(crate) fn check_shapes(n: usize, classes: usize, labels: usize, tau: &[f32], log_prior: &[f32]) -> Result<()> {
    if classes == 0 || n == 0 {
        return Err(Error::Argument(format!("score: logits of shape [{n}, {classes}] are empty")));
    }
    if labels != n || tau.len() != classes || log_prior.len() != classes {
        return Err(Error::Argument(format!(
            "score: logits [{n}, {classes}] need {n} labels and {classes} tau / log-prior entries; got {}, {}, {}",
            labels,
            tau.len(),
            log_prior.len()
        )));
    }
    Ok(())
}

/// Scores `logits` `[n, classes]` (the head's `W f(x) + b`) against
/// `labels` `[n]` with per-class `tau` and `log_prior` (`log pi`): the
/// semantics of [`crate::score::per_sample`] for every row. A label outside
/// `[0, classes)` (e.g. -1) means unlabelled. Runs `shaders/score.wgsl` in
/// one pass when the logits live on a wgpu device, tensor ops otherwise; the
/// logits may be autodiff tensors (scoring is not differentiated).
pub fn score(logits: Tensor<2>, labels: Tensor<1, Int>, tau: &[f32], log_prior: &[f32]) -> Result<ScoreOutput> {
    let [n, classes] = logits.dims();
    check_shapes(n, classes, labels.dims()[0], tau, log_prior)?;
    let logits = if logits.is_autodiff() { logits.inner() } else { logits };
    if let Some(out) = super::gpu::score(&logits, &labels, tau, log_prior)? {
        return Ok(out);
    }
    score_tensor_ops(logits, labels, tau, log_prior)
}

/// The tensor-op implementation used on non-wgpu devices (no CPU round
/// trip on CUDA either).
pub fn score_tensor_ops(
    logits: Tensor<2>,
    labels: Tensor<1, Int>,
    tau: &[f32],
    log_prior: &[f32],
) -> Result<ScoreOutput> {
    let [n, classes] = logits.dims();
    check_shapes(n, classes, labels.dims()[0], tau, log_prior)?;
    let device = logits.device();
    // tau * log(pi) rounded exactly as the reference does (one f32 product).
    let shift: Vec<f32> = tau.iter().zip(log_prior).map(|(t, l)| t * l).collect();
    let shift = Tensor::<1>::from_data(TensorData::new(shift, [classes]), &device);
    let idx = Tensor::<1, Int>::arange(0..classes as i64, &device).unsqueeze_dim::<2>(0).expand([n, classes]);
    // Lowest index among the maxima of each row.
    let first_max = |t: Tensor<2>, m: Tensor<2>| {
        idx.clone().mask_fill(t.greater_equal(m).bool_not(), classes as i64).min_dim(1).squeeze_dim::<1>(1)
    };
    let plain_pred = first_max(logits.clone(), logits.clone().max_dim(1));
    let adj = logits - shift.unsqueeze_dim::<2>(0);
    let m = adj.clone().max_dim(1);
    let pred = first_max(adj.clone(), m.clone());
    let e = (adj - m).exp();
    let sum = e.clone().sum_dim(1);
    let max_prob = sum.clone().recip();
    let valid = labels.clone().greater_equal_elem(0).bool_and(labels.clone().lower_elem(classes as i64));
    let li = labels.clamp(0, classes as i64 - 1).unsqueeze_dim::<2>(1);
    let prob_label =
        (e.gather(1, li) / sum).mask_where(valid.clone().bool_not().unsqueeze_dim::<2>(1), max_prob.clone());
    let noise_score = (prob_label.clone().neg() + 1.0).clamp(0.0, 1.0);
    Ok(ScoreOutput {
        pred,
        plain_pred,
        noise_score: noise_score.squeeze_dim::<1>(1),
        max_prob: max_prob.squeeze_dim::<1>(1),
        prob_label: prob_label.squeeze_dim::<1>(1),
    })
}
