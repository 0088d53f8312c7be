//! Identifier bundles: a trained noise identifier saved as a zip, and the
//! API that applies it to new data.
//!
//! Members: `config.json` ([`IdentifierConfig`]: how it was made and
//! everything needed to score), `model.safetensors` (backbone and its
//! classifier), `head.safetensors` (the identifier head with its `tau`),
//! optionally `classifier.safetensors` (stage 2), and `report.json`
//! ([`TrainReport`]).
//!
//! ```no_run
//! use h2e::identifier::Identifier;
//! use h2e::data::{open_source, load_split, Split};
//! let id = Identifier::open("identifier.zip".as_ref(), burn::tensor::Device::flex()).unwrap();
//! let src = open_source("new_images/".as_ref()).unwrap();
//! let set = load_split(src.as_ref(), Split::Train, id.channels(), id.input_size(), id.input_size(), &mut |_, _| {}).unwrap();
//! let scores = id.score_set(&set, None).unwrap();
//! println!("{} flagged", scores.flagged.iter().filter(|&&f| f).count());
//! ```

use std::io::Write;
use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use crate::bundle::SafeZip;
use crate::data::TensorSet;
use crate::error::{Error, Result};
use crate::fsutil::AtomicFile;
use crate::kernels::{self, PackedBatch, PreprocessParams};
use crate::model::{BackboneKind, Head, Net};
use crate::score::{self, OperatingPoint, SampleScore, Scores};
use crate::train::{read_f32, Scorer, TrainConfig, TrainReport, Trained};
use crate::weights;

/// `format` of an identifier's `config.json`.
pub const FORMAT: &str = "h2e-identifier";
/// Newest identifier format version this build reads and the one it writes.
pub const VERSION: u32 = 1;
/// Cap on one member's decompressed size.
const MAX_MEMBER: u64 = 1 << 30;

/// `config.json` of an identifier bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentifierConfig {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// Version of h2e that wrote it.
    pub crate_version: String,
    /// Backbone architecture.
    pub backbone: BackboneKind,
    /// Image channels (1 or 3).
    pub channels: usize,
    /// Square input size in pixels.
    pub input_size: usize,
    /// Normalisation mean of `x / 255`.
    pub mean: [f32; 3],
    /// Normalisation standard deviation.
    pub std: [f32; 3],
    /// Class names (label = index).
    pub classes: Vec<String>,
    /// Learned per-class tau (0 for the baselines; 1 when the stage-2
    /// classifier scores, `train.scorer` = `classifier`).
    pub tau: Vec<f32>,
    /// Class priors `pi` of the final training set (of the scoring
    /// network's: the stage-2 classifier's kept set when it scores).
    pub class_priors: Vec<f32>,
    /// Default operating point.
    pub operating_point: OperatingPoint,
    /// Seed of the run.
    pub seed: u64,
    /// SHA-256 of the training data (labels and pixels).
    pub data_fingerprint: String,
    /// Whether `classifier.safetensors` is present.
    pub has_classifier: bool,
    /// Class priors of the set the stage-2 classifier trained on (absent
    /// without a classifier, and in bundles written before h2e saved
    /// them): with them any scorer that uses the classifier can score new
    /// data ([`Identifier::check_scorer`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_priors: Option<Vec<f32>>,
    /// The full training configuration.
    pub train: TrainConfig,
}

