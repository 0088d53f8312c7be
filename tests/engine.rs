//! The training engine end to end on tiny synthetic data: H2E rounds and
//! the baselines on the CPU (`flex`), the same pipeline on wgpu (software
//! Vulkan in CI) running our WGSL kernels, identifier bundles round-tripping,
//! the closed-form IRM penalty against a numerical derivative, and bad
//! identifier bundles.

mod common;

use burn::tensor::{Device, DeviceType, Int, Tensor, TensorData};
use h2e::data::TensorSet;
use h2e::identifier::Identifier;
use h2e::progress::Silent;
use h2e::rng::Rng;
use h2e::train::{cross_entropy, irm_penalty, Engine, Method, TrainConfig, Trained};

/// Three classes of 8x8 grayscale images (a bright band at the top, middle
/// or bottom, plus pixel noise), long-tailed 48 / 24 / 12, with 1 in 6
/// labels of every class replaced by an image of another class.
fn synthetic(seed: u64) -> TensorSet {
    let mut rng = Rng::new(seed);
    let classes: Vec<String> = ["top", "middle", "bottom"].iter().map(|s| s.to_string()).collect();
    let mut set = TensorSet::empty(classes, 1, 8, 8);
    for (label, &n) in [48usize, 24, 12].iter().enumerate() {
        for i in 0..n {
            let truth = if i % 6 == 5 { (label + 1 + rng.below(2)) % 3 } else { label };
            let band = [0..3, 3..5, 5..8][truth].clone();
            let pixels: Vec<u8> = (0..64)
                .map(|p| {
                    let base = if band.contains(&(p / 8)) { 200 } else { 30 };
                    (base + rng.below(40)) as u8
                })
                .collect();
            let img = h2e::data::Image { width: 8, height: 8, channels: 1, pixels };
            set.push(&img, label, Some(truth), format!("{label}/{i}.png"));
        }
    }
    set
}

fn tiny(method: Method) -> TrainConfig {
    TrainConfig {
        method,
        epochs: 6,
        batch_size: 16,
        lr: 0.05,
        pad: 1,
        identifier_epochs: 2,
        rounds: 2,
        folds: 2,
        seed: 7,
        // The identifier alone unless a test says otherwise: the tests of
        // the classifier and joint scorers name theirs.
        scorer: h2e::train::Scorer::Identifier,
        ..TrainConfig::default()
    }
}

fn run(device: &Device, cfg: TrainConfig, set: &TensorSet) -> Trained {
    let engine = Engine::new(device.clone(), cfg, set, &Silent).unwrap();
    engine.run(set, None, "test").unwrap()
}

