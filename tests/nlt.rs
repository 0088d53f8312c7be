//! `h2e make-nlt` and `h2e bundle` through the binary, on Debian's
//! Fashion-MNIST (installed by .ci/run) and on small synthetic folders.

mod common;

use h2e::bundle::BundleSource;
use h2e::data::{Source, Split};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn h2e(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_h2e")).args(args).output().expect("run h2e")
}

fn ok(args: &[&str]) -> String {
    let o = h2e(args);
    assert!(o.status.success(), "h2e {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn fashion_available() -> bool {
    Path::new(h2e::data::FASHION_MNIST_DIR).join("train-images-idx3-ubyte.gz").exists()
}

#[test]
fn fashion_uniform_benchmark_matches_the_spec_and_is_reproducible() {
    assert!(fashion_available(), "install Debian's dataset-fashion-mnist (the CI script does)");
    let t = tempfile::tempdir().unwrap();
    let x = t.path().join("x.zip");
    let y = t.path().join("y.zip");
    let xs = x.to_str().unwrap();
    let args = [
        "make-nlt",
        "--source",
        "fashion-mnist",
        "--kind",
        "uniform",
        "--imbalance",
        "100",
        "--noise",
        "0.3",
        "--seed",
        "0",
    ];
    ok(&[&args[..], &["-o", xs]].concat());
    ok(&[&args[..], &["-o", y.to_str().unwrap()]].concat());
    assert_eq!(std::fs::read(&x).unwrap(), std::fs::read(&y).unwrap(), "two runs give identical bytes");

    let json: Value = serde_json::from_str(&ok(&["bundle", "inspect", xs, "--json"])).unwrap();
    let per_class = json["splits"]["train"]["per_class"].as_array().unwrap();
    let counts: Vec<u64> = per_class.iter().map(|c| c["count"].as_u64().unwrap()).collect();
    assert_eq!(counts, [6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]);
    for c in per_class {
        let n = c["count"].as_u64().unwrap();
        assert_eq!(c["noisy"].as_u64().unwrap(), (n as f64 * 0.3).floor() as u64, "{c}");
    }
    assert_eq!(json["splits"]["test"]["total"], 10000);
    assert_eq!(json["classes"][0], "T-shirt/top");

    // Noisy samples really are images of other classes, each used once.
    let b = BundleSource::open(&x).unwrap();
    let mut seen = std::collections::HashSet::new();
    for s in b.samples().iter().filter(|s| s.split == Split::Train) {
        let name = s.path.rsplit('/').next().unwrap().to_string();
        assert!(seen.insert(name), "image used twice: {}", s.path);
    }
    // A different seed gives a different draw.
    let z = t.path().join("z.zip");
    ok(&[&args[..9], &["--seed", "1", "-o", z.to_str().unwrap()]].concat());
    assert_ne!(std::fs::read(&x).unwrap(), std::fs::read(&z).unwrap());
    let v = ok(&["bundle", "verify", xs]);
    assert!(v.contains("OK"), "{v}");
}

fn synthetic_source(root: &Path) {
    // 4 classes x 40 images, 6x6 grayscale, split layout with a test split.
    common::folder(&root.join("train"), &[("c0", 40), ("c1", 40), ("c2", 40), ("c3", 40)]);
    common::folder(&root.join("test"), &[("c0", 5), ("c1", 5), ("c2", 5), ("c3", 5)]);
}

fn noisy_counts(bundle: &Path) -> (Vec<usize>, Vec<usize>, Vec<(usize, usize)>) {
    let b = BundleSource::open(bundle).unwrap();
    let mut counts = vec![0; 4];
    let mut noisy = vec![0; 4];
    let mut flips = Vec::new();
    for s in b.samples().iter().filter(|s| s.split == Split::Train) {
        counts[s.label] += 1;
        let t = s.true_label.unwrap();
        if t != s.label {
            noisy[s.label] += 1;
            flips.push((t, s.label));
        }
    }
    (counts, noisy, flips)
}

#[test]
fn noise_kinds_on_a_folder_source() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    synthetic_source(&data);
    let src = data.to_str().unwrap();
    let run = |kind: &str, extra: &[&str]| {
        let out = t.path().join(format!("{kind}.zip"));
        let base = [
            "make-nlt",
            "--source",
            src,
            "--kind",
            kind,
            "--imbalance",
            "8",
            "--noise",
            "0.25",
            "--seed",
            "3",
            "--n-max",
            "40",
        ];
        ok(&[&base[..], extra, &["-o", out.to_str().unwrap()]].concat());
        out
    };
    // counts floor(40 * 8^(-c/3)) = 40, 20, 10, 5
    let (counts, noisy, _) = noisy_counts(&run("uniform", &[]));
    assert_eq!(counts, [40, 20, 10, 5]);
    assert_eq!(noisy, [10, 5, 2, 1]);

    let (counts, noisy, flips) = noisy_counts(&run("sym", &[]));
    let n: usize = counts.iter().sum();
    assert_eq!(n, 75);
    assert_eq!(noisy.iter().sum::<usize>(), (0.25f64 * 75.0).round() as usize);
    assert!(flips.iter().all(|(t, l)| t != l));

    let (_, noisy, flips) = noisy_counts(&run("imb", &[]));
    assert_eq!(noisy.iter().sum::<usize>(), 19);
    // Relabelled ∝ class size: the head class receives the most.
    let to_head = flips.iter().filter(|f| f.1 == 0).count();
    let to_tail = flips.iter().filter(|f| f.1 == 3).count();
    assert!(to_head > to_tail, "{flips:?}");

    let (_, _, flips) = noisy_counts(&run("pair", &["--pair-map", "1,0,3,2"]));
    assert!(!flips.is_empty());
    assert!(flips.iter().all(|&(t, l)| l == [1, 0, 3, 2][t]), "{flips:?}");

    // Test split: clean, every test image.
    let b = BundleSource::open(&t.path().join("pair.zip")).unwrap();
    let test: Vec<_> = b.samples().iter().filter(|s| s.split == Split::Test).collect();
    assert_eq!(test.len(), 20);
    assert!(test.iter().all(|s| s.true_label == Some(s.label)));
}