/// SHA-256 over a set's shape, labels and pixels.
pub fn fingerprint(set: &TensorSet) -> String {
    let mut h = Sha256::new();
    for v in [set.channels, set.height, set.width, set.len(), set.classes.len()] {
        h.update((v as u64).to_le_bytes());
    }
    for c in &set.classes {
        h.update(c.as_bytes());
        h.update([0]);
    }
    for &l in &set.labels {
        h.update((l as u32).to_le_bytes());
    }
    h.update(&set.pixels);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A loaded identifier, bound to one device. `Send + Sync`: share it
/// between threads behind an `Arc`.
#[derive(Debug)]
pub struct Identifier {
    config: IdentifierConfig,
    net: Net,
    head: Head,
    classifier: Option<Net>,
    report: Option<TrainReport>,
    device: Device,
}

fn member_options(method: CompressionMethod) -> SimpleFileOptions {
    SimpleFileOptions::default()
        .compression_method(method)
        .last_modified_time(zip::DateTime::default())
        .unix_permissions(0o644)
}

impl Identifier {
    /// Builds the identifier of a finished training run (its data `train`
    /// gives the fingerprint).
    pub fn from_trained(trained: Trained, train: &TensorSet, device: Device) -> Result<Identifier> {
        let cfg = &trained.config;
        // With the classifier scorer, the classifier's logits plus its
        // prior play the raw logits, with tau = 1 (Scorer::Classifier). The
        // joint scorer needs both networks: the identifier's tau and prior
        // here, the classifier's prior in `classifier_priors`.
        let (tau, log_prior) = match (cfg.scorer, &trained.classifier_log_prior) {
            (Scorer::Identifier | Scorer::Joint, _) => (trained.tau()?, trained.log_prior.clone()),
            (Scorer::Classifier, Some(lp)) => (vec![1.0; lp.len()], lp.clone()),
            (Scorer::Classifier, None) => {
                return Err(Error::Argument("the classifier scorer's run has no stage-2 classifier".into()))
            }
        };
        let config = IdentifierConfig {
            format: FORMAT.into(),
            version: VERSION,
            crate_version: env!("CARGO_PKG_VERSION").into(),
            backbone: cfg.backbone.unwrap_or(BackboneKind::SmallCnn),
            channels: trained.channels,
            input_size: cfg.input_size.unwrap_or(train.height.max(train.width)),
            mean: cfg.mean,
            std: cfg.std,
            classes: train.classes.clone(),
            tau,
            class_priors: log_prior.iter().map(|l| l.exp()).collect(),
            operating_point: cfg.operating_point,
            seed: cfg.seed,
            data_fingerprint: fingerprint(train),
            has_classifier: trained.classifier.is_some(),
            classifier_priors: match &trained.classifier {
                Some(_) => trained.classifier_log_prior.as_ref().map(|lp| lp.iter().map(|l| l.exp()).collect()),
                None => None,
            },
            train: cfg.clone(),
        };
        Ok(Identifier {
            config,
            net: trained.net,
            head: trained.head,
            classifier: trained.classifier,
            report: Some(trained.report),
            device: device.without_autodiff(),
        })
    }

    /// Writes the bundle to `path` atomically (a temporary file renamed
    /// into place: an interrupted save leaves nothing behind).
    pub fn save(&self, path: &Path) -> Result<()> {
        let err = |e: &dyn std::fmt::Display| Error::io("writing", path, std::io::Error::other(e.to_string()));
        let mut zip = ZipWriter::new(AtomicFile::create(path)?);
        let put = |zip: &mut ZipWriter<AtomicFile>, name: &str, bytes: &[u8], method| -> Result<()> {
            zip.start_file(name, member_options(method)).map_err(|e| err(&e))?;
            zip.write_all(bytes).map_err(|e| Error::io("writing", path, e))
        };
        let json = |v: serde_json::Result<Vec<u8>>| v.map_err(|e| err(&e));
        put(&mut zip, "config.json", &json(serde_json::to_vec_pretty(&self.config))?, CompressionMethod::Deflated)?;
        put(&mut zip, "model.safetensors", &weights::to_safetensors(&self.net, None)?, CompressionMethod::Stored)?;
        put(&mut zip, "head.safetensors", &weights::to_safetensors(&self.head, None)?, CompressionMethod::Stored)?;
        if let Some(c) = &self.classifier {
            put(&mut zip, "classifier.safetensors", &weights::to_safetensors(c, None)?, CompressionMethod::Stored)?;
        }
        if let Some(r) = &self.report {
            put(&mut zip, "report.json", &json(serde_json::to_vec_pretty(r))?, CompressionMethod::Deflated)?;
        }
        let file = zip.finish().map_err(|e| err(&e))?;
        file.commit()
    }

    /// Opens an identifier bundle on `device`.
    pub fn open(path: &Path, device: Device) -> Result<Identifier> {
        Self::load(SafeZip::open_file(path)?, device)
    }

    /// Opens an identifier bundle held in memory; `name` is used in errors.
    pub fn from_bytes(name: &str, bytes: Vec<u8>, device: Device) -> Result<Identifier> {
        Self::load(SafeZip::from_bytes(name, bytes)?, device)
    }

    /// Reads only `report.json` of a bundle (no weights, no device).
    pub fn read_report(path: &Path) -> Result<TrainReport> {
        Ok(Self::read_summary(path)?.1)
    }

    /// Reads only `config.json` and `report.json` of a bundle (no weights,
    /// no device): its class names and settings, and what its training
    /// measured.
    pub fn read_summary(path: &Path) -> Result<(IdentifierConfig, TrainReport)> {
        let mut zip = SafeZip::open_file(path)?;
        let config = read_config(&mut zip)?;
        let name = zip.path.display().to_string();
        if !zip.by_name.contains_key("report.json") {
            return Err(Error::invalid(
                name,
                "identifier",
                "it has no report.json (it was not written by `h2e train`)",
            ));
        }
        let bytes = zip.read("report.json", MAX_MEMBER)?;
        let report = serde_json::from_slice(&bytes)
            .map_err(|e| Error::invalid(format!("{name}!report.json"), "report.json", e.to_string()))?;
        Ok((config, report))
    }

    fn load(mut zip: SafeZip, device: Device) -> Result<Identifier> {
        let device = device.without_autodiff();
        let name = zip.path.display().to_string();
        let config = read_config(&mut zip)?;
        let mut net = Net::new(config.backbone, config.channels, config.input_size, config.classes.len(), &device);
        net = weights::from_safetensors(
            net,
            &zip.read("model.safetensors", MAX_MEMBER)?,
            &format!("{name}!model.safetensors"),
        )?;
        let mut head = Head::new(config.backbone.features(), config.classes.len(), &device);
        head = weights::from_safetensors(
            head,
            &zip.read("head.safetensors", MAX_MEMBER)?,
            &format!("{name}!head.safetensors"),
        )?;
        let classifier = if config.has_classifier {
            let c = Net::new(config.backbone, config.channels, config.input_size, config.classes.len(), &device);
            Some(weights::from_safetensors(
                c,
                &zip.read("classifier.safetensors", MAX_MEMBER)?,
                &format!("{name}!classifier.safetensors"),
            )?)
        } else {
            None
        };
        let report = match zip.by_name.contains_key("report.json") {
            true => Some(
                serde_json::from_slice(&zip.read("report.json", MAX_MEMBER)?)
                    .map_err(|e| Error::invalid(format!("{name}!report.json"), "report.json", e.to_string()))?,
            ),
            false => None,
        };
        Ok(Identifier {
            config,
            net: net.valid(),
            head: head.valid(),
            classifier: classifier.map(|c| c.valid()),
            report,
            device,
        })
    }

    /// The bundle's configuration.
    pub fn config(&self) -> &IdentifierConfig {
        &self.config
    }

    /// The training report, when the bundle has one.
    pub fn report(&self) -> Option<&TrainReport> {
        self.report.as_ref()
    }

    /// Class names.
    pub fn classes(&self) -> &[String] {
        &self.config.classes
    }

    /// Channels the model expects.
    pub fn channels(&self) -> usize {
        self.config.channels
    }

    /// Square input size the model expects.
    pub fn input_size(&self) -> usize {
        self.config.input_size
    }

    /// True when a stage-2 classifier is bundled.
    pub fn has_classifier(&self) -> bool {
        self.classifier.is_some()
    }

    fn log_prior(&self) -> Vec<f32> {
        self.config.class_priors.iter().map(|p| p.max(1e-12).ln()).collect()
    }

    fn params(&self) -> PreprocessParams {
        let s = self.config.input_size as u32;
        PreprocessParams { mean: self.config.mean, std: self.config.std, ..PreprocessParams::eval(s, s) }
    }

    /// The scorer the run that saved this bundle used (`train.scorer`):
    /// what [`score_set`](Self::score_set) and `h2e filter` use unless told
    /// otherwise.
    pub fn scorer(&self) -> Scorer {
        self.config.train.scorer
    }

    /// Errors unless this bundle can score new data with `scorer`: the
    /// classifier and joint scorers need a bundled classifier and its class
    /// priors; the identifier and joint scorers need the identifier's
    /// prior, which a bundle saved by a classifier-scorer run does not keep.
    pub fn check_scorer(&self, scorer: Scorer) -> Result<()> {
        if scorer != Scorer::Classifier && self.scorer() == Scorer::Classifier {
            return Err(Error::Argument(format!(
                "the {scorer} scorer needs the identifier's class priors, and this bundle (saved by a \
                 --scorer classifier run) keeps the classifier's only; use --scorer classifier"
            )));
        }
        if scorer != Scorer::Identifier {
            if self.classifier.is_none() {
                return Err(Error::Argument(format!(
                    "the {scorer} scorer needs a stage-2 classifier and this identifier has none; train it with --classifier"
                )));
            }
            if self.classifier_log_prior().is_none() {
                return Err(Error::Argument(format!(
                    "the {scorer} scorer needs the classifier's class priors, and this bundle was saved \
                     before h2e kept them (config.json has no classifier_priors); retrain, or use --scorer identifier"
                )));
            }
        }
        Ok(())
    }

    /// The log prior that turns the classifier's logits into plain ones.
    fn classifier_log_prior(&self) -> Option<Vec<f32>> {
        self.classifier.as_ref()?;
        match self.scorer() {
            Scorer::Classifier => Some(self.log_prior()),
            _ => self.config.classifier_priors.as_ref().map(|p| p.iter().map(|p| p.max(1e-12).ln()).collect()),
        }
    }

    /// The network whose scores [`score_batch`](Self::score_batch) gives:
    /// the classifier when the classifier scorer saved the bundle, else the
    /// identifier (the joint scorer decides over a whole set).
    fn batch_network(&self) -> Network {
        match self.scorer() {
            Scorer::Classifier => Network::Classifier,
            _ => Network::Identifier,
        }
    }

    /// Per-sample scores of a packed batch (any image sizes; resized on the
    /// device). `labels[i]` is the given label of sample `i`, or `None`
    /// when unlabelled (the score is then `1 - max p`). The identifier's
    /// scores, or the classifier's when a classifier-scorer run saved the
    /// bundle; the joint scorer needs the whole set
    /// ([`score_set`](Self::score_set), [`crate::filter::Filter`]).
    pub fn score_batch(&self, batch: &PackedBatch, labels: &[Option<usize>]) -> Result<Vec<SampleScore>> {
        Ok(self.score_batch_with(batch, labels, false)?.0)
    }

    /// [`score_batch`](Self::score_batch) and, with `probabilities`, the
    /// adjusted probability matrix (row-major `[n, classes]`) from the same
    /// forward pass.
    pub fn score_batch_with(
        &self,
        batch: &PackedBatch,
        labels: &[Option<usize>],
        probabilities: bool,
    ) -> Result<(Vec<SampleScore>, Option<Vec<f32>>)> {
        self.score_batch_by(batch, labels, self.batch_network(), probabilities)
    }

    /// [`score_batch_with`](Self::score_batch_with) by `network`.
    fn score_batch_by(
        &self,
        batch: &PackedBatch,
        labels: &[Option<usize>],
        network: Network,
        probabilities: bool,
    ) -> Result<(Vec<SampleScore>, Option<Vec<f32>>)> {
        if labels.len() != batch.len() {
            return Err(Error::Argument(format!("{} labels for a batch of {}", labels.len(), batch.len())));
        }
        let classes = self.config.classes.len();
        if let Some(l) = labels.iter().flatten().find(|&&l| l >= classes) {
            return Err(Error::Argument(format!("label {l} is not below the identifier's {classes} classes")));
        }
        if batch.is_empty() {
            return Ok((Vec::new(), probabilities.then(Vec::new)));
        }
        let (raw, tau, lp) = self.raw_logits(batch, network)?;
        let probs = if probabilities {
            Some(score::adjusted_probabilities(&read_f32(raw.clone(), "logits")?, classes, &tau, &lp))
        } else {
            None
        };
        let l: Vec<i64> = labels.iter().map(|l| l.map_or(-1, |l| l as i64)).collect();
        let l = Tensor::<1, Int>::from_data(TensorData::new(l, [labels.len()]), &self.device);
        Ok((kernels::score(raw, l, &tau, &lp)?.to_samples()?, probs))
    }

    /// Adjusted class probabilities `softmax(z - tau * log pi)` of a packed
    /// batch, row-major `[n, classes]`.
    pub fn probabilities(&self, batch: &PackedBatch) -> Result<Vec<f32>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let (raw, tau, lp) = self.raw_logits(batch, self.batch_network())?;
        Ok(score::adjusted_probabilities(&read_f32(raw, "logits")?, self.config.classes.len(), &tau, &lp))
    }

    /// `network`'s raw logits of a non-empty batch, with the tau and log
    /// prior that adjust them: the head's `W f + b` (`f` averaged over each
    /// image and its mirror when trained with `tta_flip`) with the learned
    /// tau, or the stage-2 classifier's logits plus `log pi` of the set it
    /// trained on, with tau = 1 (its logit-adjusted training balanced them).
    fn raw_logits(&self, batch: &PackedBatch, network: Network) -> Result<(Tensor<2>, Vec<f32>, Vec<f32>)> {
        let tta = self.config.train.tta_flip;
        let c = self.config.classes.len();
        match network {
            Network::Classifier => {
                let (Some(clf), Some(lp)) = (&self.classifier, self.classifier_log_prior()) else {
                    return Err(Error::Argument("this identifier cannot score with its classifier".into()));
                };
                let z = clf.fc.forward(clf.backbone.forward_mirrored(self.input(batch)?, tta));
                let prior = Tensor::<1>::from_data(TensorData::new(lp.clone(), [c]), &self.device);
                Ok((z + prior.unsqueeze::<2>(), vec![1.0; c], lp))
            }
            Network::Identifier => Ok((
                self.head.raw(self.net.backbone.forward_mirrored(self.input(batch)?, tta)),
                self.config.tau.clone(),
                self.log_prior(),
            )),
        }
    }

    /// A batch preprocessed as training did (after checking its channels).
    fn input(&self, batch: &PackedBatch) -> Result<Tensor<4>> {
        if batch.channels() != self.config.channels {
            return Err(Error::Argument(format!(
                "the identifier expects {}-channel images, the batch has {}",
                self.config.channels,
                batch.channels()
            )));
        }
        kernels::preprocess(&self.device, batch, &self.params())
    }

    /// Scores a whole in-memory set (already at the identifier's size) with
    /// the bundle's scorer and applies `op` (the bundle's default when `None`).
    pub fn score_set(&self, set: &TensorSet, op: Option<&OperatingPoint>) -> Result<Scores> {
        self.score_set_by(set, self.scorer(), op)
    }

    /// [`score_set`](Self::score_set) with `scorer` ([`check_scorer`](Self::check_scorer)).
    pub fn score_set_by(&self, set: &TensorSet, scorer: Scorer, op: Option<&OperatingPoint>) -> Result<Scores> {
        let op = *op.unwrap_or(&self.config.operating_point);
        let mut scoring = SetScoring::new(self, scorer, op)?;
        let all: Vec<usize> = (0..set.len()).collect();
        for chunk in all.chunks(512) {
            let batch = PackedBatch::from_set(set, chunk)?;
            let labels: Vec<Option<usize>> = chunk.iter().map(|&i| Some(set.labels[i])).collect();
            scoring.push(&batch, &labels)?;
        }
        Ok(scoring.finish()?.0)
    }

    /// Class probabilities of the stage-2 classifier for a packed batch,
    /// row-major `[n, classes]`: the softmax of its raw logits (trained with
    /// a logit-adjusted loss, so they are already balanced across classes).
    pub fn classifier_probabilities(&self, batch: &PackedBatch) -> Result<Vec<f32>> {
        let clf = self
            .classifier
            .as_ref()
            .ok_or_else(|| Error::Argument("this identifier has no classifier; train it with --classifier".into()))?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        read_f32(burn::tensor::activation::softmax(clf.forward(self.input(batch)?), 1), "classifier probabilities")
    }

    /// Predictions of the stage-2 classifier for a packed batch.
    pub fn classify_batch(&self, batch: &PackedBatch) -> Result<Vec<usize>> {
        let p = self.classifier_probabilities(batch)?;
        Ok(p.chunks(self.config.classes.len()).map(crate::baselines::argmax).collect())
    }

    /// The learned tau.
    pub fn tau(&self) -> &[f32] {
        &self.config.tau
    }
}