#[test]
fn h2e_rounds_on_the_cpu_find_noise_and_round_trip_through_a_bundle() {
    let set = synthetic(1);
    let device = Device::flex();
    let trained = run(&device, tiny(Method::H2e), &set);
    let report = &trained.report;
    assert_eq!(report.rounds.len(), 2);
    assert_eq!(trained.scores.flagged.len(), set.len());
    let tau = trained.tau().unwrap();
    assert_eq!(tau.len(), 3);
    assert!(tau.iter().all(|t| (0.0..=h2e::train::TAU_MAX).contains(t)), "tau stays in [0, TAU_MAX]: {tau:?}");
    // Round 2 trains on the samples round 1 kept.
    assert_eq!(report.rounds[1].train_samples, set.len() - report.rounds[0].flagged);
    // No class is emptied (min_per_class = 1).
    for (c, &n) in set.class_counts().iter().enumerate() {
        assert!(report.rounds[1].flagged_per_class[c] < n);
    }
    let m = report.rounds.last().unwrap().metrics.as_ref().expect("ground truth is known");
    assert!(m.auroc.unwrap() > 0.7, "the identifier should rank noise above clean samples: {m:?}");
    // Weights: 0.01 for flags, [0.5, 1] otherwise.
    for (f, w) in trained.scores.flagged.iter().zip(&trained.scores.weight) {
        assert!(if *f { *w == 0.01 } else { (0.5..=1.0).contains(w) });
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("id.zip");
    let flags = trained.scores.flagged.clone();
    let noise = trained.scores.noise_score.clone();
    let id = Identifier::from_trained(trained, &set, device.clone()).unwrap();
    id.save(&path).unwrap();
    let back = Identifier::open(&path, device).unwrap();
    assert_eq!(back.config(), id.config());
    let scores = back.score_set(&set, None).unwrap();
    assert_eq!(scores.flagged, flags, "a loaded identifier reproduces the training-time flags");
    for (a, b) in scores.noise_score.iter().zip(&noise) {
        assert!((a - b).abs() < 1e-4);
    }
    let r = Identifier::read_report(&path).unwrap();
    assert_eq!(r.flagged, (0..set.len()).filter(|&i| flags[i]).collect::<Vec<_>>());
    let (config, report) = Identifier::read_summary(&path).unwrap();
    assert_eq!((&config, &report), (id.config(), &r));
    // Nothing but the bundle was written.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn a_score_floor_applies_to_the_final_flags_only() {
    // Floor 1: no flag survives it outside a flipped pair. Round 1 still
    // drops what the floor-free rule flags; the final round keeps fewer.
    let set = synthetic(1);
    let cfg = tiny(Method::H2e);
    let op = h2e::score::OperatingPoint { min_score: Some(1.0), ..cfg.operating_point };
    let trained = run(&Device::flex(), TrainConfig { operating_point: op, ..cfg }, &set);
    let rounds = &trained.report.rounds;
    let row = |r: usize, name: &str| {
        let found = rounds[r].operating_points.iter().find(|(n, _)| n == name);
        found.unwrap_or_else(|| panic!("round {r} lacks {name}")).1.flagged
    };
    assert!(row(0, "agreement-noise-rate") > 0);
    assert_eq!(rounds[0].flagged, row(0, "agreement-noise-rate"));
    assert_eq!(rounds[1].train_samples, set.len() - rounds[0].flagged);
    assert!(rounds[1].flagged < row(1, "agreement-noise-rate"), "{} flags", rounds[1].flagged);
    assert_eq!(trained.scores.flagged.iter().filter(|&&f| f).count(), rounds[1].flagged);
    assert_eq!(h2e::train::round_operating_point(&op, 1, 2, None).min_score, None);
    assert_eq!(h2e::train::round_operating_point(&op, 1, 2, Some(0.8)).min_score, Some(0.8));
    assert_eq!(h2e::train::round_operating_point(&op, 2, 2, Some(0.8)), op);
    // Every round reports both floor exemptions; `any-flip` spares a
    // superset of `majority-flip`'s classes, so it keeps at least as many
    // flags, and never more than the floor-free rule.
    assert_eq!(rounds.len(), 2);
    for (r, round) in rounds.iter().enumerate() {
        for t in h2e::score::SCORE_FLOORS {
            let majority = row(r, &format!("agreement-noise-rate+min-score={t}"));
            let any = row(r, &format!("agreement-noise-rate+min-score={t}+any-flip"));
            assert!(majority <= any && any <= row(r, "agreement-noise-rate"), "round {r} floor {t}");
        }
        // And what the cap saw in every class.
        let est = &round.class_estimates;
        assert_eq!(est.len(), trained.report.class_counts.len());
        assert_eq!(est.iter().map(|e| e.samples).sum::<usize>(), set.len());
        assert!(est.iter().all(|e| (0.0..=1.0).contains(&e.noise_rate) && (0.0..=1.0).contains(&e.flip_share)));
    }
}

#[test]
fn a_round_floor_keeps_more_samples_for_the_next_round() {
    // `round_min_score` 1: round 1 removes only what no floor could drop
    // (flipped pairs), fewer than the floor-free rule flags, and round 2
    // trains on everything else; the final flags keep the configured
    // (floor-free) operating point.
    let set = synthetic(1);
    let cfg = tiny(Method::H2e);
    let op = h2e::score::OperatingPoint { min_score: None, ..cfg.operating_point };
    let trained = run(&Device::flex(), TrainConfig { operating_point: op, round_min_score: Some(1.0), ..cfg }, &set);
    let rounds = &trained.report.rounds;
    let free =
        |r: usize| rounds[r].operating_points.iter().find(|(n, _)| n == "agreement-noise-rate").unwrap().1.flagged;
    assert!(free(0) > 0);
    assert!(rounds[0].flagged < free(0), "{} of {} flags", rounds[0].flagged, free(0));
    assert_eq!(rounds[1].train_samples, set.len() - rounds[0].flagged);
    assert_eq!(rounds[1].flagged, free(1));
    let bad = TrainConfig { round_min_score: Some(1.5), ..tiny(Method::H2e) };
    assert!(bad.validate().unwrap_err().to_string().contains("round-min-score"));
}

/// `set` with every image mirrored left to right (HWC bytes).
fn mirrored(set: &TensorSet) -> TensorSet {
    let mut out = set.clone();
    let (w, c) = (set.width, set.channels);
    for (i, img) in out.pixels.chunks_mut(set.image_len()).enumerate() {
        let src = set.image(i);
        for (y, row) in img.chunks_mut(w * c).enumerate() {
            for x in 0..w {
                let from = (y * w + (w - 1 - x)) * c;
                row[x * c..(x + 1) * c].copy_from_slice(&src[from..from + c]);
            }
        }
    }
    out
}

#[test]
fn a_mirror_scoring_identifier_scores_an_image_and_its_mirror_alike() {
    let set = synthetic(5);
    let mirror = mirrored(&set);
    assert_ne!(mirror.pixels, set.pixels, "the pixel noise makes the mirror a different image");
    let scores = |tta: bool| {
        let cfg = TrainConfig { tta_flip: tta, rounds: 1, ..tiny(Method::H2e) };
        let trained = run(&Device::flex(), cfg, &set);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.zip");
        Identifier::from_trained(trained, &set, Device::flex()).unwrap().save(&path).unwrap();
        let id = Identifier::open(&path, Device::flex()).unwrap();
        assert_eq!(id.config().train.tta_flip, tta, "the bundle keeps the setting");
        (id.score_set(&set, None).unwrap(), id.score_set(&mirror, None).unwrap())
    };
    let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    // Without mirroring, an image and its mirror are two inputs.
    let (plain, plain_mirror) = scores(false);
    assert!(max_diff(&plain.noise_score, &plain_mirror.noise_score) > 1e-4);
    // With it, both read the mean of the same two forward passes.
    let (tta, tta_mirror) = scores(true);
    assert!(max_diff(&tta.noise_score, &tta_mirror.noise_score) < 1e-4);
    assert_eq!(tta.flagged, tta_mirror.flagged);
    assert_eq!(tta.pred, tta_mirror.pred);
}

#[test]
fn same_seed_same_flags_on_the_cpu() {
    let set = synthetic(2);
    let cfg = TrainConfig { rounds: 1, epochs: 2, ..tiny(Method::H2e) };
    let a = run(&Device::flex(), cfg.clone(), &set);
    let b = run(&Device::flex(), cfg, &set);
    assert_eq!(a.scores.flagged, b.scores.flagged);
    assert_eq!(a.scores.noise_score, b.scores.noise_score);
}

#[test]
fn baselines_run_on_the_same_engine() {
    let set = synthetic(3);
    for method in [Method::Ce, Method::SmallLoss, Method::ConfidentLearning] {
        let t = run(&Device::flex(), TrainConfig { epochs: 3, ..tiny(method) }, &set);
        assert_eq!(t.report.method, method);
        assert_eq!(t.report.rounds.len(), 1);
        assert_eq!(t.scores.flagged.len(), set.len());
        assert!(t.tau().unwrap().iter().all(|&x| x == 0.0), "{method:?} identifiers use the plain argmax");
        assert!(t.report.rounds[0].metrics.is_some());
    }
}

#[test]
fn stage_two_classifier_reports_test_accuracy() {
    let set = synthetic(4);
    let test = synthetic(5);
    let cfg = TrainConfig { rounds: 1, classifier: true, classifier_epochs: Some(2), ..tiny(Method::H2e) };
    let engine = Engine::new(Device::flex(), cfg, &set, &Silent).unwrap();
    let t = engine.run(&set, Some(&test), "test").unwrap();
    let acc = t.report.classifier.as_ref().expect("a classifier was trained");
    assert_eq!(acc.samples, test.len());
    assert!(acc.balanced_accuracy > 0.5, "{acc:?}");
    assert!(t.classifier.is_some());
    // Training the classifier leaves the identifier as it scored: the saved
    // bundle reproduces the recorded flags and scores. (An earlier build
    // fine-tuned a clone of the final backbone; clones share batch norm's
    // running statistics, so the saved identifier no longer matched.)
    let (flags, want) = (t.scores.flagged.clone(), t.scores.noise_score.clone());
    let id = Identifier::from_trained(t, &set, Device::flex()).unwrap();
    let got = id.score_set(&set, None).unwrap();
    assert_eq!(got.flagged, flags);
    for (a, b) in got.noise_score.iter().zip(&want) {
        assert!((a - b).abs() < 1e-5, "saved identifier scores {a}, training scored {b}");
    }
}

#[test]
fn stage_two_starts_from_the_plain_network_unless_told_to_start_from_scratch() {
    use h2e::train::ClassifierInit;
    let set = synthetic(4);
    let test = synthetic(5);
    // A learning rate too small to move the weights: stage 2 ends where it starts.
    let go = |init| {
        let cfg = TrainConfig {
            rounds: 1,
            classifier: true,
            classifier_epochs: Some(1),
            classifier_lr: Some(1e-7),
            classifier_init: init,
            ..tiny(Method::H2e)
        };
        let engine = Engine::new(Device::flex(), cfg, &set, &Silent).unwrap();
        engine.run(&set, Some(&test), "test").unwrap()
    };
    let warm = go(ClassifierInit::Plain);
    let cold = go(ClassifierInit::Scratch);
    // The detector and the plain network are the same in both runs: starting
    // stage 2 from the plain network leaves that network as it was.
    assert_eq!(warm.scores.flagged, cold.scores.flagged);
    let plain = warm.report.reference.as_ref().expect("a plain network").ce.clone();
    assert_eq!(plain, cold.report.reference.as_ref().unwrap().ce);
    let (w, c) = (warm.report.classifier.unwrap(), cold.report.classifier.unwrap());
    // From the plain network, stage 2 predicts what that network predicts
    // (its batch norm statistics move a little over the epoch); from
    // scratch, what fresh weights predict.
    assert!(plain.balanced_accuracy > 0.5, "{plain:?}");
    assert!((w.balanced_accuracy - plain.balanced_accuracy).abs() < 0.05, "{w:?} against {plain:?}");
    assert!(c.balanced_accuracy < plain.balanced_accuracy - 0.2, "{c:?} against {plain:?}");
}

/// Writes to `dest` a copy of the bundle at `src` without the member
/// `drop` and with its `config.json` changed by `edit` (a hand-edited bundle).
fn edited_bundle(
    src: &std::path::Path,
    dest: &std::path::Path,
    drop: Option<&str>,
    edit: impl FnOnce(&mut serde_json::Value),
) {
    let mut members = common::zip_members(src);
    members.retain(|(name, _)| Some(name.as_str()) != drop);
    let config = members.iter_mut().find(|(name, _)| name == "config.json").expect("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&config.1).unwrap();
    edit(&mut c);
    config.1 = serde_json::to_vec(&c).unwrap();
    let entries: Vec<(&str, &[u8])> = members.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
    std::fs::write(dest, common::raw_zip(&entries)).unwrap();
}

/// A one-round h2e run on `synthetic(4)` (test split `synthetic(5)`, round
/// logits kept) whose final flags `scorer` decides, and that set; checks
/// that the report holds the identifier's round, then the classifier's.
fn scored_by(scorer: h2e::train::Scorer) -> (TensorSet, Trained) {
    let set = synthetic(4);
    let test = synthetic(5);
    let cfg = TrainConfig { rounds: 1, classifier_epochs: Some(2), scorer, ..tiny(Method::H2e) };
    let engine = Engine::new(Device::flex(), cfg, &set, &Silent).unwrap().with_round_logits();
    let t = engine.run(&set, Some(&test), "test").unwrap();
    let layout: Vec<(usize, bool)> = t.report.rounds.iter().map(|r| (r.round, r.by_classifier)).collect();
    assert_eq!(layout, vec![(1, false), (2, true)]);
    (set, t)
}

#[test]
fn the_classifier_scorer_adds_a_round_and_its_bundle_flags_what_training_flagged() {
    use h2e::train::Scorer;
    // The identifier's round, then the classifier's, which decides the flags.
    let (set, t) = scored_by(Scorer::Classifier);
    let rounds = &t.report.rounds;
    assert_eq!(rounds[1].flagged, t.scores.flagged.iter().filter(|&&f| f).count());
    assert!(rounds[1].tau.iter().all(|&v| v == 1.0));
    assert!(rounds[1].metrics.as_ref().expect("ground truth").f1 > 0.5, "{:?}", rounds[1].metrics);
    // No class is spared: the classifier alone decides everywhere.
    assert_eq!(rounds[1].spared_classes, None);
    // Stage 2 is trained without --classifier, tested and shipped.
    assert!(t.classifier.is_some() && t.report.classifier.is_some());
    // Its round is saved like an identifier's: the classifier's logits plus
    // the log prior, with tau = 1, rescore to the same flags.
    assert_eq!(t.round_logits.len(), 2);
    let r = &t.round_logits[1];
    let op = &t.config.operating_point;
    let again = h2e::score::score_logits_over_rounds(&r.logits, 3, &set.labels, &r.tau, &r.log_prior, op, &[]).unwrap();
    // The run's flags are the classifier's, plus the identifier's flags that
    // stage 2 trained on anyway (none here: no class lost half of its
    // samples to the identifier).
    assert_eq!(again.flagged, t.scores.flagged);
    // Its noise score is 1 - the classifier's balanced p(label).
    let p = &t.network_probs.iter().find(|(k, _)| k == "classifier").expect("classifier probabilities").1;
    for (i, &l) in set.labels.iter().enumerate() {
        assert!((t.scores.noise_score[i] - (1.0 - p[i * 3 + l])).abs() < 1e-4, "sample {i}");
    }
    // The bundle scores new data with the classifier: it flags what training flagged.
    let (flags, want) = (t.scores.flagged.clone(), t.scores.noise_score.clone());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("id.zip");
    Identifier::from_trained(t, &set, Device::flex()).unwrap().save(&path).unwrap();
    let id = Identifier::open(&path, Device::flex()).unwrap();
    assert_eq!(id.config().train.scorer, Scorer::Classifier);
    assert!(id.tau().iter().all(|&v| v == 1.0));
    let got = id.score_set(&set, None).unwrap();
    assert_eq!(got.flagged, flags);
    for (a, b) in got.noise_score.iter().zip(&want) {
        assert!((a - b).abs() < 1e-4, "saved identifier scores {a}, training scored {b}");
    }
    // A hand-edited bundle that claims the classifier scores but has none.
    let bad = dir.path().join("no-classifier.zip");
    edited_bundle(&path, &bad, Some("classifier.safetensors"), |c| c["has_classifier"] = serde_json::json!(false));
    let e = Identifier::open(&bad, Device::flex()).unwrap_err().to_string();
    assert!(e.contains("no-classifier.zip!config.json") && e.contains("has none"), "{e}");
    // It keeps the classifier's prior only, so it cannot score with the identifier.
    for scorer in [Scorer::Identifier, Scorer::Joint] {
        let e = id.score_set_by(&set, scorer, None).unwrap_err().to_string();
        assert!(e.contains("--scorer classifier"), "{e}");
    }
}

#[test]
fn the_classifier_scorer_cannot_clear_a_flag_that_stage_two_trained_on() {
    use h2e::train::Scorer;
    let set = synthetic(4);
    // classifier_min_keep = 1: stage 2 trains on every sample, so each of
    // the identifier's flags is in its training set and must stay flagged.
    let go = |scorer| {
        let cfg = TrainConfig {
            rounds: 1,
            classifier_epochs: Some(2),
            classifier_min_keep: 1.0,
            scorer,
            ..tiny(Method::H2e)
        };
        Engine::new(Device::flex(), cfg, &set, &Silent).unwrap().run(&set, None, "test").unwrap()
    };
    let by_identifier = go(Scorer::Identifier);
    let by_classifier = go(Scorer::Classifier);
    assert!(by_identifier.scores.flagged.iter().any(|&f| f));
    for (i, &f) in by_identifier.scores.flagged.iter().enumerate() {
        if f {
            assert!(by_classifier.scores.flagged[i], "sample {i} lost its flag");
            assert_eq!(by_classifier.scores.weight[i], h2e::score::NOISE_WEIGHT);
            assert!(by_classifier.scores.noise_score[i] >= by_identifier.scores.noise_score[i] - 1e-6);
        }
    }
}

#[test]
fn the_joint_scorer_lets_the_classifier_only_clear_flags_in_flipped_classes() {
    use h2e::score::{classifier_scores, floor_free_classes, per_samples, score_logits, score_logits_over_rounds};
    use h2e::train::{classifier_set, Scorer};
    let (set, t) = scored_by(Scorer::Joint);
    let rounds = &t.report.rounds;
    // Rebuild the decision from the saved logits: the identifier's flags,
    // the classes its floor spares, the classifier's own flags and what
    // stage 2 trained on.
    let op = &t.config.operating_point.clone();
    let (idl, clf) = (&t.round_logits[0], &t.round_logits[1]);
    let id = score_logits(&idl.logits, 3, &set.labels, &idl.tau, &idl.log_prior, op).unwrap();
    let spared = floor_free_classes(&rounds[0].class_estimates, op.floor_exempt);
    // With three classes a class's flags point at one of two others, so
    // the floor spares classes here (the unit test of classifier_scores
    // covers classes it does not spare).
    assert!(spared.iter().any(|&s| s), "{spared:?}");
    // The report names them (`train` and `eval` print them).
    let named: Vec<usize> = (0..3).filter(|&k| spared[k]).collect();
    assert_eq!(rounds[1].spared_classes.as_ref(), Some(&named));
    assert_eq!(rounds[0].spared_classes, None);
    let per = per_samples(&clf.logits, 3, &set.labels, &clf.tau, &clf.log_prior);
    let by_clf = score_logits_over_rounds(&clf.logits, 3, &set.labels, &clf.tau, &clf.log_prior, op, &[]).unwrap();
    let (kept, _) = classifier_set(&id, &set.labels, 3, t.config.classifier_min_keep);
    let mut trained_on = vec![false; set.len()];
    kept.iter().for_each(|&i| trained_on[i] = true);
    let want = classifier_scores(&id, &per, &by_clf.flagged, &trained_on, &spared, &set.labels, 3, op).unwrap();
    assert_eq!(t.scores.flagged, want.flagged);
    assert_eq!(t.scores.noise_score, want.noise_score);
    // In a spared class every flag is also the identifier's, at its score.
    for (i, &l) in set.labels.iter().enumerate() {
        if spared[l] {
            assert!(!t.scores.flagged[i] || id.flagged[i], "sample {i} gained a flag in spared class {l}");
            assert_eq!(t.scores.noise_score[i], id.noise_score[i]);
        }
    }
    // The bundle decides jointly over a whole set it did not train on: the
    // classes it spares estimated on that set (on the training set, the
    // identifier round's), no sample trained on, so no rescued flag.
    let none = vec![false; set.len()];
    let on_new = classifier_scores(&id, &per, &by_clf.flagged, &none, &spared, &set.labels, 3, op).unwrap();
    let tau = idl.tau.clone();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("id.zip");
    Identifier::from_trained(t, &set, Device::flex()).unwrap().save(&path).unwrap();
    let saved = Identifier::open(&path, Device::flex()).unwrap();
    assert_eq!(saved.scorer(), Scorer::Joint);
    assert!(saved.config().has_classifier && saved.config().classifier_priors.is_some());
    assert_eq!(saved.tau(), tau.as_slice());
    let joint = saved.score_set(&set, None).unwrap();
    assert_eq!(joint.flagged, on_new.flagged);
    for (i, (a, b)) in joint.noise_score.iter().zip(&on_new.noise_score).enumerate() {
        assert!((a - b).abs() < 1e-4, "sample {i}: saved {a}, from the run's logits {b}");
    }
    // Either network alone, on request.
    assert_eq!(saved.score_set_by(&set, Scorer::Identifier, None).unwrap().flagged, id.flagged);
    assert_eq!(saved.score_set_by(&set, Scorer::Classifier, None).unwrap().flagged, by_clf.flagged);
    // `filter`'s streaming path decides as score_set does, and its rows show
    // the identifier's prediction and score in spared classes, the
    // classifier's elsewhere.
    let mut filter = h2e::filter::Filter::new(&saved, *op, 5).unwrap();
    for i in 0..set.len() {
        let image = h2e::data::Image {
            width: set.width as u32,
            height: set.height as u32,
            channels: set.channels as u8,
            pixels: set.image(i).to_vec(),
        };
        filter.push(format!("{i}.png"), Some(set.labels[i]), Ok(image)).unwrap();
    }
    let rows = filter.finish().unwrap();
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.is_label_issue, joint.flagged[i], "sample {i}");
        let (want, by) = match spared[set.labels[i]] {
            true => (id.noise_score[i], "identifier"),
            false => (by_clf.noise_score[i], "classifier"),
        };
        assert!((r.noise_score.unwrap() - want).abs() < 1e-4, "sample {i}: the {by}'s score {want}, row {r:?}");
    }
    // A joint bundle saved before classifier_priors were kept can still
    // score with the identifier, and says why it cannot do more.
    let old = dir.path().join("old.zip");
    edited_bundle(&path, &old, None, |c| {
        c.as_object_mut().unwrap().remove("classifier_priors");
    });
    let old = Identifier::open(&old, Device::flex()).unwrap();
    let e = old.score_set(&set, None).unwrap_err().to_string();
    assert!(e.contains("classifier_priors") && e.contains("--scorer identifier"), "{e}");
    assert_eq!(old.score_set_by(&set, Scorer::Identifier, None).unwrap().flagged, id.flagged);
}

