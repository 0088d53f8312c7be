//! Fixtures shared by the integration tests: tiny images, folders and
//! hand-built zips (so malformed archives can be made on purpose).
#![allow(dead_code)]

use h2e::data::{encode_png, Image};
use h2e::rng::Rng;
use std::path::Path;

/// A deterministic random image.
pub fn image(w: u32, h: u32, channels: u8, seed: u64) -> Image {
    let mut r = Rng::new(seed);
    let pixels = (0..w * h * channels as u32).map(|_| r.below(256) as u8).collect();
    Image { width: w, height: h, channels, pixels }
}

pub fn png(w: u32, h: u32, channels: u8, seed: u64) -> Vec<u8> {
    encode_png(&image(w, h, channels, seed))
}

/// Writes `root/<class>/<i>.png` for each (class, count).
pub fn folder(root: &Path, classes: &[(&str, usize)]) {
    for (ci, (name, n)) in classes.iter().enumerate() {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..*n {
            let (w, h, c) = if i % 2 == 0 { (8, 8, 1) } else { (10, 6, 3) };
            std::fs::write(d.join(format!("{i:03}.png")), png(w, h, c, (ci * 100 + i) as u64)).unwrap();
        }
    }
}

/// Every member of the zip at `path`, in order, as (name, bytes): a bundle
/// to edit by hand and write back with [`raw_zip`].
pub fn zip_members(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    (0..zip.len())
        .map(|i| {
            let mut f = zip.by_index(i).unwrap();
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut v).unwrap();
            (f.name().to_string(), v)
        })
        .collect()
}

/// A zip with the given (name, bytes) members, all stored, built by hand so
/// that names the `zip` crate would refuse (duplicates, `..`) can be written.
pub fn raw_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let crc = crc.sum();
        let offset = out.len() as u32;
        let header = |sig: u32, central: bool| {
            let mut h = Vec::new();
            h.extend_from_slice(&sig.to_le_bytes());
            if central {
                h.extend_from_slice(&20u16.to_le_bytes());
            }
            h.extend_from_slice(&20u16.to_le_bytes()); // version needed
            h.extend_from_slice(&0u16.to_le_bytes()); // flags
            h.extend_from_slice(&0u16.to_le_bytes()); // stored
            h.extend_from_slice(&0u16.to_le_bytes()); // time
            h.extend_from_slice(&0x21u16.to_le_bytes()); // date 1980-01-01
            h.extend_from_slice(&crc.to_le_bytes());
            h.extend_from_slice(&(data.len() as u32).to_le_bytes());
            h.extend_from_slice(&(data.len() as u32).to_le_bytes());
            h.extend_from_slice(&(name.len() as u16).to_le_bytes());
            h.extend_from_slice(&0u16.to_le_bytes()); // extra
            if central {
                h.extend_from_slice(&0u16.to_le_bytes()); // comment
                h.extend_from_slice(&0u16.to_le_bytes()); // disk
                h.extend_from_slice(&0u16.to_le_bytes()); // internal attrs
                h.extend_from_slice(&0u32.to_le_bytes()); // external attrs
                h.extend_from_slice(&offset.to_le_bytes());
            }
            h.extend_from_slice(name.as_bytes());
            h
        };
        out.extend(header(0x04034b50, false));
        out.extend_from_slice(data);
        central.extend(header(0x02014b50, true));
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x06054b50u32.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// A valid manifest JSON for `samples` of (path, label).
pub fn manifest(classes: &[&str], samples: &[(&str, usize)]) -> String {
    let s: Vec<String> =
        samples.iter().map(|(p, l)| format!(r#"{{"path": "{p}", "label": {l}, "split": "train"}}"#)).collect();
    let c: Vec<String> = classes.iter().map(|c| format!("\"{c}\"")).collect();
    format!(r#"{{"format": "h2e-dataset", "version": 1, "classes": [{}], "samples": [{}]}}"#, c.join(","), s.join(","))
}

/// Files (recursively) under `dir`.
pub fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Three classes ("top", "middle", "bottom") of 8x8 grayscale images with a
/// bright band at the top, middle or bottom plus pixel noise, `per_class`
/// of each, clean labels.
pub fn bands(seed: u64, per_class: usize) -> h2e::data::TensorSet {
    let mut rng = Rng::new(seed);
    let classes = ["top", "middle", "bottom"].iter().map(|s| s.to_string()).collect();
    let mut set = h2e::data::TensorSet::empty(classes, 1, 8, 8);
    for (label, band) in [0..3, 3..5, 5..8].into_iter().enumerate() {
        for i in 0..per_class {
            let pixels =
                (0..64).map(|p| (if band.contains(&(p / 8)) { 200 } else { 30 } + rng.below(40)) as u8).collect();
            set.push(&Image { width: 8, height: 8, channels: 1, pixels }, label, None, format!("{label}/{i}.png"));
        }
    }
    set
}