/// The two networks a bundle can score with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Network {
    /// The last round's identifier head on its backbone.
    Identifier,
    /// The stage-2 classifier.
    Classifier,
}

/// One network's per-sample scores over the labelled samples of a set,
/// and their adjusted probabilities when kept.
#[derive(Debug, Default)]
struct Part {
    per: Vec<SampleScore>,
    probs: Vec<f32>,
}

/// A set scored under one [`Scorer`], a batch at a time: the per-sample
/// scores of the networks the scorer needs are kept (and their adjusted
/// probabilities when the rule or the joint scorer needs them), and the
/// flags are decided over every labelled sample at the end, since the
/// rules, caps and the joint scorer's spared classes are set-wide.
#[derive(Debug)]
pub(crate) struct SetScoring<'a> {
    id: &'a Identifier,
    scorer: Scorer,
    op: OperatingPoint,
    identifier: Part,
    classifier: Part,
    labels: Vec<usize>,
}

impl<'a> SetScoring<'a> {
    /// Errors when `id` cannot score with `scorer`.
    pub(crate) fn new(id: &'a Identifier, scorer: Scorer, op: OperatingPoint) -> Result<SetScoring<'a>> {
        id.check_scorer(scorer)?;
        Ok(SetScoring { id, scorer, op, identifier: Part::default(), classifier: Part::default(), labels: Vec::new() })
    }

    /// Scores a batch and keeps its labelled samples' scores. Returns every
    /// sample's scores as a report shows them: the classifier's when the
    /// scorer uses it, else the identifier's.
    pub(crate) fn push(&mut self, batch: &PackedBatch, labels: &[Option<usize>]) -> Result<Vec<SampleScore>> {
        let rule_probs = self.op.rule.needs_probabilities();
        let mut shown = None;
        for (network, used, probs) in [
            (Network::Identifier, self.scorer != Scorer::Classifier, rule_probs || self.scorer == Scorer::Joint),
            (Network::Classifier, self.scorer != Scorer::Identifier, rule_probs),
        ] {
            if !used {
                continue;
            }
            let (per, p) = self.id.score_batch_by(batch, labels, network, probs)?;
            let part = match network {
                Network::Identifier => &mut self.identifier,
                Network::Classifier => &mut self.classifier,
            };
            let classes = self.id.classes().len();
            for (j, l) in labels.iter().enumerate() {
                if l.is_some() {
                    part.per.push(per[j]);
                    if let Some(p) = &p {
                        part.probs.extend_from_slice(&p[j * classes..(j + 1) * classes]);
                    }
                }
            }
            shown = Some(per);
        }
        self.labels.extend(labels.iter().flatten());
        Ok(shown.unwrap_or_default())
    }

    /// The flags over every labelled sample pushed (in push order), and
    /// each one's scores as a report shows them (under the joint scorer,
    /// the identifier's in the classes it spares, the classifier's
    /// elsewhere).
    pub(crate) fn finish(self) -> Result<(Scores, Vec<SampleScore>)> {
        let classes = self.id.classes().len();
        let op = &self.op;
        fn probs<'p>(op: &OperatingPoint, p: &'p Part) -> Option<&'p [f32]> {
            op.rule.needs_probabilities().then_some(p.probs.as_slice())
        }
        match self.scorer {
            Scorer::Identifier => {
                let s = score::apply(&self.identifier.per, probs(op, &self.identifier), &self.labels, classes, op)?;
                Ok((s, self.identifier.per))
            }
            Scorer::Classifier => {
                let s = score::apply(&self.classifier.per, probs(op, &self.classifier), &self.labels, classes, op)?;
                Ok((s, self.classifier.per))
            }
            Scorer::Joint => {
                let (s, spared) = score::joint_scores(
                    &self.identifier.per,
                    &self.identifier.probs,
                    &self.classifier.per,
                    probs(op, &self.classifier),
                    &self.labels,
                    classes,
                    op,
                )?;
                let shown = (self.identifier.per.into_iter().zip(self.classifier.per).zip(&self.labels))
                    .map(|((i, c), &l)| if spared[l] { i } else { c })
                    .collect();
                Ok((s, shown))
            }
        }
    }
}