#[test]
fn the_classifier_scorer_is_h2es_alone() {
    use h2e::train::Scorer;
    // A baseline run ignores it (and its identifier scores with its network).
    let set = synthetic(6);
    let cfg = TrainConfig { epochs: 2, scorer: Scorer::Classifier, ..tiny(Method::Ce) };
    let t = run(&Device::flex(), cfg, &set);
    assert_eq!(t.config.scorer, Scorer::Identifier);
    assert!(t.classifier.is_none() && t.report.rounds.iter().all(|r| !r.by_classifier));
    // Configurations saved before the setting (or before joint became the
    // default) read back as the identifier, not as today's default; the
    // default is saved by name, the identifier left out.
    let old = serde_json::json!({"epochs": 3});
    let c: TrainConfig = serde_json::from_value(old).unwrap();
    assert_eq!(c.scorer, Scorer::Identifier);
    assert_eq!(TrainConfig::default().scorer, Scorer::Joint);
    let saved = serde_json::to_value(TrainConfig::default()).unwrap();
    assert_eq!(saved["scorer"], "joint");
    assert_eq!(serde_json::from_value::<TrainConfig>(saved).unwrap().scorer, Scorer::Joint);
    let identifier = TrainConfig { scorer: Scorer::Identifier, ..TrainConfig::default() };
    assert!(!serde_json::to_string(&identifier).unwrap().contains("scorer"));
    assert!("classifier".parse::<Scorer>().unwrap() == Scorer::Classifier && "head".parse::<Scorer>().is_err());
    assert_eq!("joint".parse::<Scorer>().unwrap(), Scorer::Joint);
    assert_eq!(Scorer::Joint.to_string(), "joint");
}