#[test]
fn bad_arguments_and_missing_sources_are_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("o.zip");
    let o = h2e(&["make-nlt", "--source", "/no/such/dir", "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/no/such/dir"), "{err}");
    let data = t.path().join("data");
    synthetic_source(&data);
    let o = h2e(&["make-nlt", "--source", data.to_str().unwrap(), "--noise", "1.5", "-o", out.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--noise must be in [0, 1)"));
    // Asking for more images than a class has.
    let o = h2e(&["make-nlt", "--source", data.to_str().unwrap(), "--n-max", "1000", "-o", out.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("training images"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!out.exists(), "no output on failure");
    assert_eq!(common::files_under(t.path()).iter().filter(|p| p.extension().is_some_and(|e| e == "tmp")).count(), 0);
}

#[test]
fn cli_pack_inspect_verify_unpack() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    common::folder(&data, &[("a", 3), ("b", 2)]);
    let z = t.path().join("d.zip");
    ok(&["bundle", "pack", data.to_str().unwrap(), "-o", z.to_str().unwrap()]);
    let text = ok(&["bundle", "inspect", z.to_str().unwrap()]);
    assert!(text.contains("train: 5 samples"), "{text}");
    assert!(ok(&["bundle", "verify", z.to_str().unwrap()]).contains("OK (5 samples)"));
    let out = t.path().join("u");
    ok(&["bundle", "unpack", z.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(out.join("train/a/000.png").exists() && out.join("manifest.json").exists());
    // verify exits 3 when a member is corrupt.
    let bytes = std::fs::read(&z).unwrap();
    let m = b"train/b/001.png";
    let pos = bytes.windows(m.len()).position(|w| w == m).unwrap() + m.len();
    let mut bad = bytes.clone();
    for b in &mut bad[pos + 20..pos + 40] {
        *b ^= 0xff;
    }
    let zb = t.path().join("bad.zip");
    std::fs::write(&zb, bad).unwrap();
    let o = h2e(&["bundle", "verify", zb.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
}
