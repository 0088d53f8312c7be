//! Operating points studied offline: every h2e round's identifier logits on
//! a benchmark draw, saved next to its result (`h2e bench quality
//! --save-logits` writes `draws/NAME.h2e.logits.safetensors`), and any
//! operating point recomputed from them without training again (`h2e
//! bench rescore`).
//!
//! The file is safetensors: `labels` and `true_labels` (u32, one per
//! sample), and per round `r` (from 1) `round{r}.logits` (f32, samples x
//! classes, the head's raw logits), `round{r}.tau` and `round{r}.log_prior`
//! (f32, one per class); optionally `NAME.probs` (f32, samples x classes),
//! other networks' softmax probabilities on the same samples (a run writes
//! `plain`, `backbone` and, with `--classifier`, `classifier`). Scoring
//! goes through [`crate::score`]'s plain reference implementation, which
//! the WGSL scoring kernel is tested against, so a recomputed operating
//! point flags what a training run with it would have flagged in that round
//! (rounds after the first trained on the samples the run's own rule kept).

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Error, Result};
use crate::metrics::DetectionMetrics;
use crate::score::{self, FloorRounds, OperatingPoint};
use crate::train::RoundLogits;

/// One draw's saved round logits with the labels they were scored against.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedLogits {
    /// Classes.
    pub classes: usize,
    /// Given (noisy) label per sample.
    pub labels: Vec<usize>,
    /// Clean label per sample.
    pub true_labels: Vec<usize>,
    /// Every round, in order.
    pub rounds: Vec<RoundLogits>,
    /// Other networks' softmax probabilities on the same samples (samples
    /// x classes), by name (`NAME.probs` in the file); may be empty.
    pub networks: Vec<(String, Vec<f32>)>,
}