fn wgpu() -> Option<Device> {
    match std::panic::catch_unwind(|| Device::enumerate(DeviceType::Wgpu).into_iter().next()) {
        Ok(Some(d)) => Some(d),
        _ => {
            eprintln!("no wgpu adapter on this machine (install Mesa's lavapipe for software Vulkan); skipping");
            None
        }
    }
}

#[test]
fn the_pipeline_runs_on_wgpu_through_our_kernels() {
    let Some(device) = wgpu() else { return };
    let set = synthetic(6);
    let before = h2e::kernels::wgsl_launches();
    let cfg = TrainConfig { rounds: 1, epochs: 1, identifier_epochs: 1, batch_size: 32, ..tiny(Method::H2e) };
    let trained = run(&device, cfg, &set);
    let launched = h2e::kernels::wgsl_launches() - before;
    // Every training batch, every stage-B environment and the scoring pass ran our WGSL.
    assert!(launched >= 10, "only {launched} WGSL launches");
    assert_eq!(trained.scores.flagged.len(), set.len());
    let flags = trained.scores.flagged.clone();
    let id = Identifier::from_trained(trained, &set, device.clone()).unwrap();
    let scores = id.score_set(&set, None).unwrap();
    assert_eq!(scores.flagged, flags);
}

/// `CE(s * z)` in f64 for one per-class scale vector `s`.
fn ce_scaled(z: &[f64], y: &[usize], c: usize, s: &[f64]) -> f64 {
    let n = y.len();
    let mut total = 0.0;
    for i in 0..n {
        let row: Vec<f64> = (0..c).map(|k| s[k] * z[i * c + k]).collect();
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        total += lse - row[y[i]];
    }
    total / n as f64
}

