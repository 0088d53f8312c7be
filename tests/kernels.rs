//! The WGSL kernels against their references on fresh random inputs (wgpu
//! backend: software Vulkan in CI, tiny sizes), the plain paths on the CPU
//! `flex` backend, and the preprocessing conventions themselves.

use burn::tensor::{Device, DeviceType, Int, Tensor, TensorData};
use h2e::kernels::{self, PackedBatch, PreprocessParams, SampleAug};
use h2e::rng::Rng;
use h2e::score::{per_sample, SampleScore};

/// The first wgpu device, or `None` (with the reason printed) when this
/// machine has no wgpu adapter at all.
fn wgpu() -> Option<Device> {
    let found = std::panic::catch_unwind(|| Device::enumerate(DeviceType::Wgpu).into_iter().next());
    match found {
        Ok(Some(d)) => Some(d),
        Ok(None) => {
            eprintln!("no wgpu adapter on this machine (install Mesa's lavapipe for software Vulkan); skipping");
            None
        }
        Err(_) => {
            eprintln!("wgpu adapter enumeration failed; skipping");
            None
        }
    }
}

fn values(t: Tensor<4>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn random_image(rng: &mut Rng, w: u32, h: u32, c: usize) -> Vec<u8> {
    (0..w as usize * h as usize * c).map(|_| rng.below(256) as u8).collect()
}

/// A batch of `n` random images of random sizes in `1..=max` (or all `fixed`).
fn random_batch(rng: &mut Rng, n: usize, c: usize, max: u32, fixed: Option<(u32, u32)>) -> PackedBatch {
    let mut b = PackedBatch::new(c).unwrap();
    for _ in 0..n {
        let (w, h) = fixed.unwrap_or_else(|| (1 + rng.below(max as usize) as u32, 1 + rng.below(max as usize) as u32));
        let img = random_image(rng, w, h, c);
        b.push(w, h, &img).unwrap();
    }
    b
}

fn augmented(h: u32, w: u32, seed: u64) -> PreprocessParams {
    PreprocessParams {
        pad: 2,
        flip: true,
        brightness: 0.3,
        contrast: 0.4,
        seed,
        mean: [0.49, 0.48, 0.45],
        std: [0.25, 0.24, 0.26],
        ..PreprocessParams::eval(h, w)
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// One preprocessing case: batch size, channels, largest random source
/// side (0 when every source has the `fixed` size), output size and
/// whether the batch is augmented.
#[derive(Clone, Copy)]
struct Case {
    n: usize,
    c: usize,
    max: u32,
    fixed: Option<(u32, u32)>,
    oh: u32,
    ow: u32,
    aug: bool,
}

#[test]
fn preprocess_kernel_matches_reference_on_wgpu() {
    let Some(device) = wgpu() else { return };
    assert!(kernels::runs_wgsl(&device));
    let mut rng = Rng::new(0x5eed_0001);
    let case = |n, c, max, fixed, (oh, ow), aug| Case { n, c, max, fixed, oh, ow, aug };
    let cases = [
        case(1, 3, 0, Some((8, 8)), (8, 8), false), // batch 1, identity size
        case(1, 1, 0, Some((8, 8)), (8, 8), true),
        case(5, 1, 12, None, (6, 5), true),  // mixed sizes, 150 threads (< one group)
        case(11, 3, 10, None, (7, 9), true), // 693 threads: 3 groups, last one partial
        case(4, 3, 0, Some((6, 10)), (12, 8), true),
    ];
    for (k, &Case { n, c, max, fixed, oh, ow, aug }) in cases.iter().enumerate() {
        let batch = random_batch(&mut rng, n, c, max, fixed);
        let seed = rng.next_u64();
        let params = if aug { augmented(oh, ow, seed) } else { PreprocessParams::eval(oh, ow) };
        let gpu = kernels::preprocess_wgsl(&device, &batch, &params).unwrap().expect("the WGSL kernel ran");
        assert_eq!(gpu.dims(), [n, c, oh as usize, ow as usize]);
        let gpu = values(gpu);
        let cpu = kernels::preprocess_reference(&batch, &params).unwrap();
        assert!(gpu.iter().all(|v| v.is_finite()));
        let d = max_abs_diff(&gpu, &cpu);
        assert!(d < 1e-4, "case {k}: GPU and CPU differ by {d}");
        // The public entry point takes the same path (one more kernel launch on this thread).
        let before = kernels::wgsl_launches();
        let via_api = values(kernels::preprocess(&device, &batch, &params).unwrap());
        assert_eq!(kernels::wgsl_launches(), before + 1, "case {k}: preprocess() did not use the kernel");
        assert!(max_abs_diff(&via_api, &cpu) < 1e-4, "case {k}");
        if aug {
            // The augmentation is really applied (so the agreement above covers the hashed parameters).
            let plain =
                kernels::preprocess_reference(&batch, &PreprocessParams { seed, ..PreprocessParams::eval(oh, ow) })
                    .unwrap();
            assert!(max_abs_diff(&plain, &cpu) > 0.05, "case {k}: augmentation changed nothing");
        }
    }
}

#[test]
fn preprocess_on_an_autodiff_wgpu_device_is_a_constant() {
    let Some(device) = wgpu() else { return };
    let device = device.autodiff();
    let mut rng = Rng::new(3);
    let batch = random_batch(&mut rng, 2, 3, 0, Some((4, 4)));
    let t = kernels::preprocess(&device, &batch, &PreprocessParams::eval(4, 4)).unwrap();
    assert!(t.is_autodiff());
    let cpu = kernels::preprocess_reference(&batch, &PreprocessParams::eval(4, 4)).unwrap();
    assert!(max_abs_diff(&values(t), &cpu) < 1e-4);
}

fn random_scoring(rng: &mut Rng, n: usize, classes: usize) -> (Vec<f32>, Vec<i64>, Vec<f32>, Vec<f32>) {
    let mut logits: Vec<f32> = (0..n * classes).map(|_| (rng.normal() * 4.0) as f32).collect();
    // Extreme rows: huge positive and negative logits must not give NaN.
    for row in 0..n {
        match row % 7 {
            0 => logits[row * classes] = 1e30,
            1 => logits[row * classes + classes - 1] = -1e30,
            2 => logits[row * classes..(row + 1) * classes].iter_mut().for_each(|v| *v = -3e37),
            _ => {}
        }
    }
    let labels = (0..n)
        .map(|i| match i % 11 {
            5 => -1,             // unlabelled
            9 => classes as i64, // out of range: unlabelled too
            _ => rng.below(classes) as i64,
        })
        .collect();
    let tau = (0..classes).map(|_| 2.0 * rng.f32()).collect();
    let log_prior = (0..classes).map(|_| (0.001 + rng.f32()).ln()).collect();
    (logits, labels, tau, log_prior)
}

fn reference(logits: &[f32], labels: &[i64], tau: &[f32], lp: &[f32]) -> Vec<SampleScore> {
    let c = tau.len();
    logits
        .chunks_exact(c)
        .zip(labels)
        .map(|(row, &l)| per_sample(row, (l >= 0 && (l as usize) < c).then_some(l as usize), tau, lp))
        .collect()
}

/// Second-largest gap to the max adjusted logit: predictions may differ on
/// near-ties only (the GPU may fuse the multiply-add).
fn near_tie(row: &[f32], tau: &[f32], lp: &[f32]) -> bool {
    let mut adj: Vec<f32> = row.iter().zip(tau.iter().zip(lp)).map(|(z, (t, l))| z - t * l).collect();
    adj.sort_by(|a, b| b.total_cmp(a));
    adj.len() > 1 && (adj[0] - adj[1]).abs() <= 1e-5 * adj[0].abs().max(1.0)
}

fn compare(got: &[SampleScore], want: &[SampleScore], logits: &[f32], tau: &[f32], lp: &[f32], what: &str) {
    assert_eq!(got.len(), want.len());
    let c = tau.len();
    // The random priors and taus move the argmax on some rows, so a plain
    // prediction copied from the adjusted one cannot pass.
    if c > 2 && got.len() > 30 {
        assert!(want.iter().any(|w| w.pred != w.plain_pred), "{what}: test data never separates the predictions");
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.noise_score.is_finite() && g.max_prob.is_finite() && g.prob_label.is_finite(),
            "{what} row {i}: {g:?}"
        );
        if !near_tie(&logits[i * c..(i + 1) * c], tau, lp) {
            assert_eq!(g.pred, w.pred, "{what} row {i}");
        }
        // The plain prediction compares raw logits only: exact everywhere.
        assert_eq!(g.plain_pred, w.plain_pred, "{what} row {i}: plain prediction");
        for (a, b, name) in [
            (g.noise_score, w.noise_score, "noise"),
            (g.max_prob, w.max_prob, "max_prob"),
            (g.prob_label, w.prob_label, "prob_label"),
        ] {
            assert!((a - b).abs() < 2e-5, "{what} row {i}: {name} {a} vs {b}");
        }
        assert!((0.0..=1.0).contains(&g.noise_score));
    }
}

fn tensors(device: &Device, logits: &[f32], labels: &[i64], classes: usize) -> (Tensor<2>, Tensor<1, Int>) {
    let n = labels.len();
    (
        Tensor::from_data(TensorData::new(logits.to_vec(), [n, classes]), device),
        Tensor::from_data(TensorData::new(labels.to_vec(), [n]), device),
    )
}

#[test]
fn score_kernel_matches_reference_on_wgpu() {
    let Some(device) = wgpu() else { return };
    let mut rng = Rng::new(0x5c04e);
    for &(n, classes) in &[(1, 5), (67, 10), (130, 3), (9, 1)] {
        let (logits, labels, tau, lp) = random_scoring(&mut rng, n, classes);
        let (lt, yt) = tensors(&device, &logits, &labels, classes);
        let out = kernels::score_wgsl(&lt, &yt, &tau, &lp).unwrap().expect("the WGSL kernel ran");
        let got = out.to_samples().unwrap();
        compare(&got, &reference(&logits, &labels, &tau, &lp), &logits, &tau, &lp, &format!("wgpu n={n} c={classes}"));
        // The public entry point, with autodiff logits.
        let ad = device.clone().autodiff();
        let (lt, yt) = tensors(&ad, &logits, &labels, classes);
        let before = kernels::wgsl_launches();
        let got = kernels::score(lt, yt, &tau, &lp).unwrap().to_samples().unwrap();
        assert_eq!(kernels::wgsl_launches(), before + 1, "score() did not use the kernel");
        compare(&got, &reference(&logits, &labels, &tau, &lp), &logits, &tau, &lp, "wgpu autodiff");
    }
}

#[test]
fn score_ties_pick_the_lowest_index_on_wgpu() {
    let Some(device) = wgpu() else { return };
    let logits = vec![2.0, 5.0, 5.0, 1.0, 3.0, 3.0, 3.0, 3.0];
    let (lt, yt) = tensors(&device, &logits, &[2, 0], 4);
    let got = kernels::score_wgsl(&lt, &yt, &[0.0; 4], &[0.0; 4]).unwrap().unwrap().to_samples().unwrap();
    assert_eq!((got[0].pred, got[1].pred), (1, 0));
    assert_eq!((got[0].plain_pred, got[1].plain_pred), (1, 0));
    // A prior that lifts class 3 moves the adjusted prediction, not the plain one.
    let got = kernels::score_wgsl(&lt, &yt, &[1.0; 4], &[0.0, 0.0, 0.0, -10.0]).unwrap().unwrap().to_samples().unwrap();
    assert_eq!((got[0].pred, got[0].plain_pred, got[1].pred, got[1].plain_pred), (3, 1, 3, 0));
    let got = kernels::score_wgsl(&lt, &yt, &[0.0; 4], &[0.0; 4]).unwrap().unwrap().to_samples().unwrap();
    let p_label = 1.0 / ((-3f32).exp() + 2.0 + (-4f32).exp());
    assert!((got[1].max_prob - 0.25).abs() < 1e-6 && (got[0].noise_score - (1.0 - p_label)).abs() < 1e-5, "{got:?}");
}

#[test]
fn fallback_paths_on_flex_match_the_references() {
    let device = Device::flex();
    assert!(!kernels::runs_wgsl(&device));
    let mut rng = Rng::new(11);
    // Preprocess: the CPU path, and no kernel launch on flex.
    let batch = random_batch(&mut rng, 3, 3, 9, None);
    let params = augmented(5, 6, 99);
    assert!(kernels::preprocess_wgsl(&device, &batch, &params).unwrap().is_none());
    let before = kernels::wgsl_launches();
    let t = kernels::preprocess(&device, &batch, &params).unwrap();
    assert_eq!(kernels::wgsl_launches(), before, "no kernel on flex");
    assert_eq!(t.dims(), [3, 3, 5, 6]);
    assert_eq!(values(t), kernels::preprocess_reference(&batch, &params).unwrap());
    // Score: tensor ops against per_sample, ties and unlabelled included.
    for &(n, classes) in &[(1, 4), (40, 7)] {
        let (mut logits, labels, tau, lp) = random_scoring(&mut rng, n, classes);
        let (lt, yt) = tensors(&device, &logits, &labels, classes);
        assert!(kernels::score_wgsl(&lt, &yt, &tau, &lp).unwrap().is_none());
        let got = kernels::score(lt, yt, &tau, &lp).unwrap().to_samples().unwrap();
        compare(&got, &reference(&logits, &labels, &tau, &lp), &logits, &tau, &lp, "flex");
        // Exact ties: equal adjusted logits everywhere, lowest index wins.
        logits.iter_mut().for_each(|v| *v = 1.5);
        let zero = vec![0.0; classes];
        let (lt, yt) = tensors(&device, &logits, &labels, classes);
        let got = kernels::score(lt, yt, &zero, &zero).unwrap().to_samples().unwrap();
        assert!(got
            .iter()
            .all(|s| s.pred == 0 && s.plain_pred == 0 && (s.max_prob - 1.0 / classes as f32).abs() < 1e-6));
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    assert!(PackedBatch::new(2).is_err());
    assert!(PackedBatch::uniform(3, 4, 4, vec![0; 47]).is_err());
    let mut b = PackedBatch::new(1).unwrap();
    assert!(b.push(3, 3, &[0; 8]).is_err());
    assert!(b.push(0, 3, &[]).is_err());
    let device = Device::flex();
    assert!(kernels::preprocess(&device, &b, &PreprocessParams::eval(4, 4)).is_err(), "empty batch");
    b.push(2, 2, &[1, 2, 3, 4]).unwrap();
    assert!(kernels::preprocess(&device, &b, &PreprocessParams::eval(0, 4)).is_err());
    assert!(
        kernels::preprocess(&device, &b, &PreprocessParams { std: [0.0; 3], ..PreprocessParams::eval(4, 4) }).is_err()
    );
    assert!(kernels::preprocess(&device, &b, &PreprocessParams { brightness: 2.0, ..PreprocessParams::eval(4, 4) })
        .is_err());
    let (lt, yt) = tensors(&device, &[0.0; 6], &[0, 1], 3);
    assert!(kernels::score(lt.clone(), yt.clone(), &[1.0; 2], &[0.0; 3]).is_err());
    let (_, y3) = tensors(&device, &[0.0; 9], &[0, 1, 2], 3);
    assert!(kernels::score(lt, y3, &[1.0; 3], &[0.0; 3]).is_err());
    let _ = yt;
}

// The conventions of the reference itself (what the kernel is compared to).

fn gray(w: u32, h: u32, px: &[u8]) -> PackedBatch {
    PackedBatch::uniform(1, h as usize, w as usize, px.to_vec()).unwrap()
}

fn unit_norm(h: u32, w: u32) -> PreprocessParams {
    PreprocessParams { mean: [0.0; 3], std: [1.0; 3], ..PreprocessParams::eval(h, w) }
}

#[test]
fn reference_resize_is_half_pixel_bilinear() {
    // 2 -> 4 columns, PyTorch's align_corners=False: 0, 63.75, 191.25, 255.
    let out = kernels::preprocess_reference(&gray(2, 1, &[0, 255]), &unit_norm(1, 4)).unwrap();
    let want = [0.0, 63.75, 191.25, 255.0].map(|v: f32| v / 255.0);
    assert!(max_abs_diff(&out, &want) < 1e-6, "{out:?}");
    // Same size: identity, and the normalisation is (x/255 - mean)/std.
    let p = PreprocessParams { mean: [0.5; 3], std: [0.25; 3], ..PreprocessParams::eval(2, 2) };
    let out = kernels::preprocess_reference(&gray(2, 2, &[0, 51, 204, 255]), &p).unwrap();
    let want = [0u8, 51, 204, 255].map(|v| (v as f32 / 255.0 - 0.5) / 0.25);
    assert!(max_abs_diff(&out, &want) < 1e-6);
    // 4 -> 2 averages pairs (centres fall between source pixels).
    let out = kernels::preprocess_reference(&gray(4, 1, &[10, 20, 100, 200]), &unit_norm(1, 2)).unwrap();
    assert!(max_abs_diff(&out, &[15.0 / 255.0, 150.0 / 255.0]) < 1e-6);
}

#[test]
fn reference_crop_flip_and_jitter_follow_the_hashed_parameters() {
    let px: Vec<u8> = (1..=16).collect();
    let batch = gray(4, 4, &px);
    // Find seeds giving a flip with no shift, and a shift without flip.
    let p = |seed| PreprocessParams { pad: 1, flip: true, seed, ..unit_norm(4, 4) };
    let flip_seed = (0..1000).find(|&s| {
        let a = p(s).sample(0);
        a.flip && a.dx == 0 && a.dy == 0
    });
    let out = kernels::preprocess_reference(&batch, &p(flip_seed.unwrap())).unwrap();
    let want: Vec<f32> = (0..16).map(|i| px[(i / 4) * 4 + 3 - i % 4] as f32 / 255.0).collect();
    assert!(max_abs_diff(&out, &want) < 1e-6);
    let shift_seed = (0..1000).find(|&s| {
        let a = p(s).sample(0);
        !a.flip && a.dx == 1 && a.dy == -1
    });
    let out = kernels::preprocess_reference(&batch, &p(shift_seed.unwrap())).unwrap();
    // C(y, x) = R(y - 1, x + 1): first row is padding, last column is padding.
    for y in 0..4 {
        for x in 0..4 {
            let want = if y == 0 || x == 3 { 0.0 } else { px[(y - 1) * 4 + x + 1] as f32 / 255.0 };
            assert!((out[y * 4 + x] - want).abs() < 1e-6, "({y},{x})");
        }
    }
    // Jitter: brightness and contrast factors from the hash, clamped to [0, 255].
    let pj = PreprocessParams { brightness: 0.5, contrast: 0.5, seed: 5, ..unit_norm(4, 4) };
    let a = pj.sample(0);
    let out = kernels::preprocess_reference(&batch, &pj).unwrap();
    for (o, &v) in out.iter().zip(&px) {
        let want = (a.gain * v as f32 + a.offset).clamp(0.0, 255.0) / 255.0;
        assert!((o - want).abs() < 1e-6);
    }
    assert!(a.gain != 1.0 && a.offset != 0.0);
}

#[test]
fn batches_gathered_from_a_set_keep_the_sample_order() {
    let mut rng = Rng::new(21);
    let (c, h, w) = (3, 2, 3);
    let pixels: Vec<u8> = (0..4 * c * h * w).map(|_| rng.below(256) as u8).collect();
    let b = PackedBatch::gather(c, h, w, &pixels, &[2, 0]).unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!(&b.data()[..18], &pixels[36..54]);
    assert_eq!(&b.data()[18..], &pixels[..18]);
    assert!(PackedBatch::gather(c, h, w, &pixels, &[4]).is_err(), "index past the end");
}

/// Per-sample parameters drawn the way the training engine's policy does:
/// shifts in [-pad, pad], flips, gain in [1-j, 1+j], bias in [-j, j] (x 255).
fn engine_like_augs(rng: &mut Rng, n: usize, pad: usize, j: f32) -> Vec<SampleAug> {
    (0..n)
        .map(|_| SampleAug {
            dx: rng.below(2 * pad + 1) as i32 - pad as i32,
            dy: rng.below(2 * pad + 1) as i32 - pad as i32,
            flip: rng.next_u64() & 1 == 1,
            gain: 1.0 + j * (2.0 * rng.f32() - 1.0),
            offset: 255.0 * j * (2.0 * rng.f32() - 1.0),
        })
        .collect()
}

#[test]
fn explicit_parameters_follow_the_engine_convention() {
    // Same-size images: out[c][y][x] = (clamp(gain * p / 255 + bias, 0, 1) - mean) / std with
    // p = img[y + dy][(flip ? w - 1 - x : x) + dx][c] (0 outside): the training engine's CPU batch.
    let mut rng = Rng::new(77);
    let (n, c, h, w) = (3, 3, 5, 4);
    let pixels: Vec<u8> = (0..n * c * h * w).map(|_| rng.below(256) as u8).collect();
    let batch = PackedBatch::uniform(c, h, w, pixels.clone()).unwrap();
    let augs = engine_like_augs(&mut rng, n, 2, 0.3);
    let params =
        PreprocessParams { mean: [0.4, 0.5, 0.6], std: [0.2, 0.3, 0.25], ..PreprocessParams::eval(h as u32, w as u32) };
    let out = kernels::preprocess_reference_with(&batch, &params, Some(&augs)).unwrap();
    for (s, a) in augs.iter().enumerate() {
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let sx = if a.flip { w - 1 - x } else { x } as i32 + a.dx;
                    let sy = y as i32 + a.dy;
                    let p = if (0..w as i32).contains(&sx) && (0..h as i32).contains(&sy) {
                        pixels[s * h * w * c + (sy as usize * w + sx as usize) * c + ch] as f32 / 255.0
                    } else {
                        0.0
                    };
                    let v = (a.gain * p + a.offset / 255.0).clamp(0.0, 1.0);
                    let want = (v - params.mean[ch]) / params.std[ch];
                    let got = out[((s * c + ch) * h + y) * w + x];
                    assert!((got - want).abs() < 1e-5, "sample {s} ({ch},{y},{x}): {got} vs {want}");
                }
            }
        }
    }
    assert!(kernels::preprocess_reference_with(&batch, &params, Some(&augs[..2])).is_err(), "one per sample");
}

#[test]
fn explicit_parameters_on_wgpu_match_the_reference() {
    let Some(device) = wgpu() else { return };
    let mut rng = Rng::new(78);
    for &(n, c, fixed) in &[(1usize, 1usize, Some((8u32, 8u32))), (13, 3, None)] {
        let batch = random_batch(&mut rng, n, c, 9, fixed);
        let augs = engine_like_augs(&mut rng, n, 2, 0.4);
        let params = PreprocessParams::eval(8, 8);
        let gpu = kernels::preprocess_wgsl_with(&device, &batch, &params, Some(&augs)).unwrap().expect("kernel ran");
        let cpu = kernels::preprocess_reference_with(&batch, &params, Some(&augs)).unwrap();
        let d = max_abs_diff(&values(gpu), &cpu);
        assert!(d < 1e-4, "n={n} c={c}: {d}");
        let plain = kernels::preprocess_reference(&batch, &params).unwrap();
        assert!(max_abs_diff(&plain, &cpu) > 0.05, "the parameters were applied");
    }
}
