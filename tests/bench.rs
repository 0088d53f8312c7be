//! The quality benchmark harness in `--quick` mode (its numbers are not
//! results), and `h2e train` / `h2e eval` through the binary.

use std::path::Path;
use std::process::Command;

fn h2e(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_h2e")).args(args).output().expect("run h2e")
}

#[test]
fn quick_quality_benchmark_covers_every_method_and_round() {
    assert!(
        Path::new(h2e::data::FASHION_MNIST_DIR).join("train-images-idx3-ubyte.gz").exists(),
        "install Debian's dataset-fashion-mnist (the CI script does)"
    );
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("bench");
    let o = h2e(&[
        "bench",
        "quality",
        "--quick",
        "--device",
        "cpu",
        "--classifier",
        "--save-logits",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let rows = json["rows"].as_array().unwrap();
    let key = |r: &serde_json::Value| (r["method"].as_str().unwrap().to_string(), r["round"].as_u64().unwrap());
    let keys: Vec<_> = rows.iter().map(key).collect();
    // h2e's default scorer (joint) reports the stage-2 classifier's flags as round 3.
    for want in [("h2e", 1), ("h2e", 2), ("h2e", 3), ("ce", 1), ("small-loss", 1), ("confident-learning", 1)] {
        assert!(keys.contains(&(want.0.to_string(), want.1)), "{want:?} missing from {keys:?}");
    }
    // Uniform noise 0.3 on 300 head images, imbalance 10: floor(0.3 n_c) noisy per class.
    let counts = h2e::nlt::lt_counts(300, 10, 10.0);
    let noisy: u64 = counts.iter().map(|&n| (0.3 * n as f64).floor() as u64).sum();
    for r in rows {
        assert_eq!(r["detection"]["noisy"].as_u64().unwrap(), noisy);
        let f1 = r["detection"]["f1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&f1));
        assert_eq!(r["backend"], "cpu");
    }
    // h2e rounds also report each operating point.
    assert!(rows.iter().any(|r| key(r) == ("h2e".to_string(), 1) && r["operating_point"] == "confident-learning"));
    // ... and the default rule at each score floor, which only removes flags.
    let flagged = |name: &str| {
        let r = rows.iter().find(|r| key(r) == ("h2e".to_string(), 1) && r["operating_point"] == name);
        r.unwrap_or_else(|| panic!("no {name} row")).pointer("/detection/flagged").and_then(|v| v.as_u64()).unwrap()
    };
    for t in h2e::score::SCORE_FLOORS {
        assert!(flagged(&format!("agreement-noise-rate+min-score={t}")) <= flagged("agreement-noise-rate"), "{t}");
    }
    // The final h2e round carries the stage-2 classifier's test accuracy.
    let last = rows.iter().find(|r| key(r) == ("h2e".to_string(), 3)).unwrap();
    assert!(last["classifier"]["balanced_accuracy"].as_f64().is_some());
    // ... and the plain network's accuracy, as is and with post-hoc logit adjustment.
    for k in ["ce", "ce_post_hoc_la"] {
        assert_eq!(last["reference"][k]["samples"].as_u64(), Some(200), "{k}");
    }
    // ... and the model averages, every one on the whole test split.
    let averages = last["ensembles"].as_array().unwrap();
    let names: Vec<&str> = averages.iter().map(|e| e[0].as_str().unwrap()).collect();
    let want: Vec<&str> = h2e::train::ENSEMBLES.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, want);
    assert!(averages.iter().all(|e| e[1]["samples"].as_u64() == Some(200)), "{averages:?}");
    // results.md: the main table (header, rule, one line a row), then the
    // averages of the one final h2e row (blank, caption, blank, header,
    // rule, one line).
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    let (main, averages_md) = md.split_once("\nModel averages").expect("a model-averages table");
    assert_eq!(main.lines().count(), 2 + rows.len());
    assert_eq!(averages_md.lines().count(), 5, "{averages_md}");
    assert!(averages_md.contains("| uniform-rho10-r0.3-s0 |"), "{averages_md}");
    assert!(out.join("draws/uniform-rho10-r0.3-s0.zip").exists());
    // One summary line for the draw, with the baselines and stage 2 in it.
    let summary = json["summary"].as_array().unwrap();
    assert_eq!(summary.len(), 1);
    assert!(summary[0]["best_baseline"].is_array() && summary[0]["stage2"].is_number(), "{}", summary[0]);
    let sm = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(sm.contains("| uniform-rho10-r0.3-s0 |") && sm.contains("draws pass every check"), "{sm}");
    rescoring_the_saved_logits_gives_the_runs_figures(&out, rows);
    resumed_runs_reuse_the_saved_results(&out, rows);
}

/// `bench rescore` on the logits the quick run saved recomputes, with no
/// training, what the run itself reported for the same operating point.
fn rescoring_the_saved_logits_gives_the_runs_figures(out: &Path, rows: &[serde_json::Value]) {
    assert!(out.join("draws/uniform-rho10-r0.3-s0.h2e.logits.safetensors").exists());
    let floor = "agreement-noise-rate+min-score=0.9+any-flip";
    let every = format!("{floor}+every-round");
    for (args, names) in [
        (vec!["--operating-point", "argmax"], ["argmax"; 2]),
        (vec!["--min-score", "0.9", "--floor-exempt", "any-flip"], [floor; 2]),
        (vec!["--min-score", "0.8", "--floor-exempt", "majority-flip"], ["agreement-noise-rate+min-score=0.8"; 2]),
        // Over every round: round 1 has no earlier round, so it is the plain floor.
        (vec!["--min-score", "0.9", "--floor-rounds", "every"], [floor, every.as_str()]),
    ] {
        let mut cmd = vec!["bench", "rescore", out.to_str().unwrap()];
        cmd.extend(args);
        let o = h2e(&cmd);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8_lossy(&o.stdout);
        let lines: Vec<Vec<String>> = text
            .lines()
            .skip(2)
            .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect())
            .collect();
        // One line per round: the two identifier rounds, then the stage-2
        // classifier's (the default joint scorer saved its logits too);
        // the identifier's rounds are compared with the run's rows.
        assert_eq!(lines.len(), 3, "one line per round: {text}");
        assert_eq!(lines[2][1], "3");
        for ((round, line), name) in [1u64, 2].into_iter().zip(&lines).zip(names) {
            let r = rows
                .iter()
                .find(|r| r["method"] == "h2e" && r["round"] == round && r["operating_point"] == name)
                .unwrap_or_else(|| panic!("no {name} row for round {round}"));
            let d = &r["detection"];
            assert_eq!(line[0], "uniform-rho10-r0.3-s0");
            assert_eq!(line[1], round.to_string());
            assert_eq!(line[4], format!("{:.3}", d["f1"].as_f64().unwrap()), "{name} round {round}: {text}");
            assert_eq!(line[6], format!("{:.3}", d["tail"]["f1"].as_f64().unwrap()), "{name} round {round}");
            assert_eq!(line[8], format!("{} / {}", d["flagged"], d["noisy"]), "{name} round {round}");
        }
    }
    // The floor over every round only removes flags, and is reported from round 2 only.
    let flagged = |round: u64, name: &str| {
        rows.iter()
            .find(|r| r["method"] == "h2e" && r["round"] == round && r["operating_point"] == name)
            .map(|r| r["detection"]["flagged"].as_u64().unwrap())
    };
    assert!(flagged(1, &every).is_none());
    assert!(flagged(2, &every).unwrap() <= flagged(2, floor).unwrap());
    // A folder without saved logits is an error that says how to get them.
    let empty = out.parent().unwrap().join("empty");
    std::fs::create_dir_all(empty.join("draws")).unwrap();
    let o = h2e(&["bench", "rescore", empty.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--save-logits"), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The second half of the quick benchmark test (it reuses its output): a
/// rerun trains nothing that is saved, and only for the same configuration.
fn resumed_runs_reuse_the_saved_results(out: &Path, rows: &[serde_json::Value]) {
    let draws = out.join("draws");
    let methods = ["h2e", "ce", "small-loss", "confident-learning"];
    for m in methods {
        assert!(draws.join(format!("uniform-rho10-r0.3-s0.{m}.json")).exists(), "{m}'s result was not saved");
    }
    // Mark the saved ce result: a rerun that trained ce again would lose the mark.
    let ce = draws.join("uniform-rho10-r0.3-s0.ce.json");
    let mut saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&ce).unwrap()).unwrap();
    saved["rows"][0]["seconds"] = serde_json::json!(12345.0);
    std::fs::write(&ce, serde_json::to_vec(&saved).unwrap()).unwrap();
    let quick = ["bench", "quality", "--quick", "--device", "cpu", "--classifier", "-o", out.to_str().unwrap()];
    let o = h2e(&quick);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("reused 4 saved results"));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let again = json["rows"].as_array().unwrap();
    assert_eq!(again.len(), rows.len());
    let ce_row = again.iter().find(|r| r["method"] == "ce").unwrap();
    assert_eq!(ce_row["seconds"], 12345.0, "ce was trained again instead of reused");
    let h2e_rows = |rs: &[serde_json::Value]| rs.iter().filter(|r| r["method"] == "h2e").cloned().collect::<Vec<_>>();
    assert_eq!(h2e_rows(again), h2e_rows(rows));
    // Another configuration (3 epochs) has nothing saved: --report-only
    // trains nothing and lists every pair as missing.
    let mut other = quick.to_vec();
    other.extend(["--epochs", "3", "--report-only"]);
    let o = h2e(&other);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("4 not run yet: uniform-rho10-r0.3-s0.h2e, uniform-rho10-r0.3-s0.ce"), "{err}");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), 0);
    assert_eq!(json["missing"].as_array().unwrap().len(), 4);
    // A change that only h2e reads (3 rounds, mirror scoring, the
    // identifier's epochs and IRM weight, the classifier scorer) leaves the
    // baselines' saved results valid: only h2e is missing.
    let mut other = quick.to_vec();
    other.extend(["--rounds", "3", "--tta-flip", "--identifier-epochs", "2", "--irm-lambda", "0"]);
    other.extend(["--scorer", "classifier", "--report-only"]);
    let o = h2e(&other);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("1 not run yet: uniform-rho10-r0.3-s0.h2e") && err.contains("reused 3 saved results"),
        "{err}"
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let kept = json["rows"].as_array().unwrap();
    assert_eq!(kept.len(), rows.iter().filter(|r| r["method"] != "h2e").count());
    assert!(kept.iter().all(|r| r["method"] != "h2e"));
    assert_eq!(json["missing"], serde_json::json!(["uniform-rho10-r0.3-s0.h2e"]));
    // A damaged saved result is an error that names the file, not a retrain.
    std::fs::write(&ce, b"{").unwrap();
    let o = h2e(&quick);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("uniform-rho10-r0.3-s0.ce.json") && err.contains("delete the file"), "{err}");
    // --shard is checked before anything runs.
    let mut bad = quick.to_vec();
    bad.extend(["--shard", "2/2"]);
    let o = h2e(&bad);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("must be below the shard count"));
}