#[test]
fn irm_penalty_matches_the_numerical_derivative_of_the_scaled_loss() {
    let mut rng = Rng::new(11);
    let device = Device::flex();
    for (n, c) in [(1, 2), (7, 3), (33, 10)] {
        let z: Vec<f32> = (0..n * c).map(|_| (rng.f32() - 0.5) * 6.0).collect();
        let y: Vec<usize> = (0..n).map(|_| rng.below(c)).collect();
        let zt = Tensor::<2>::from_data(TensorData::new(z.clone(), [n, c]), &device);
        let yt =
            Tensor::<1, Int>::from_data(TensorData::new(y.iter().map(|&v| v as i64).collect::<Vec<_>>(), [n]), &device);
        let got = irm_penalty(zt.clone(), yt.clone()).into_scalar::<f32>() as f64;
        let z64: Vec<f64> = z.iter().map(|&v| v as f64).collect();
        let h = 1e-5;
        let mut want = 0.0;
        for k in 0..c {
            let mut up = vec![1.0; c];
            let mut down = vec![1.0; c];
            up[k] += h;
            down[k] -= h;
            let g = (ce_scaled(&z64, &y, c, &up) - ce_scaled(&z64, &y, c, &down)) / (2.0 * h);
            want += g * g;
        }
        assert!((got - want).abs() < 1e-4 * (1.0 + want), "n={n} c={c}: {got} vs {want}");
        let ce = cross_entropy(zt, yt).into_scalar::<f32>() as f64;
        assert!((ce - ce_scaled(&z64, &y, c, &vec![1.0; c])).abs() < 1e-4);
    }
}

