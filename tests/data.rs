//! Data sources, dataset bundles and their bad-input handling.

mod common;

use common::*;
use h2e::bundle::{self, BundleSource, PackOptions};
use h2e::data::{decode_image, load_split, open_source, DecodeLimits, ImageFolder, Source, Split};
use h2e::error::Error;
use std::io::Write;

fn pack_folder(dir: &std::path::Path, out: &std::path::Path) -> h2e::Result<bundle::PackSummary> {
    let src = ImageFolder::open(dir)?;
    bundle::pack(&src, out, &PackOptions::default(), &mut |_, _| {})
}

#[test]
fn image_folder_orders_classes_and_files_deterministically() {
    let t = tempfile::tempdir().unwrap();
    folder(t.path(), &[("zebra", 2), ("apple", 3), ("Mango", 1)]);
    std::fs::write(t.path().join("apple/notes.txt"), "not an image").unwrap();
    let src = ImageFolder::open(t.path()).unwrap();
    assert_eq!(src.classes(), ["Mango", "apple", "zebra"]);
    let paths: Vec<_> = src.samples().iter().map(|s| (s.path.as_str(), s.label)).collect();
    assert_eq!(paths[0], ("Mango/000.png", 0));
    assert_eq!(paths[1..4], [("apple/000.png", 1), ("apple/001.png", 1), ("apple/002.png", 1)]);
    assert_eq!(src.samples().len(), 6, "the .txt file is skipped");
    // Grayscale and RGB both decode; mixed sizes are kept as they are.
    let a = src.load(1).unwrap();
    let b = src.load(2).unwrap();
    assert_eq!((a.width, a.height, a.channels), (8, 8, 1));
    assert_eq!((b.width, b.height, b.channels), (10, 6, 3));
    // ...and resized to one shape when loaded for training.
    let set = load_split(&src, Split::Train, 1, 12, 12, &mut |_, _| {}).unwrap();
    assert_eq!(set.len(), 6);
    assert_eq!(set.pixels.len(), 6 * 144);
    assert_eq!(set.class_counts(), vec![1, 3, 2]);
}

#[test]
fn empty_class_folder_is_an_error_naming_it() {
    let t = tempfile::tempdir().unwrap();
    folder(t.path(), &[("a", 2)]);
    std::fs::create_dir(t.path().join("empty")).unwrap();
    let err = ImageFolder::open(t.path()).unwrap_err().to_string();
    assert!(err.contains("empty") && err.contains("no images"), "{err}");
}

#[test]
fn a_missing_data_source_is_named_with_what_is_wrong() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("no-such-set");
    let err = match open_source(&path) {
        Ok(_) => panic!("a missing path opened"),
        Err(e) => e.to_string(),
    };
    assert_eq!(err, format!("{}: no such file or folder", path.display()));
}

#[test]
fn unsupported_format_is_an_error_naming_the_file() {
    let t = tempfile::tempdir().unwrap();
    folder(t.path(), &[("a", 1)]);
    std::fs::write(t.path().join("a/photo.avif"), b"....").unwrap();
    let err = ImageFolder::open(t.path()).unwrap_err().to_string();
    assert!(err.contains("photo.avif") && err.contains("unsupported image format"), "{err}");
}

#[test]
fn corrupt_and_truncated_images_fail_pack_naming_the_file_and_leave_nothing() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    folder(&data, &[("a", 2), ("b", 2)]);
    let good = png(8, 8, 1, 1);
    std::fs::write(data.join("b/zz_truncated.png"), &good[..good.len() / 2]).unwrap();
    let out_dir = t.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("x.zip");
    let err = pack_folder(&data, &out).unwrap_err().to_string();
    assert!(err.contains("zz_truncated.png"), "{err}");
    assert!(files_under(&out_dir).is_empty(), "no partial bundle or temp file left");

    // With skip_bad the bad file is reported and the rest packed.
    let src = ImageFolder::open(&data).unwrap();
    let s = bundle::pack(&src, &out, &PackOptions { skip_bad: true, ..Default::default() }, &mut |_, _| {}).unwrap();
    assert_eq!(s.written, 4);
    assert_eq!(s.skipped.len(), 1);
    assert!(s.skipped[0].contains("zz_truncated.png"));

    // Garbage bytes with an image extension: a decode error naming the file.
    std::fs::write(data.join("a/garbage.png"), b"this is not a png").unwrap();
    let err = pack_folder(&data, &out_dir.join("y.zip")).unwrap_err().to_string();
    assert!(err.contains("garbage.png") && err.contains("decode"), "{err}");
}

