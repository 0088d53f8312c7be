//! A split decoded into memory at a fixed size, ready for training.

use super::{resize, Image, Source, Split};
use crate::error::{Error, Result};

/// Images of one split at a fixed size, HWC `u8`, with their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSet {
    /// Class names (label = index).
    pub classes: Vec<String>,
    /// Channels per image (1 or 3).
    pub channels: usize,
    /// Height of every image.
    pub height: usize,
    /// Width of every image.
    pub width: usize,
    /// `len() * height * width * channels` bytes, sample after sample, HWC.
    pub pixels: Vec<u8>,
    /// Given labels.
    pub labels: Vec<usize>,
    /// Ground truth, when every sample has one.
    pub true_labels: Option<Vec<usize>>,
    /// Source path of each sample.
    pub paths: Vec<String>,
}

impl TensorSet {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image.
    pub fn image_len(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// The HWC bytes of sample `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Number of samples per given label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &l in &self.labels {
            counts[l] += 1;
        }
        counts
    }

    /// Ground-truth noise mask (`label != true_label`), when known.
    pub fn noise_mask(&self) -> Option<Vec<bool>> {
        self.true_labels.as_ref().map(|t| t.iter().zip(&self.labels).map(|(t, l)| t != l).collect())
    }

    /// The samples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> TensorSet {
        let n = self.image_len();
        let mut pixels = Vec::with_capacity(indices.len() * n);
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        TensorSet {
            classes: self.classes.clone(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            pixels,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            true_labels: self.true_labels.as_ref().map(|t| indices.iter().map(|&i| t[i]).collect()),
            paths: indices.iter().map(|&i| self.paths[i].clone()).collect(),
        }
    }

    /// Appends one image (converted and resized to this set's shape).
    pub fn push(&mut self, img: &Image, label: usize, true_label: Option<usize>, path: String) {
        let img = resize(img, self.channels as u8, self.width as u32, self.height as u32);
        self.pixels.extend_from_slice(&img.pixels);
        self.labels.push(label);
        match (&mut self.true_labels, true_label) {
            (Some(t), Some(l)) => t.push(l),
            (t, _) => *t = None,
        }
        self.paths.push(path);
    }

    /// An empty set of the given shape.
    pub fn empty(classes: Vec<String>, channels: usize, height: usize, width: usize) -> TensorSet {
        TensorSet {
            classes,
            channels,
            height,
            width,
            pixels: Vec::new(),
            labels: Vec::new(),
            true_labels: Some(Vec::new()),
            paths: Vec::new(),
        }
    }
}

/// Decodes every sample of `split` from `source`, converted to `channels`
/// and resized to `height x width`. `on_progress(done, total)` is called as
/// samples are decoded.
pub fn load_split(
    source: &dyn Source,
    split: Split,
    channels: usize,
    height: usize,
    width: usize,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<TensorSet> {
    let indices: Vec<usize> =
        source.samples().iter().enumerate().filter(|(_, s)| s.split == split).map(|(i, _)| i).collect();
    let mut set = TensorSet::empty(source.classes().to_vec(), channels, height, width);
    set.pixels.reserve(indices.len() * height * width * channels);
    for (done, &i) in indices.iter().enumerate() {
        let meta = &source.samples()[i];
        let img = source.load(i)?;
        set.push(&img, meta.label, meta.true_label, meta.path.clone());
        on_progress(done + 1, indices.len());
    }
    if set.is_empty() {
        return Err(Error::dataset(source.location(), format!("no {} samples", split.as_str())));
    }
    Ok(set)
}

/// The training split and, when the source has one, the test split,
/// decoded at a square `input_size` (default: the first training image's
/// larger side) with the first training image's channel count.
/// `on_progress(split, done, total)` follows the decoding.
pub fn load_train_test(
    source: &dyn Source,
    input_size: Option<usize>,
    on_progress: &mut dyn FnMut(Split, usize, usize),
) -> Result<(TensorSet, Option<TensorSet>)> {
    let first = source
        .samples()
        .iter()
        .position(|s| s.split == Split::Train)
        .ok_or_else(|| Error::dataset(source.location(), "no training samples"))?;
    let img = source.load(first)?;
    let size = input_size.unwrap_or(img.width.max(img.height) as usize);
    let channels = img.channels as usize;
    let train = load_split(source, Split::Train, channels, size, size, &mut |d, t| on_progress(Split::Train, d, t))?;
    let test = if source.samples().iter().any(|s| s.split == Split::Test) {
        Some(load_split(source, Split::Test, channels, size, size, &mut |d, t| on_progress(Split::Test, d, t))?)
    } else {
        None
    };
    Ok((train, test))
}