#[test]
fn irm_penalty_is_differentiable_in_the_logits() {
    let device = Device::flex().autodiff();
    let z: Vec<f32> = vec![0.5, -1.0, 2.0, 1.5, 0.2, -0.3];
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![2i64, 0], [2]), &device);
    let zt = Tensor::<2>::from_data(TensorData::new(z.clone(), [2, 3]), &device).require_grad();
    let grads = irm_penalty(zt.clone(), y.clone()).backward();
    let g = zt.grad(&grads).unwrap().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    // Central difference on entry 1 of the penalty computed without autodiff.
    let plain = Device::flex();
    let yp = Tensor::<1, Int>::from_data(TensorData::new(vec![2i64, 0], [2]), &plain);
    let pen = |v: &[f32]| {
        irm_penalty(Tensor::<2>::from_data(TensorData::new(v.to_vec(), [2, 3]), &plain), yp.clone())
            .into_scalar::<f32>()
    };
    let h = 1e-3;
    let (mut up, mut down) = (z.clone(), z.clone());
    up[1] += h;
    down[1] -= h;
    let num = (pen(&up) - pen(&down)) / (2.0 * h);
    assert!((g[1] - num).abs() < 1e-2 * (1.0 + num.abs()), "{} vs {num}", g[1]);
}

