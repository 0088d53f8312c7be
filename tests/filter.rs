//! `h2e filter` (and `h2e train`'s report of its own training set): a tiny
//! identifier trained on synthetic 8x8 images applied
//! to ImageFolders and image lists, through the library and the binary.

mod common;

use burn::tensor::Device;
use h2e::data::{open_source, TensorSet};
use h2e::filter::{filter_source, FilterOptions, FilterReport, FilterRow, Shard, UnknownClass};
use h2e::identifier::Identifier;
use h2e::progress::Silent;
use h2e::score::Scores;
use h2e::train::{Engine, Method, Scorer, TrainConfig};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

const CLASSES: [&str; 3] = ["top", "middle", "bottom"];

/// Three classes of 8x8 grayscale images: a bright band at the top, middle or bottom.
fn synthetic() -> TensorSet {
    common::bands(5, 16)
}

/// The bytes of a quickly trained identifier, built once per test binary.
fn identifier_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let set = synthetic();
        let cfg =
            TrainConfig { method: Method::Ce, epochs: 2, batch_size: 16, rounds: 1, seed: 1, ..TrainConfig::default() };
        let device = Device::flex();
        let trained = Engine::new(device.clone(), cfg, &set, &Silent).unwrap().run(&set, None, "test").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.zip");
        Identifier::from_trained(trained, &set, device).unwrap().save(&path).unwrap();
        std::fs::read(&path).unwrap()
    })
}

fn identifier() -> Identifier {
    Identifier::from_bytes("id.zip", identifier_bytes().to_vec(), Device::flex()).unwrap()
}

/// `root/{top,middle,bottom}` with 5, 4 and 3 PNGs (8x8 gray and 10x6 RGB),
/// plus `middle/a,b "q".png`.
fn folder(root: &Path) -> usize {
    common::folder(root, &[("top", 5), ("middle", 4), ("bottom", 3)]);
    std::fs::write(root.join("middle/a,b \"q\".png"), common::png(8, 8, 3, 99)).unwrap();
    13
}

fn run(root: &Path, opts: &FilterOptions) -> h2e::Result<FilterReport> {
    filter_source(&identifier(), open_source(root)?.as_ref(), opts, &Silent)
}

fn scored(r: &FilterRow) -> bool {
    r.error.is_none()
        && CLASSES.contains(&r.predicted_label.as_str())
        && r.label_score.is_some_and(|s| (0.0..=1.0).contains(&s))
}

#[test]
fn one_row_per_sample_and_a_corrupt_image_is_an_error_row() {
    let t = tempfile::tempdir().unwrap();
    let n = folder(t.path()) + 1;
    std::fs::write(t.path().join("top/zzz.png"), b"not a png").unwrap();
    let report = run(t.path(), &FilterOptions { batch_size: 4, ..Default::default() }).unwrap();
    assert_eq!(report.rows.len(), n);
    assert_eq!(report.errors(), 1);
    let bad = report.rows.iter().find(|r| r.error.is_some()).unwrap();
    assert!(bad.path.ends_with("zzz.png") && bad.error.as_ref().unwrap().contains("zzz.png"), "{bad:?}");
    assert!(!bad.is_label_issue && bad.predicted_label.is_empty() && bad.label_score.is_none());
    assert_eq!(bad.given_label, "top");
    for r in report.rows.iter().filter(|r| r.error.is_none()) {
        assert!(scored(r), "{r:?}");
        assert_eq!(r.given_label, r.path.split('/').next().unwrap());
        assert!((r.label_score.unwrap() + r.noise_score.unwrap() - 1.0).abs() < 1e-5);
    }

    // Threshold 0 (no per-class floor) flags every scored labelled sample.
    let all = FilterOptions { threshold: Some(0.0), min_per_class: Some(0), ..Default::default() };
    let report = run(t.path(), &all).unwrap();
    assert_eq!(report.flagged(), n - 1);
    assert!(report.rows.iter().all(|r| r.is_label_issue == r.error.is_none()));
    // A rate cap applies over the scored samples.
    let capped = run(t.path(), &FilterOptions { max_flag_rate: Some(0.25), ..all }).unwrap();
    assert_eq!(capped.flagged(), (n - 1) / 4);
    // A score floor keeps exactly the flags scored at or above it.
    let floored = run(t.path(), &FilterOptions { min_score: Some(0.5), ..all }).unwrap();
    for r in &floored.rows {
        assert_eq!(r.is_label_issue, r.noise_score.is_some_and(|s| s >= 0.5), "{r:?}");
    }
    assert!(FilterOptions { min_score: Some(-0.1), ..all }.validate().is_err());
}