#[test]
fn decoded_pixel_cap_is_enforced() {
    let err = decode_image(&png(28, 28, 1, 0), "big.png", &DecodeLimits { max_pixels: 100 }).unwrap_err();
    assert!(matches!(err, Error::TooManyPixels { width: 28, height: 28, .. }), "{err}");
    // A PNG whose header claims 100000 x 100000 pixels is refused before decoding.
    let mut bytes = png(4, 4, 1, 0);
    bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    let err = decode_image(&bytes, "bomb.png", &DecodeLimits::default()).unwrap_err().to_string();
    assert!(err.contains("bomb.png") && err.contains("exceeds the limit"), "{err}");
}

#[test]
fn bundle_round_trip_is_deterministic_and_unzips_to_an_image_folder() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    folder(&data, &[("cat", 3), ("dog/puppy", 0), ("dog", 2)]);
    std::fs::remove_dir(data.join("dog/puppy")).unwrap();
    let a = t.path().join("a.zip");
    let b = t.path().join("b.zip");
    pack_folder(&data, &a).unwrap();
    pack_folder(&data, &b).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "packing is byte-reproducible");

    let folder_src = ImageFolder::open(&data).unwrap();
    let bundle = BundleSource::open(&a).unwrap();
    assert_eq!(bundle.classes(), folder_src.classes());
    assert_eq!(bundle.samples().len(), 5);
    for i in 0..5 {
        assert_eq!(bundle.load(i).unwrap(), folder_src.load(i).unwrap());
        assert_eq!(bundle.samples()[i].label, folder_src.samples()[i].label);
    }
    // Images are stored, not re-compressed.
    let mut z = zip::ZipArchive::new(std::fs::File::open(&a).unwrap()).unwrap();
    let m = z.by_name("train/cat/000.png").unwrap();
    assert_eq!(m.compression(), zip::CompressionMethod::Stored);
    drop(m);

    let report = bundle::verify(&a, &mut |_, _| {}).unwrap();
    assert_eq!(report.checked, 5);
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    let out = t.path().join("unpacked");
    assert_eq!(bundle::unpack(&a, &out).unwrap(), 6);
    let again = ImageFolder::open(&out).unwrap();
    assert_eq!(again.classes(), bundle.classes());
    assert_eq!(again.samples().len(), 5);
    assert!(again.samples().iter().all(|s| s.split == Split::Train));
    // Unpacking onto a non-empty folder is refused.
    let err = bundle::unpack(&a, &out).unwrap_err().to_string();
    assert!(err.contains("not an empty folder"), "{err}");
}

#[test]
fn inspect_counts_noisy_samples_from_ground_truth() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("x.zip");
    let mut w = bundle::BundleWriter::create(&p, vec!["a".into(), "b".into()]).unwrap();
    let img = png(4, 4, 1, 0);
    w.add(Split::Train, 0, Some(0), "1.png", &img).unwrap();
    w.add(Split::Train, 0, Some(1), "2.png", &img).unwrap();
    w.add(Split::Train, 1, Some(1), "3.png", &img).unwrap();
    w.add(Split::Test, 1, Some(1), "4.png", &img).unwrap();
    w.finish(None).unwrap();
    let r = bundle::inspect(&BundleSource::open(&p).unwrap());
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["splits"]["train"]["total"], 3);
    assert_eq!(json["splits"]["train"]["per_class"][0], serde_json::json!({"class": "a", "count": 2, "noisy": 1}));
    assert_eq!(json["splits"]["test"]["per_class"][1]["count"], 1);
}