#[test]
fn bad_identifier_bundles_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::flex();
    // Not a zip.
    let junk = dir.path().join("junk.zip");
    std::fs::write(&junk, b"not a zip at all").unwrap();
    let e = Identifier::open(&junk, dev.clone()).unwrap_err().to_string();
    assert!(e.contains("junk.zip"), "{e}");
    // A dataset bundle is not an identifier.
    let data = dir.path().join("data.zip");
    std::fs::write(&data, h2e::embedded::DEFAULT_BUNDLE).unwrap();
    let e = Identifier::open(&data, dev.clone()).unwrap_err().to_string();
    assert!(e.contains("data.zip") && e.contains("config.json is missing"), "{e}");
    // A newer format version.
    let newer = br#"{"format": "h2e-identifier", "version": 99}"#;
    let path = dir.path().join("newer.zip");
    std::fs::write(&path, common::raw_zip(&[("config.json", newer)])).unwrap();
    let e = Identifier::open(&path, dev.clone()).unwrap_err();
    assert!(matches!(e, h2e::Error::NewerVersion { found: 99, .. }), "{e}");
    assert!(e.to_string().contains("upgrade h2e"));
    // A valid identifier with its weights truncated.
    let set = synthetic(9);
    let t = run(&dev, TrainConfig { method: Method::Ce, epochs: 1, ..tiny(Method::Ce) }, &set);
    let id = Identifier::from_trained(t, &set, dev.clone()).unwrap();
    let good = dir.path().join("good.zip");
    id.save(&good).unwrap();
    let mut members = common::zip_members(&good);
    for (name, v) in &mut members {
        if name == "model.safetensors" {
            v.truncate(v.len() / 2);
        }
    }
    let entries: Vec<(&str, &[u8])> = members.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
    let cut = dir.path().join("cut.zip");
    std::fs::write(&cut, common::raw_zip(&entries)).unwrap();
    let e = Identifier::open(&cut, dev.clone()).unwrap_err().to_string();
    assert!(e.contains("cut.zip!model.safetensors"), "{e}");
    // An operating point out of range in config.json (hand-edited).
    let mut config: serde_json::Value = serde_json::from_slice(&members[0].1).unwrap();
    assert_eq!(members[0].0, "config.json");
    config["operating_point"]["min_score"] = serde_json::json!(5.0);
    let edited = serde_json::to_vec(&config).unwrap();
    let mut entries = entries.clone();
    entries[0].1 = &edited;
    let floor = dir.path().join("floor.zip");
    std::fs::write(&floor, common::raw_zip(&entries)).unwrap();
    let e = Identifier::open(&floor, dev.clone()).unwrap_err().to_string();
    assert!(e.contains("floor.zip!config.json") && e.contains("min score 5 is outside [0, 1]"), "{e}");
    // Saving into a missing folder fails without leaving anything.
    let e = id.save(&dir.path().join("no/such/dir/x.zip")).unwrap_err().to_string();
    assert!(e.contains("x.zip"), "{e}");
}

#[test]
fn unavailable_devices_name_the_fix() {
    #[cfg(not(feature = "cuda"))]
    {
        let e = h2e::device::select(h2e::device::DeviceChoice::Cuda).unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }
    #[cfg(not(feature = "vulkan"))]
    {
        let e = h2e::device::select(h2e::device::DeviceChoice::Vulkan).unwrap_err().to_string();
        assert!(e.contains("--features vulkan"), "{e}");
    }
    assert_eq!(h2e::device::select(h2e::device::DeviceChoice::Cpu).unwrap().backend, "cpu");
    assert!("gpu9".parse::<h2e::device::DeviceChoice>().is_err());
}

/// Panics when a given stage starts: a run killed mid-training.
struct KillAt(&'static str);

impl h2e::progress::Progress for KillAt {
    fn event(&self, event: h2e::progress::Event<'_>) {
        if let h2e::progress::Event::Start { stage, .. } = event {
            assert!(stage != self.0, "killed at {stage}");
        }
    }
}

#[test]
fn an_interrupted_run_resumes_from_its_checkpoints_to_the_same_result() {
    let set = synthetic(8);
    let cfg = TrainConfig { rounds: 2, epochs: 3, ..tiny(Method::H2e) };
    let whole = run(&Device::flex(), cfg.clone(), &set);

    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let killer = KillAt("round 2/2 backbone epoch 2/3");
    let interrupted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let engine =
            Engine::new(Device::flex(), cfg.clone(), &set, &killer).unwrap().with_checkpoints(&ckpt, false).unwrap();
        engine.run(&set, None, "test")
    }));
    assert!(interrupted.is_err(), "the run was killed");
    assert!(ckpt.join("round-2-2-backbone.json").exists());

    // Resuming must not redo round 1's backbone: kill it if it starts.
    let no_redo = KillAt("round 1/2 backbone epoch 1/3");
    let engine =
        Engine::new(Device::flex(), cfg.clone(), &set, &no_redo).unwrap().with_checkpoints(&ckpt, true).unwrap();
    let resumed = engine.run(&set, None, "test").unwrap();
    for (a, b) in whole.report.rounds.iter().zip(&resumed.report.rounds) {
        assert_eq!(a.tau, b.tau, "round {}", a.round);
    }
    assert_eq!(resumed.scores.flagged, whole.scores.flagged);
    assert_eq!(resumed.scores.noise_score, whole.scores.noise_score);

    // A checkpoint of other settings is refused, not reused: another
    // learning rate, or another scorer (an identifier run's checkpoints,
    // as every run before joint became the default wrote, resumed under
    // the default).
    let joint = TrainConfig { scorer: h2e::train::Scorer::Joint, ..cfg.clone() };
    for other in [TrainConfig { lr: 0.01, ..cfg }, joint] {
        let engine = Engine::new(Device::flex(), other, &set, &Silent).unwrap().with_checkpoints(&ckpt, true).unwrap();
        let e = engine.run(&set, None, "test").unwrap_err().to_string();
        assert!(e.contains("other settings"), "{e}");
    }
}