fn read_config(zip: &mut SafeZip) -> Result<IdentifierConfig> {
    let name = zip.path.display().to_string();
    if !zip.by_name.contains_key("config.json") {
        return Err(Error::invalid(name, "identifier", "config.json is missing: this is not an h2e identifier bundle"));
    }
    let bytes = zip.read("config.json", MAX_MEMBER)?;
    let member = format!("{name}!config.json");
    let header: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| Error::invalid(&member, "config.json", e.to_string()))?;
    match header.get("format").and_then(|f| f.as_str()) {
        Some(FORMAT) => {}
        Some(other) => {
            return Err(Error::invalid(
                &member,
                "config.json",
                format!("format is {other:?}, expected {FORMAT:?} (a dataset bundle?)"),
            ))
        }
        None => return Err(Error::invalid(&member, "config.json", "no \"format\" field: not an h2e identifier")),
    }
    match header.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v > VERSION as u64 => {
            return Err(Error::NewerVersion { path: member, what: "identifier", found: v as u32, supported: VERSION })
        }
        Some(_) => {}
        None => return Err(Error::invalid(&member, "config.json", "no integer \"version\" field")),
    }
    let config: IdentifierConfig =
        serde_json::from_value(header).map_err(|e| Error::invalid(&member, "config.json", e.to_string()))?;
    let c = config.classes.len();
    if c == 0
        || config.tau.len() != c
        || config.class_priors.len() != c
        || config.classifier_priors.as_ref().is_some_and(|p| p.len() != c)
    {
        return Err(Error::invalid(
            &member,
            "config.json",
            "classes, tau, class_priors (and classifier_priors) must be non-empty and of equal length",
        ));
    }
    if !(1..=3).contains(&config.channels) || config.channels == 2 || config.input_size == 0 {
        return Err(Error::invalid(&member, "config.json", "channels must be 1 or 3 and input_size positive"));
    }
    config.operating_point.validate().map_err(|e| Error::invalid(&member, "config.json", e.to_string()))?;
    if config.train.scorer == Scorer::Classifier && !config.has_classifier {
        return Err(Error::invalid(
            &member,
            "config.json",
            "the stage-2 classifier scores (train.scorer) but the bundle has none (has_classifier is false)",
        ));
    }
    Ok(config)
}