fn open_bytes(bytes: Vec<u8>) -> Result<BundleSource, Error> {
    BundleSource::from_bytes("evil.zip", bytes)
}

#[test]
fn unsafe_member_names_are_refused_and_unpack_writes_nothing_outside() {
    let img = png(4, 4, 1, 0);
    for name in ["../escape.png", "train/../../escape.png", "/etc/escape.png", "C:/escape.png", "train\\..\\escape.png"]
    {
        let m = manifest(&["a"], &[]);
        let z = raw_zip(&[("manifest.json", m.as_bytes()), (name, &img)]);
        let err = open_bytes(z.clone()).unwrap_err();
        assert!(matches!(err, Error::UnsafeMember { .. }), "{name}: {err}");
        assert!(err.to_string().contains("unsafe path"), "{err}");
        // Through the file path and unpack too: nothing lands anywhere.
        let t = tempfile::tempdir().unwrap();
        let zp = t.path().join("evil.zip");
        std::fs::write(&zp, &z).unwrap();
        let inner = t.path().join("deep/er");
        std::fs::create_dir_all(&inner).unwrap();
        let err = bundle::unpack(&zp, &inner.join("out")).unwrap_err().to_string();
        assert!(err.contains("evil.zip"), "{err}");
        let all = files_under(t.path());
        assert_eq!(all, vec![zp.clone()], "only the zip itself exists");
    }
}

#[test]
fn duplicate_members_are_refused() {
    let img = png(4, 4, 1, 0);
    let m = manifest(&["a"], &[("train/a/x.png", 0)]);
    let z = raw_zip(&[("manifest.json", m.as_bytes()), ("train/a/x.png", &img), ("train/a/x.png", &img)]);
    let err = open_bytes(z).unwrap_err().to_string();
    assert!(err.contains("evil.zip") && err.to_lowercase().contains("duplicate"), "{err}");
}

#[test]
fn zip_bomb_member_is_refused_with_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("bomb.zip");
    let mut w = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated).large_file(true);
    w.start_file("manifest.json", opts).unwrap();
    w.write_all(manifest(&["a"], &[("train/a/bomb.png", 0)]).as_bytes()).unwrap();
    w.start_file("train/a/bomb.png", opts).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..65 {
        w.write_all(&zeros).unwrap();
    }
    w.finish().unwrap();
    assert!(std::fs::metadata(&p).unwrap().len() < 1 << 20, "compresses small");
    let src = BundleSource::open(&p).unwrap();
    let err = src.load(0).unwrap_err();
    assert!(matches!(err, Error::MemberTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("bomb.png") && err.to_string().contains("zip bomb"));
}