#[test]
fn weights_written_from_a_training_module_match_its_validation_forward() {
    use burn::module::Module;
    use burn::optim::{GradientsParams, SgdConfig};
    use h2e::model::{BackboneKind, Net};
    let ad = Device::flex().autodiff();
    ad.seed(3);
    let mut model = Net::new(BackboneKind::SmallCnn, 1, 8, 3, &ad);
    let mut optim = SgdConfig::new().init();
    let x = Tensor::<4>::random([16, 1, 8, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &ad);
    let y =
        Tensor::<1, Int>::from_data(TensorData::new((0..16).map(|i| (i % 3) as i64).collect::<Vec<_>>(), [16]), &ad);
    for _ in 0..3 {
        let loss = cross_entropy(model.forward(x.clone()), y.clone());
        let g = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(0.1, model, g);
    }
    // Written straight after training, before any validation pass.
    let bytes = h2e::weights::to_safetensors(&model, None).unwrap();
    let loaded =
        h2e::weights::from_safetensors(Net::new(BackboneKind::SmallCnn, 1, 8, 3, &Device::flex()), &bytes, "w")
            .unwrap();
    let feats = |n: &Net| {
        n.valid().backbone.forward(x.clone().inner()).into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    };
    assert_eq!(feats(&model), feats(&loaded));
    // A wrong architecture is an error naming the tensor.
    let e = h2e::weights::from_safetensors(
        Net::new(BackboneKind::SmallCnn, 3, 8, 3, &Device::flex()),
        &bytes,
        "w.safetensors",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("w.safetensors") && e.contains("expected F32"), "{e}");
}

#[test]
fn identifiers_can_be_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Identifier>();
    // And really used from several threads at once.
    let set = synthetic(12);
    let t = run(&Device::flex(), TrainConfig { epochs: 1, ..tiny(Method::Ce) }, &set);
    let id = std::sync::Arc::new(Identifier::from_trained(t, &set, Device::flex()).unwrap());
    let want = id.score_set(&set, None).unwrap();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (id, set) = (id.clone(), set.clone());
            std::thread::spawn(move || id.score_set(&set, None).unwrap())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap().flagged, want.flagged);
    }
}

#[test]
fn seeded_initialisation_ignores_burns_global_generator() {
    use burn::module::Module;
    use h2e::model::{seeded, BackboneKind, Net};
    let dev = Device::flex();
    let weights = |global: u64| {
        dev.seed(global);
        let net = seeded(Net::new(BackboneKind::SmallCnn, 1, 8, 3, &dev), 5);
        h2e::weights::to_safetensors(&net, None).unwrap()
    };
    assert_eq!(weights(1), weights(2), "same seed, same network, whatever the global state");
    let other =
        h2e::weights::to_safetensors(&seeded(Net::new(BackboneKind::SmallCnn, 1, 8, 3, &dev), 6), None).unwrap();
    assert_ne!(weights(1), other);
    // Kaiming-uniform bound of the first convolution (fan-in 1 x 3 x 3).
    let net = seeded(Net::new(BackboneKind::SmallCnn, 1, 8, 3, &dev), 5);
    struct Max(Vec<f32>);
    impl burn::module::ModuleVisitor for Max {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            if D == 4 && self.0.is_empty() {
                self.0 = p.val().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
            }
        }
    }
    let mut m = Max(Vec::new());
    net.visit(&mut m);
    let bound = 1.0 / 3.0;
    assert!(m.0.iter().all(|v| v.abs() <= bound) && m.0.iter().any(|v| v.abs() > bound * 0.8));
}

#[test]
fn a_classifier_without_a_test_split_is_refused_before_training() {
    let set = synthetic(13);
    let killer = KillAt("round 1/2 backbone epoch 1/6");
    let engine =
        Engine::new(Device::flex(), TrainConfig { classifier: true, ..tiny(Method::H2e) }, &set, &killer).unwrap();
    let e = engine.run(&set, None, "test").unwrap_err().to_string();
    assert!(e.contains("needs a test split"), "{e}");
}

#[test]
fn resnet18_builds_for_small_and_large_inputs() {
    use h2e::model::{BackboneKind, Net};
    let dev = Device::flex();
    assert_eq!(BackboneKind::for_input(28), BackboneKind::SmallCnn);
    assert_eq!(BackboneKind::for_input(64), BackboneKind::Resnet18);
    for (size, channels) in [(40, 3), (72, 1)] {
        let net = Net::new(BackboneKind::Resnet18, channels, size, 5, &dev);
        let x = Tensor::<4>::zeros([2, channels, size, size], &dev);
        assert_eq!(net.backbone.forward(x.clone()).dims(), [2, 512]);
        assert_eq!(net.forward(x).dims(), [2, 5]);
    }
}