#[test]
fn a_scorer_that_needs_a_classifier_is_refused_without_one() {
    let t = tempfile::tempdir().unwrap();
    folder(t.path());
    for scorer in [Scorer::Classifier, Scorer::Joint] {
        let opts = FilterOptions { scorer: Some(scorer), ..Default::default() };
        let e = run(t.path(), &opts).unwrap_err().to_string();
        assert!(e.contains(&format!("the {scorer} scorer")) && e.contains("--classifier"), "{e}");
    }
    let opts = FilterOptions { scorer: Some(Scorer::Identifier), ..Default::default() };
    assert_eq!(run(t.path(), &opts).unwrap().rows, run(t.path(), &FilterOptions::default()).unwrap().rows);
}

#[test]
fn unknown_classes_are_refused_or_skipped() {
    let t = tempfile::tempdir().unwrap();
    let n = folder(t.path());
    common::folder(t.path(), &[("sideways", 2)]);
    let e = run(t.path(), &FilterOptions::default()).unwrap_err().to_string();
    assert!(e.contains("sideways") && e.contains("unknown"), "{e}");
    let report = run(t.path(), &FilterOptions { unknown_class: UnknownClass::Skip, ..Default::default() }).unwrap();
    assert_eq!(report.rows.len(), n + 2);
    let skipped: Vec<_> = report.rows.iter().filter(|r| r.error.is_some()).collect();
    assert_eq!(skipped.len(), 2);
    for r in skipped {
        assert_eq!(r.error.as_deref(), Some("unknown class sideways"));
        assert_eq!(r.given_label, "sideways");
        assert!(!r.is_label_issue);
    }
}

#[test]
fn shards_cover_exactly_the_unsharded_rows() {
    let t = tempfile::tempdir().unwrap();
    folder(t.path());
    let key = |r: &FilterRow| (r.path.clone(), r.predicted_label.clone(), r.given_label.clone());
    let whole = run(t.path(), &FilterOptions::default()).unwrap();
    let mut parts = Vec::new();
    for i in 0..2 {
        let shard = FilterOptions { shard: Shard::new(i, 2).unwrap(), batch_size: 3, ..Default::default() };
        let rows = run(t.path(), &shard).unwrap().rows;
        assert_eq!(rows.len(), whole.rows.len().div_ceil(2) - i);
        parts.extend(rows);
    }
    parts.sort_by(|a, b| a.path.cmp(&b.path));
    let mut all = whole.rows.clone();
    all.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(parts.iter().map(key).collect::<Vec<_>>(), all.iter().map(key).collect::<Vec<_>>());
    for (a, b) in parts.iter().zip(&all) {
        assert!((a.label_score.unwrap() - b.label_score.unwrap()).abs() < 1e-5, "batching does not change scores");
    }
}

#[test]
fn an_unlabelled_list_gives_predictions_and_no_flags() {
    let t = tempfile::tempdir().unwrap();
    folder(&t.path().join("imgs"));
    let list = t.path().join("list.csv");
    std::fs::write(
        &list,
        "path\nimgs/top/000.png\nimgs/top/001.png\n\"imgs/middle/a,b \"\"q\"\".png\"\nimgs/bottom/002.png\n",
    )
    .unwrap();
    let opts = FilterOptions { threshold: Some(0.0), min_per_class: Some(0), ..Default::default() };
    let report = run(&list, &opts).unwrap();
    assert_eq!(report.rows.len(), 4);
    assert_eq!(report.flagged(), 0);
    for r in &report.rows {
        assert!(scored(r), "{r:?}");
        assert!(r.given_label.is_empty());
    }
}

/// Minimal RFC 4180 reader (no embedded newlines).
fn parse_csv_line(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut chars) = (Vec::new(), String::new(), false, line.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            (true, '"') => quoted = false,
            (false, '"') => quoted = true,
            (false, ',') => out.push(std::mem::take(&mut cur)),
            (_, c) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn h2e_command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_h2e"));
    c.args(args);
    c
}

fn h2e(args: &[&str]) -> std::process::Output {
    h2e_command(args).output().expect("run h2e")
}