#[test]
fn train_then_eval_through_the_binary() {
    let t = tempfile::tempdir().unwrap();
    let id = t.path().join("id.zip");
    let args = [
        "train",
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--rounds",
        "1",
        "--identifier-epochs",
        "1",
        "--classifier",
        "--classifier-epochs",
        "1",
        "-o",
        id.to_str().unwrap(),
    ];
    let o = h2e(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("device: cpu") && err.contains("round 1: flagged"), "{err}");
    // The checkpoint folder is gone once the bundle is written.
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
    let o = h2e(&["eval", id.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["method"], "h2e");
    let round = &v["rounds"][0];
    for k in ["precision", "recall", "f1", "auroc"] {
        assert!(round[k].as_f64().is_some(), "{k} missing in {v}");
    }
    assert!(round["tail"]["f1"].as_f64().is_some() && round["head"]["f1"].as_f64().is_some());
    assert!(v.get("test_accuracy").is_some());
    // The default joint scorer's round comes last and lists the classes it
    // spares (an array, empty when none); the identifier's rounds have none.
    let rounds = v["rounds"].as_array().unwrap();
    let last = rounds.last().unwrap();
    assert!(last["by_classifier"].as_bool().unwrap() && last["spared_classes"].is_array(), "{v}");
    assert!(rounds[..rounds.len() - 1].iter().all(|r| r["spared_classes"].is_null()), "{v}");
    // The text view names those classes as the bundle does.
    let o = h2e(&["eval", id.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text.lines().find(|l| l.contains("(joint: stage-2 classifier; ")).unwrap_or_else(|| panic!("{text}"));
    let names = h2e::identifier::Identifier::read_summary(&id).unwrap().0.classes;
    for k in last["spared_classes"].as_array().unwrap() {
        assert!(line.contains(&names[k.as_u64().unwrap() as usize]), "{line}");
    }
    if last["spared_classes"].as_array().unwrap().is_empty() {
        assert!(line.contains("no class spared"), "{line}");
    }
    // Filtering the training data again reports against its ground truth.
    let data = t.path().join("default.zip");
    std::fs::write(&data, h2e::embedded::DEFAULT_BUNDLE).unwrap();
    let csv = t.path().join("r.csv");
    let o = h2e(&[
        "filter",
        id.to_str().unwrap(),
        data.to_str().unwrap(),
        "--device",
        "cpu",
        "--report",
        csv.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let src = h2e::bundle::BundleSource::open(&data).unwrap();
    use h2e::data::Source;
    let train: Vec<_> = src.samples().iter().filter(|s| s.split == h2e::data::Split::Train).collect();
    let noisy = train.iter().filter(|s| s.true_label != Some(s.label)).count();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("ground truth (train: {} samples, {noisy} noisy)", train.len())), "{err}");
    assert!(err.contains("ground truth (test: "), "{err}");
    std::fs::remove_file(&csv).unwrap();
    // The shipped classifier predicts every sample; its accuracy on the clean
    // test split is what the CSV says, and what eval recorded at training.
    let pred = t.path().join("p.csv");
    let o = h2e(&[
        "classify",
        id.to_str().unwrap(),
        data.to_str().unwrap(),
        "--device",
        "cpu",
        "--report",
        pred.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&pred).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("path,given_label,predicted_label,probability,error"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), src.samples().len());
    let by_path: std::collections::HashMap<&str, &h2e::data::SampleMeta> =
        src.samples().iter().map(|s| (s.path.as_str(), s)).collect();
    let (mut right, mut total) = (0, 0);
    for r in &rows {
        let meta = by_path[r[0]];
        assert!(r[3].parse::<f32>().unwrap() > 0.0 && r[4].is_empty(), "{r:?}");
        if meta.split == h2e::data::Split::Test {
            total += 1;
            right += (src.classes()[meta.true_label.unwrap()] == r[2]) as usize;
        }
    }
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("test ({total} samples): accuracy {:.3}", right as f64 / total as f64)), "{err}");
    let recorded = v["classifier"]["accuracy"].as_f64().unwrap();
    assert!((recorded - right as f64 / total as f64).abs() < 1e-9, "{recorded} vs {right}/{total}");
    std::fs::remove_file(&pred).unwrap();
    // Something that is not an identifier is refused with a message naming
    // it, and no report is left behind.
    let o = h2e(&[
        "classify",
        data.to_str().unwrap(),
        data.to_str().unwrap(),
        "--device",
        "cpu",
        "--report",
        pred.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(data.to_str().unwrap()),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!pred.exists());
    std::fs::remove_file(&data).unwrap();
    // Bad input: a missing data file and an unknown device are clear errors, nothing written.
    let o = h2e(&["train", "/no/such/data.zip", "--device", "cpu", "-o", t.path().join("x.zip").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/no/such/data.zip"));
    let o = h2e(&["train", "--device", "tpu", "-o", t.path().join("x.zip").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let o = h2e(&["train", "--resume", "--device", "cpu", "-o", t.path().join("y.zip").to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no checkpoint folder"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
}

#[test]
fn speed_benchmark_times_each_requested_backend() {
    let o = h2e(&["bench", "speed", "--devices", "cpu", "--warmup", "1", "--steps", "2", "--runs", "3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    let backends = json["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 1);
    let b = &backends[0];
    assert_eq!(b["backend"], "cpu");
    for k in ["train_runs", "infer_runs"] {
        let runs: Vec<f64> = b[k].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(runs.len(), 3, "{k}");
        assert!(runs.iter().all(|r| r.is_finite() && *r > 0.0), "{k}: {runs:?}");
        let median = b[k.replace("_runs", "_img_s")].as_f64().unwrap();
        assert!(runs.contains(&median), "{k}: the median is one of the runs");
    }
    assert_eq!((json["train_batch"].as_u64(), json["infer_batch"].as_u64()), (Some(128), Some(512)));
    // The build facts a CPU figure depends on travel with it.
    assert!(json["cpu_threads"].as_u64().is_some_and(|n| n >= 1), "{json}");
    assert_eq!(json["allocator"], "mimalloc");
    // Nothing to time is an error, not a division by zero.
    let o = h2e(&["bench", "speed", "--devices", "cpu", "--steps", "0"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("at least one step"), "{}", String::from_utf8_lossy(&o.stderr));
}
