//! `examples/ingest.rs`, run for real (`cargo run --example ingest`) on a
//! tiny identifier and an incoming folder made here.

mod common;

use burn::tensor::Device;
use h2e::data::{decode_image, resize, DecodeLimits, TensorSet};
use h2e::identifier::Identifier;
use h2e::kernels::PackedBatch;
use h2e::progress::Silent;
use h2e::rng::Rng;
use h2e::train::{Engine, Method, TrainConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const CLASSES: [&str; 3] = ["top", "middle", "bottom"];

/// An 8x8 grayscale image with a bright band over `rows`.
fn band(rows: std::ops::Range<usize>, rng: &mut Rng) -> h2e::data::Image {
    let pixels = (0..64).map(|p| (if rows.contains(&(p / 8)) { 200 } else { 30 } + rng.below(40)) as u8).collect();
    h2e::data::Image { width: 8, height: 8, channels: 1, pixels }
}

fn bands() -> [std::ops::Range<usize>; 3] {
    [0..3, 3..5, 5..8]
}

/// A quickly trained identifier for the three band classes, saved at `path`.
fn train_identifier(path: &Path) {
    let mut rng = Rng::new(5);
    let mut set = TensorSet::empty(CLASSES.iter().map(|s| s.to_string()).collect(), 1, 8, 8);
    for (label, rows) in bands().into_iter().enumerate() {
        for i in 0..16 {
            set.push(&band(rows.clone(), &mut rng), label, None, format!("{label}/{i}.png"));
        }
    }
    let cfg =
        TrainConfig { method: Method::Ce, epochs: 2, batch_size: 16, rounds: 1, seed: 1, ..TrainConfig::default() };
    let trained = Engine::new(Device::flex(), cfg, &set, &Silent).unwrap().run(&set, None, "test").unwrap();
    Identifier::from_trained(trained, &set, Device::flex()).unwrap().save(path).unwrap();
}

fn ingest(args: &[&Path], extra: &[&str]) -> String {
    let o = Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "--release", "--quiet", "--example", "ingest", "--"])
        .args(args)
        .args(["--device", "cpu"])
        .args(extra)
        .output()
        .expect("run cargo");
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "ingest failed:\n{out}\n{err}");
    out.into_owned()
}

/// Files under `out/clean` and `out/quarantine`: relative path -> side.
fn routed(out: &Path) -> BTreeMap<String, Vec<&'static str>> {
    let mut m: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    for side in ["clean", "quarantine"] {
        let root = out.join(side);
        for f in common::files_under(&root) {
            let rel = f.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
            m.entry(rel).or_default().push(side);
        }
    }
    m
}

/// The identifier's score of an image file for label `label`.
fn score(id: &Identifier, path: &Path, label: usize) -> h2e::score::SampleScore {
    let img = decode_image(&std::fs::read(path).unwrap(), "x", &DecodeLimits::default()).unwrap();
    let img = resize(&img, 1, 8, 8);
    let mut batch = PackedBatch::new(1).unwrap();
    batch.push(8, 8, &img.pixels).unwrap();
    id.score_batch(&batch, &[Some(label)]).unwrap()[0]
}

/// The identifier's noise score of an image file for label `label`.
fn noise(id: &Identifier, path: &Path, label: usize) -> f32 {
    score(id, path, label).noise_score
}