#[test]
fn the_binary_writes_csv_and_jsonl_that_parse_back() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let n = folder(&data) + 1;
    std::fs::write(data.join("bottom/bad.png"), b"\x89PNG broken").unwrap();
    let id = t.path().join("id.zip");
    std::fs::write(&id, identifier_bytes()).unwrap();
    let (csv, jsonl) = (t.path().join("out.csv"), t.path().join("out.jsonl"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let o = h2e(&[
        "filter",
        &s(&id),
        &s(&data),
        "--device",
        "cpu",
        "--report",
        &s(&csv),
        "--jsonl",
        &s(&jsonl),
        "--batch-size",
        "5",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{n} samples")) && stderr.contains("1 errors") && stderr.contains("images/s"),
        "{stderr}"
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("path,given_label,predicted_label,label_score,is_label_issue,error"));
    let rows: Vec<Vec<String>> = lines.map(parse_csv_line).collect();
    assert_eq!(rows.len(), n);
    assert!(rows.iter().all(|r| r.len() == 6), "{rows:?}");
    assert!(rows.iter().any(|r| r[0] == "middle/a,b \"q\".png" && r[1] == "middle"));
    let bad = rows.iter().find(|r| r[0] == "bottom/bad.png").unwrap();
    assert!(bad[5].contains("bad.png") && bad[4] == "false" && bad[3].is_empty(), "{bad:?}");
    for r in rows.iter().filter(|r| r[5].is_empty()) {
        assert!(
            CLASSES.contains(&r[2].as_str())
                && r[3].parse::<f32>().is_ok()
                && ["true", "false"].contains(&r[4].as_str()),
            "{r:?}"
        );
    }
    let json: Vec<serde_json::Value> =
        std::fs::read_to_string(&jsonl).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(json.len(), n);
    assert!(json.iter().all(|v| v["is_label_issue"].is_boolean() && v.get("noise_score").is_some()));
    // Only the two outputs were written next to the inputs (no temporaries left).
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 4);

    // Without outputs the CSV goes to stdout; a bad shard is refused before any work.
    let o = h2e(&["filter", &s(&id), &s(&data), "--device", "cpu", "--shard", "1/2"]);
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.starts_with("path,given_label,"));
    assert_eq!(out.lines().count(), 1 + n / 2);
    let o = h2e(&["filter", &s(&id), &s(&data), "--shard", "2/2"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("shard"));
}

/// `--device auto` loads the Vulkan drivers to look for a GPU; in a shell
/// without `XDG_RUNTIME_DIR` Mesa's would print an error line twice. The
/// binary sets the variable for itself, so the output stays clean (on a
/// machine without Mesa there is nothing to print either way).
#[test]
fn the_gpu_probe_prints_no_runtime_dir_error() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let n = folder(&data);
    let id = t.path().join("id.zip");
    std::fs::write(&id, identifier_bytes()).unwrap();
    let o = h2e_command(&["filter", id.to_str().unwrap(), data.to_str().unwrap(), "--device", "auto"])
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .expect("run h2e");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(!stderr.contains("XDG_RUNTIME_DIR"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 1 + n);
}

#[test]
fn kept_and_flagged_samples_export_to_a_folder_and_a_bundle() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    folder(&data);
    std::fs::write(data.join("top/zzz.png"), b"not a png").unwrap();
    let src = open_source(&data).unwrap();
    // Threshold 0.5: some samples of each kind on this data.
    let opts = FilterOptions { threshold: Some(0.5), min_per_class: Some(0), ..Default::default() };
    let report = filter_source(&identifier(), src.as_ref(), &opts, &Silent).unwrap();
    let clean = t.path().join("clean");
    let noisy = t.path().join("noisy.zip");
    let kept = h2e::filter::export(&report, src.as_ref(), false, &clean).unwrap();
    let flagged = h2e::filter::export(&report, src.as_ref(), true, &noisy).unwrap();
    assert_eq!(kept + flagged, report.rows.len() - report.errors());
    assert_eq!(flagged, report.flagged());
    assert!(kept > 0 && flagged > 0, "kept {kept}, flagged {flagged}");
    // The folder reads back as an ImageFolder with the kept samples, by class.
    let back = open_source(&clean).unwrap();
    assert_eq!(back.samples().len(), kept);
    let bundle = open_source(&noisy).unwrap();
    assert_eq!(bundle.samples().len(), flagged);
    for s in back.samples() {
        let class = &back.classes()[s.label];
        let row = report
            .rows
            .iter()
            .find(|r| r.path.ends_with(s.path.rsplit('/').next().unwrap()) && &r.given_label == class)
            .unwrap();
        assert!(!row.is_label_issue);
    }
    // A non-empty destination folder is refused and left as it was; only the outputs were written.
    let e = h2e::filter::export(&report, src.as_ref(), false, &clean).unwrap_err().to_string();
    assert!(e.contains("not empty"), "{e}");
    // A .zip name that is a folder, and a folder name that is a file, are refused too.
    let as_zip_dir = t.path().join("d.zip");
    std::fs::create_dir(&as_zip_dir).unwrap();
    assert!(h2e::filter::check_export_target(&as_zip_dir).unwrap_err().to_string().contains("d.zip"));
    std::fs::remove_dir(&as_zip_dir).unwrap();
    let file = data.join("top/000.png");
    assert!(h2e::filter::check_export_target(&file).unwrap_err().to_string().contains("it is a file"));
    let mut names: Vec<_> =
        std::fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["clean", "data", "noisy.zip"]);
}