impl SavedLogits {
    /// Checks that every array has the size the labels and classes imply.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let (n, c) = (self.labels.len(), self.classes);
        if c == 0 || n == 0 {
            return Err("no samples or no classes".into());
        }
        if self.true_labels.len() != n {
            return Err(format!("{} true labels for {n} labels", self.true_labels.len()));
        }
        if let Some(l) = self.labels.iter().chain(&self.true_labels).find(|&&l| l >= c) {
            return Err(format!("label {l} is not below the {c} classes"));
        }
        if self.rounds.is_empty() {
            return Err("no rounds".into());
        }
        for (i, r) in self.rounds.iter().enumerate() {
            if r.round != i + 1 {
                return Err(format!("round {} where round {} was expected", r.round, i + 1));
            }
            if r.logits.len() != n * c || r.tau.len() != c || r.log_prior.len() != c {
                return Err(format!(
                    "round {}: {} logits, {} tau, {} log prior values for {n} samples and {c} classes",
                    r.round,
                    r.logits.len(),
                    r.tau.len(),
                    r.log_prior.len()
                ));
            }
            if r.logits.iter().chain(&r.tau).chain(&r.log_prior).any(|v| !v.is_finite()) {
                return Err(format!("round {}: non-finite values", r.round));
            }
        }
        for (name, p) in &self.networks {
            if name.is_empty() || name.starts_with("round") || name.contains(['.', '"']) {
                return Err(format!("network name {name:?} is not a plain name"));
            }
            if p.len() != n * c {
                return Err(format!("network {name}: {} probabilities for {n} samples and {c} classes", p.len()));
            }
            if p.iter().any(|v| !v.is_finite()) {
                return Err(format!("network {name}: non-finite values"));
            }
        }
        Ok(())
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.validate().map_err(|e| Error::Argument(format!("round logits: {e}")))?;
        let (n, c) = (self.labels.len(), self.classes);
        let u32s = |v: &[usize]| -> Vec<u8> { v.iter().flat_map(|&x| (x as u32).to_le_bytes()).collect() };
        let f32s = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let mut arrays: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![
            ("labels".into(), Dtype::U32, vec![n], u32s(&self.labels)),
            ("true_labels".into(), Dtype::U32, vec![n], u32s(&self.true_labels)),
        ];
        for r in &self.rounds {
            let k = r.round;
            arrays.push((format!("round{k}.logits"), Dtype::F32, vec![n, c], f32s(&r.logits)));
            arrays.push((format!("round{k}.tau"), Dtype::F32, vec![c], f32s(&r.tau)));
            arrays.push((format!("round{k}.log_prior"), Dtype::F32, vec![c], f32s(&r.log_prior)));
        }
        for (name, p) in &self.networks {
            arrays.push((format!("{name}.probs"), Dtype::F32, vec![n, c], f32s(p)));
        }
        let views: Vec<(String, TensorView<'_>)> = arrays
            .iter()
            .map(|(k, d, s, b)| TensorView::new(*d, s.clone(), b).map(|v| (k.clone(), v)))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Train(format!("safetensors: {e}")))?;
        let meta = HashMap::from([("rounds".to_string(), self.rounds.len().to_string())]);
        safetensors::serialize(views, &Some(meta)).map_err(|e| Error::Train(format!("safetensors: {e}")))
    }

    /// Reads a file written by [`SavedLogits::to_bytes`]; errors name `path`.
    pub fn read(path: &Path) -> Result<SavedLogits> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
        let bad = |what: String| Error::invalid(path.display().to_string(), "round logits file", what);
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("not safetensors: {e}")))?;
        let get = |name: &str, dtype: Dtype| -> Result<(Vec<usize>, Vec<u8>)> {
            let t = st.tensor(name).map_err(|_| bad(format!("no `{name}` array")))?;
            if t.dtype() != dtype {
                return Err(bad(format!("`{name}` is {:?}, not {dtype:?}", t.dtype())));
            }
            Ok((t.shape().to_vec(), t.data().to_vec()))
        };
        let words = |b: &[u8]| -> Vec<[u8; 4]> { b.chunks_exact(4).map(|w| [w[0], w[1], w[2], w[3]]).collect() };
        let u32s = |name: &str| -> Result<Vec<usize>> {
            Ok(words(&get(name, Dtype::U32)?.1).into_iter().map(|w| u32::from_le_bytes(w) as usize).collect())
        };
        let f32s = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
            let (shape, b) = get(name, Dtype::F32)?;
            Ok((shape, words(&b).into_iter().map(f32::from_le_bytes).collect()))
        };
        let labels = u32s("labels")?;
        let true_labels = u32s("true_labels")?;
        let mut rounds = Vec::new();
        let mut classes = 0;
        for k in 1.. {
            if st.tensor(&format!("round{k}.logits")).is_err() {
                break;
            }
            let (shape, logits) = f32s(&format!("round{k}.logits"))?;
            if shape.len() != 2 {
                return Err(bad(format!("`round{k}.logits` has shape {shape:?}, not samples x classes")));
            }
            classes = shape[1];
            let tau = f32s(&format!("round{k}.tau"))?.1;
            let log_prior = f32s(&format!("round{k}.log_prior"))?.1;
            rounds.push(RoundLogits { round: k, logits, tau, log_prior });
        }
        let mut networks = Vec::new();
        let mut names: Vec<String> =
            st.names().into_iter().filter_map(|k| k.strip_suffix(".probs").map(String::from)).collect();
        names.sort();
        for name in names {
            networks.push((name.clone(), f32s(&format!("{name}.probs"))?.1));
        }
        let saved = SavedLogits { classes, labels, true_labels, rounds, networks };
        saved.validate().map_err(bad)?;
        Ok(saved)
    }

    /// Detection quality of `op` on every round's scores:
    /// `(round, metrics)`. With [`FloorRounds::Every`], round `r`'s score
    /// floor reads each sample's lowest noise score over rounds 1 to `r`.
    pub fn rescore(&self, op: &OperatingPoint, floor_rounds: FloorRounds) -> Result<Vec<(usize, DetectionMetrics)>> {
        op.validate()?;
        let truth: Vec<bool> = self.labels.iter().zip(&self.true_labels).map(|(l, t)| l != t).collect();
        let mut earlier: Vec<Vec<f32>> = Vec::new();
        let mut out = Vec::new();
        for r in &self.rounds {
            let history = floor_rounds.history(&earlier);
            let s = score::score_logits_over_rounds(
                &r.logits,
                self.classes,
                &self.labels,
                &r.tau,
                &r.log_prior,
                op,
                &history,
            )?;
            let m = crate::metrics::detection_metrics(&s.flagged, &s.noise_score, &truth, &self.labels, self.classes)?;
            out.push((r.round, m));
            earlier.push(s.noise_score);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::{FloorExempt, Rule};

    fn saved() -> SavedLogits {
        // Three classes, six samples; sample 1 and 4 carry a wrong label.
        let labels = vec![0, 0, 1, 1, 2, 2];
        let true_labels = vec![0, 1, 1, 1, 0, 2];
        let logits = vec![
            3.0, 0.0, 0.0, //
            0.0, 4.0, 0.0, //
            0.0, 3.0, 0.0, //
            0.0, 2.5, 0.5, //
            5.0, 0.0, 0.0, //
            0.0, 0.0, 3.0,
        ];
        let round = |k| RoundLogits { round: k, logits: logits.clone(), tau: vec![1.0; 3], log_prior: vec![-1.1; 3] };
        let probs = logits.iter().map(|&z| if z > 0.0 { 0.8 } else { 0.1 }).collect();
        SavedLogits {
            classes: 3,
            labels,
            true_labels,
            rounds: vec![round(1), round(2)],
            networks: vec![("classifier".into(), probs)],
        }
    }

    #[test]
    fn a_saved_file_reads_back_and_rescores_like_the_scorer() {
        let s = saved();
        let dir = std::env::temp_dir().join(format!("h2e-rescore-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.h2e.logits.safetensors");
        std::fs::write(&path, s.to_bytes().unwrap()).unwrap();
        let back = SavedLogits::read(&path).unwrap();
        assert_eq!(back, s);
        let op = OperatingPoint { rule: Rule::Argmax, min_score: None, ..Default::default() };
        let rows = back.rescore(&op, FloorRounds::Last).unwrap();
        assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2]);
        // Argmax flags exactly the two mislabelled samples.
        assert_eq!(rows[0].1.flagged, 2);
        assert_eq!(rows[0].1.noisy, 2);
        assert!((rows[0].1.f1 - 1.0).abs() < 1e-9);
        // A floor above every noise score flags nothing.
        let floor = OperatingPoint {
            rule: Rule::Argmax,
            min_score: Some(1.0),
            floor_exempt: FloorExempt::AnyFlip,
            ..Default::default()
        };
        assert_eq!(back.rescore(&floor, FloorRounds::Last).unwrap()[1].1.flagged, 0);
        // Over every round, a flag of round 2 also needs round 1 to doubt
        // the label: make round 1 sure of sample 4's given label.
        let mut doubtful = back.clone();
        doubtful.rounds[0].logits[12..15].copy_from_slice(&[0.0, 0.0, 5.0]);
        let floor = OperatingPoint { rule: Rule::Argmax, min_score: Some(0.5), min_per_class: 0, ..Default::default() };
        let last = doubtful.rescore(&floor, FloorRounds::Last).unwrap();
        let every = doubtful.rescore(&floor, FloorRounds::Every).unwrap();
        assert_eq!((last[0].1.flagged, last[1].1.flagged), (1, 2));
        assert_eq!((every[0].1.flagged, every[1].1.flagged), (1, 1));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_damaged_file_is_refused_with_its_name() {
        let dir = std::env::temp_dir().join(format!("h2e-rescore-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("broken.safetensors");
        std::fs::write(&path, b"not a safetensors file").unwrap();
        let e = SavedLogits::read(&path).unwrap_err().to_string();
        assert!(e.contains("broken.safetensors"), "{e}");
        // Logits of the wrong size for the labels.
        let mut s = saved();
        s.rounds[1].logits.pop();
        assert!(s.to_bytes().is_err());
        s.rounds[1].logits.push(0.0);
        s.networks[0].1.pop();
        assert!(s.validate().unwrap_err().contains("network classifier"));
        s.networks[0].1.push(0.1);
        s.networks[0].0 = "round9".into();
        assert!(s.validate().unwrap_err().contains("not a plain name"));
        s.networks[0].0 = "classifier".into();
        s.labels[0] = 7;
        assert!(s.validate().unwrap_err().contains("label 7"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