#[test]
fn every_image_is_routed_once_and_the_threshold_decides() {
    let t = tempfile::tempdir().unwrap();
    let (id_path, incoming, out) = (t.path().join("id.zip"), t.path().join("incoming"), t.path().join("out"));
    train_identifier(&id_path);
    // Arrivals: band images, some under the wrong class, a corrupt PNG, a
    // class the identifier does not know, and a file name with a backslash.
    let mut rng = Rng::new(77);
    let mut scored: Vec<(String, PathBuf, usize)> = Vec::new(); // (routed path, file, label)
    for (label, class) in CLASSES.iter().enumerate() {
        std::fs::create_dir_all(incoming.join(class)).unwrap();
        for (k, rows) in bands().into_iter().enumerate() {
            for i in 0..2 {
                let name = format!("from{k}_{i}.png");
                let file = incoming.join(class).join(&name);
                std::fs::write(&file, h2e::data::encode_png(&band(rows.clone(), &mut rng))).unwrap();
                scored.push((format!("{class}/{name}"), file, label));
            }
        }
    }
    let odd = incoming.join("top").join("odd\\name.png");
    std::fs::write(&odd, common::png(8, 8, 1, 3)).unwrap();
    scored.push(("top/odd_name.png".into(), odd, 0));
    std::fs::write(incoming.join("middle/corrupt.png"), b"\x89PNG\r\n\x1a\n not really").unwrap();
    common::folder(&incoming, &[("sideways", 2)]);
    std::fs::write(incoming.join(".hidden.png"), b"skipped").unwrap();
    let always_quarantined = ["middle/corrupt.png", "sideways/000.png", "sideways/001.png"];
    let inputs = scored.len() + always_quarantined.len();

    // The test's own scores, with the library, pick a threshold that splits them.
    let id = Identifier::open(&id_path, Device::flex()).unwrap();
    let mut scores: Vec<(f32, &str)> = scored.iter().map(|(rel, f, l)| (noise(&id, f, *l), rel.as_str())).collect();
    scores.sort_by(|a, b| a.0.total_cmp(&b.0));
    let cut = (1..scores.len())
        .max_by(|&a, &b| (scores[a].0 - scores[a - 1].0).total_cmp(&(scores[b].0 - scores[b - 1].0)))
        .unwrap();
    assert!(scores[cut].0 - scores[cut - 1].0 > 1e-3, "the identifier gives all images the same score: {scores:?}");
    let threshold = (scores[cut].0 + scores[cut - 1].0) / 2.0;

    let check = |threshold: f32, expect_quarantined: &dyn Fn(&str) -> bool| {
        let stdout = ingest(&[&id_path, &incoming, &out], &["--threshold", &threshold.to_string()]);
        assert!(stdout.contains(&format!("ingest: {inputs} images")), "{stdout}");
        let m = routed(&out);
        assert_eq!(m.len(), inputs, "one file per input, nothing else: {m:?}");
        let mut quarantined = 0;
        for rel in scored.iter().map(|s| s.0.as_str()).chain(always_quarantined) {
            let sides = m.get(rel).unwrap_or_else(|| panic!("{rel} was not routed: {m:?}"));
            let want =
                if always_quarantined.contains(&rel) || expect_quarantined(rel) { "quarantine" } else { "clean" };
            assert_eq!(sides, &vec![want], "{rel} at threshold {threshold}");
            quarantined += (want == "quarantine") as usize;
        }
        assert!(stdout.contains(&format!("{quarantined} quarantined")), "{stdout}");
        let log = std::fs::read_to_string(out.join("ingest.csv")).unwrap();
        assert_eq!(log.lines().count(), 1 + inputs);
        assert!(log.contains("unreadable") && log.contains("unknown class sideways"), "{log}");
    };
    // Both sides of the split are non-empty, so routing follows the scores.
    let above: Vec<&str> = scores[cut..].iter().map(|s| s.1).collect();
    assert!(!above.is_empty() && above.len() < scores.len());
    check(threshold, &|rel| above.contains(&rel));
    // A stricter re-run into the same folder moves everything scored to
    // quarantine and leaves no stale clean copy.
    check(0.0, &|_| true);
    // Without --threshold: the identifier's rule one image at a time
    // (agreement for agreement-noise-rate) and its score floor. This
    // identifier's report has no per-class estimates (a baseline's), so the
    // floor spares no class.
    let op = id.config().operating_point;
    assert_eq!(op.rule, h2e::score::Rule::AgreementNoiseRate);
    let floor = op.min_score.expect("the default has a floor");
    let by_rule = |rel: &str| {
        let (_, file, l) = scored.iter().find(|s| s.0 == rel).unwrap();
        let s = score(&id, file, *l);
        s.pred != *l && s.plain_pred != *l && s.noise_score >= floor
    };
    let stdout = ingest(&[&id_path, &incoming, &out], &[]);
    let m = routed(&out);
    for (rel, _, _) in &scored {
        let want = if by_rule(rel) { "quarantine" } else { "clean" };
        assert_eq!(m.get(rel.as_str()), Some(&vec![want]), "{rel} by the identifier's rule");
    }
    assert!(stdout.contains(&format!("ingest: {inputs} images")), "{stdout}");
    // Nothing was written outside OUT_DIR, and the inputs are untouched.
    let mut top: Vec<String> =
        std::fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    top.sort();
    assert_eq!(top, ["id.zip", "incoming", "out"]);
    assert_eq!(common::files_under(&incoming).len(), inputs + 1);
}