#[test]
fn a_training_report_mirrors_the_final_scores_row_by_row() {
    let set = synthetic();
    let n = set.len();
    let scores = Scores {
        pred: (0..n).map(|i| (set.labels[i] + usize::from(i % 5 == 0)) % 3).collect(),
        noise_score: (0..n).map(|i| (i % 7) as f32 / 7.0).collect(),
        flagged: (0..n).map(|i| i % 5 == 0).collect(),
        weight: vec![1.0; n],
    };
    let report = FilterReport::from_scores(&set, &scores, 2.5).unwrap();
    assert_eq!(report.rows.len(), n);
    assert_eq!(report.flagged(), scores.flagged.iter().filter(|&&f| f).count());
    assert_eq!(report.errors(), 0);
    for (i, r) in report.rows.iter().enumerate() {
        assert_eq!(r.path, set.paths[i]);
        assert_eq!(r.given_label, CLASSES[set.labels[i]]);
        assert_eq!(r.predicted_label, CLASSES[scores.pred[i]]);
        assert_eq!(r.is_label_issue, scores.flagged[i]);
        assert_eq!(r.noise_score, Some(scores.noise_score[i]));
        assert!((r.label_score.unwrap() + scores.noise_score[i] - 1.0).abs() < 1e-6);
    }
    // Scores of another set, or a prediction outside the classes, are refused.
    let mut short = scores.clone();
    short.flagged.pop();
    assert!(FilterReport::from_scores(&set, &short, 0.0).is_err());
    let mut bad = scores;
    bad.pred[3] = 7;
    let e = FilterReport::from_scores(&set, &bad, 0.0).unwrap_err().to_string();
    assert!(e.contains("class 7"), "{e}");
}

#[test]
fn train_writes_the_training_sets_report_beside_the_bundle() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let n = folder(&data);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (id, csv, jsonl, html) =
        (t.path().join("id.zip"), t.path().join("r.csv"), t.path().join("r.jsonl"), t.path().join("r.html"));
    let tiny = ["--device", "cpu", "--rounds", "1", "--epochs", "1", "--identifier-epochs", "1", "--batch-size", "8"];

    // Bad report paths fail before any training and leave nothing behind.
    let o = h2e_command(&["train", &s(&data), "-o", &s(&id), "--report", &s(&data)]).args(tiny).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("is a folder"));
    let o = h2e_command(&["train", &s(&data), "-o", &s(&id), "--jsonl", &s(&id)]).args(tiny).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("two outputs"));
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);

    let o = h2e_command(&[
        "train",
        &s(&data),
        "-o",
        &s(&id),
        "--report",
        &s(&csv),
        "--jsonl",
        &s(&jsonl),
        "--html",
        &s(&html),
    ])
    .args(tiny)
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    // The last round line (the default joint scorer's, `round 2 (joint:
    // stage-2 classifier; ...): flagged N ...`) says how many training
    // samples were flagged; the CSV agrees.
    let flagged: usize = stderr
        .lines()
        .filter(|l| l.starts_with("round 2 (joint: stage-2 classifier; "))
        .find_map(|l| l.split_once("): flagged ")?.1.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no final round line in {stderr}"));
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("path,given_label,predicted_label,label_score,is_label_issue,error"));
    let rows: Vec<Vec<String>> = lines.map(parse_csv_line).collect();
    assert_eq!(rows.len(), n);
    assert_eq!(rows.iter().filter(|r| r[4] == "true").count(), flagged);
    let mut paths: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    paths.sort();
    let mut expected: Vec<String> = common::files_under(&data)
        .iter()
        .map(|p| p.strip_prefix(&data).unwrap().to_str().unwrap().to_string())
        .collect();
    expected.sort();
    assert_eq!(paths, expected);
    for r in &rows {
        assert_eq!(r[1], r[0].split('/').next().unwrap(), "{r:?}");
        assert!(CLASSES.contains(&r[2].as_str()) && r[5].is_empty(), "{r:?}");
        assert!(r[3].parse::<f32>().is_ok_and(|p| (0.0..=1.0).contains(&p)), "{r:?}");
    }
    let json: Vec<serde_json::Value> =
        std::fs::read_to_string(&jsonl).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(json.len(), n);
    for v in &json {
        let (l, s) = (v["label_score"].as_f64().unwrap(), v["noise_score"].as_f64().unwrap());
        assert!((l + s - 1.0).abs() < 1e-5, "{v}");
    }
    assert!(std::fs::read_to_string(&html).unwrap().starts_with("<!DOCTYPE html>"));
    // The bundle and the three reports, no checkpoints or temporaries.
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 5);
}