#[test]
fn manifest_problems_are_reported_naming_the_bundle() {
    let img = png(4, 4, 1, 0);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (raw_zip(&[("train/a/x.png", &img)]), "manifest.json is missing"),
        (raw_zip(&[("manifest.json", b"{not json")]), "not JSON"),
        (raw_zip(&[("manifest.json", br#"{"format": "something-else", "version": 1}"#)]), "expected \"h2e-dataset\""),
        (
            raw_zip(&[("manifest.json", manifest(&["a"], &[]).replace("\"version\": 1", "\"version\": 7").as_bytes())]),
            "version 7 is newer",
        ),
        (
            raw_zip(&[
                ("manifest.json", manifest(&["a", "b"], &[("train/a/x.png", 2)]).as_bytes()),
                ("train/a/x.png", &img),
            ]),
            "label 2 but there are 2 classes",
        ),
        (raw_zip(&[("manifest.json", manifest(&["a"], &[("train/a/missing.png", 0)]).as_bytes())]), "no such member"),
        (
            raw_zip(&[("manifest.json", manifest(&["a"], &[]).replace("\"samples\"", "\"sample\"").as_bytes())]),
            "unknown field",
        ),
    ];
    for (zip, want) in cases {
        let err = open_bytes(zip).unwrap_err().to_string();
        assert!(err.contains("evil.zip"), "{err}");
        assert!(err.contains(want), "expected {want:?} in {err}");
    }
    let err = open_bytes(b"PK not a zip at all".to_vec()).unwrap_err().to_string();
    assert!(err.contains("evil.zip") && err.contains("not a zip archive"), "{err}");
    assert!(!err.to_lowercase().contains("invalid zip archive: invalid zip archive"), "{err}");
}

#[test]
fn verify_reports_checksum_mismatch_and_undecodable_members() {
    let t = tempfile::tempdir().unwrap();
    let good = png(4, 4, 1, 0);
    let other = png(4, 4, 1, 1);
    let sha = {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(&good))
    };
    let m = format!(
        r#"{{"format": "h2e-dataset", "version": 1, "classes": ["a"], "samples": [
        {{"path": "train/a/1.png", "label": 0, "split": "train", "sha256": "{sha}"}},
        {{"path": "train/a/2.png", "label": 0, "split": "train"}}]}}"#
    );
    let z = raw_zip(&[("manifest.json", m.as_bytes()), ("train/a/1.png", &other), ("train/a/2.png", b"garbage")]);
    let p = t.path().join("v.zip");
    std::fs::write(&p, z).unwrap();
    let r = bundle::verify(&p, &mut |_, _| {}).unwrap();
    assert_eq!(r.checked, 2);
    assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
    assert!(r.problems[0].contains("sha256 mismatch"));
    assert!(r.problems[1].contains("2.png"));
}

#[test]
fn split_layout_folder_and_open_source_dispatch() {
    let t = tempfile::tempdir().unwrap();
    folder(&t.path().join("train"), &[("a", 2), ("b", 1)]);
    folder(&t.path().join("test"), &[("a", 1), ("b", 1)]);
    let src = open_source(t.path()).unwrap();
    let splits: Vec<_> = src.samples().iter().map(|s| s.split).collect();
    assert_eq!(splits.iter().filter(|&&s| s == Split::Train).count(), 3);
    assert_eq!(splits.iter().filter(|&&s| s == Split::Test).count(), 2);
    let err = open_source(&t.path().join("nope")).err().unwrap().to_string();
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn idx_files_raw_and_gzipped() {
    let t = tempfile::tempdir().unwrap();
    let images: Vec<u8> = [0u8, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3].iter().copied().chain(0..12u8).collect();
    let labels: Vec<u8> = vec![0, 0, 8, 1, 0, 0, 0, 2, 1, 0];
    std::fs::write(t.path().join("train-images-idx3-ubyte"), &images).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&labels).unwrap();
    std::fs::write(t.path().join("train-labels-idx1-ubyte.gz"), gz.finish().unwrap()).unwrap();
    let src = open_source(t.path()).unwrap();
    assert_eq!(src.classes(), ["0", "1"]);
    assert_eq!(src.samples()[0].label, 1);
    let img = src.load(1).unwrap();
    assert_eq!((img.width, img.height), (3, 2));
    assert_eq!(img.pixels, (6..12).collect::<Vec<u8>>());
    // A truncated image file names the file.
    std::fs::write(t.path().join("train-images-idx3-ubyte"), &images[..20]).unwrap();
    let err = open_source(t.path()).err().unwrap().to_string();
    assert!(err.contains("train-images-idx3-ubyte") && err.contains("data bytes"), "{err}");
}

#[test]
fn embedded_default_bundle_opens() {
    let src = h2e::embedded::default_source().unwrap();
    assert_eq!(src.classes().len(), 10);
    let r = bundle::inspect(&src);
    let counts: Vec<usize> = r.splits["train"].per_class.iter().map(|c| c.count).collect();
    assert_eq!(counts, h2e::nlt::lt_counts(1000, 10, 100.0));
    assert_eq!(r.splits["test"].total, 1000);
    let img = src.load(0).unwrap();
    assert_eq!((img.width, img.height, img.channels), (28, 28, 1));
}
