//! Networks: the backbones (a small CNN for inputs up to 32 px, ResNet-18
//! for larger ones), the classifier on top, and the H2E noise-identifier
//! head with its learnable per-class `tau`.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::module::adaptive_avg_pool2d;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which backbone to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackboneKind {
    /// 3 x [conv3x3 - BN - ReLU - maxpool 2] (32/64/128 channels), global
    /// average pooling: 128 features. For inputs up to 32 px.
    SmallCnn,
    /// ResNet-18 (He et al. 2016), the H2E paper's backbone: 512 features.
    /// Inputs up to 64 px use a 3x3 stride-1 stem without max pooling.
    Resnet18,
}

impl BackboneKind {
    /// The default for an input of `size` pixels (the larger side).
    pub fn for_input(size: usize) -> BackboneKind {
        if size <= 32 {
            BackboneKind::SmallCnn
        } else {
            BackboneKind::Resnet18
        }
    }

    /// Feature dimension.
    pub fn features(self) -> usize {
        match self {
            BackboneKind::SmallCnn => 128,
            BackboneKind::Resnet18 => 512,
        }
    }
}

impl std::str::FromStr for BackboneKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "small-cnn" => Ok(BackboneKind::SmallCnn),
            "resnet18" => Ok(BackboneKind::Resnet18),
            o => Err(Error::Argument(format!("unknown backbone {o:?}; expected small-cnn or resnet18"))),
        }
    }
}

/// Conv (no bias) + batch norm + ReLU.
#[derive(Module, Debug)]
pub struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ConvBn {
    fn new(cin: usize, cout: usize, k: usize, stride: usize, device: &Device) -> ConvBn {
        let conv = Conv2dConfig::new([cin, cout], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
            .with_bias(false)
            .init(device);
        ConvBn { conv, bn: BatchNormConfig::new(cout).init(device) }
    }

    /// Conv and batch norm, no activation (through our CPU kernels on
    /// `flex`, Burn's layers elsewhere).
    fn linear(&self, x: Tensor<4>) -> Tensor<4> {
        use crate::kernels::cpu;
        cpu::batch_norm(&self.bn, cpu::conv2d(&self.conv, x))
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        relu(self.linear(x))
    }

    /// `relu(pool(batch_norm(conv(x))))`; on `flex` one or two kernels of
    /// ours.
    fn pooled(&self, pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
        crate::kernels::cpu::conv_bn_pool2_relu(&self.conv, &self.bn, pool, x)
    }
}

/// The small CNN backbone.
#[derive(Module, Debug)]
pub struct SmallCnn {
    blocks: Vec<ConvBn>,
    pool: MaxPool2d,
}

impl SmallCnn {
    fn new(channels: usize, device: &Device) -> SmallCnn {
        let widths = [channels, 32, 64, 128];
        SmallCnn {
            blocks: (0..3).map(|i| ConvBn::new(widths[i], widths[i + 1], 3, 1, device)).collect(),
            pool: MaxPool2dConfig::new([2, 2]).init(),
        }
    }

    fn forward(&self, mut x: Tensor<4>) -> Tensor<2> {
        // ReLU after the pooling: max-pooling commutes with the monotone
        // ReLU (same values, same gradients), and the ReLU then runs on a
        // quarter of the elements.
        for b in &self.blocks {
            x = b.pooled(&self.pool, x);
        }
        adaptive_avg_pool2d(x, [1, 1]).flatten(1, 3)
    }
}

/// A ResNet basic block.
#[derive(Module, Debug)]
pub struct BasicBlock {
    a: ConvBn,
    b: ConvBn,
    down: Option<ConvBn>,
}

impl BasicBlock {
    fn new(cin: usize, cout: usize, stride: usize, device: &Device) -> BasicBlock {
        BasicBlock {
            a: ConvBn::new(cin, cout, 3, stride, device),
            b: ConvBn::new(cout, cout, 3, 1, device),
            down: (stride != 1 || cin != cout).then(|| ConvBn::new(cin, cout, 1, stride, device)),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let skip = match &self.down {
            Some(d) => d.linear(x.clone()),
            None => x.clone(),
        };
        relu(self.b.linear(self.a.forward(x)) + skip)
    }
}

/// ResNet-18.
#[derive(Module, Debug)]
pub struct ResNet18 {
    stem: ConvBn,
    stem_pool: Option<MaxPool2d>,
    blocks: Vec<BasicBlock>,
}

impl ResNet18 {
    fn new(channels: usize, input: usize, device: &Device) -> ResNet18 {
        let small = input <= 64;
        let stem =
            if small { ConvBn::new(channels, 64, 3, 1, device) } else { ConvBn::new(channels, 64, 7, 2, device) };
        let stem_pool = (!small).then(|| {
            MaxPool2dConfig::new([3, 3]).with_strides([2, 2]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init()
        });
        let mut blocks = Vec::new();
        let mut cin = 64;
        for (i, w) in [64, 128, 256, 512].into_iter().enumerate() {
            let stride = if i == 0 { 1 } else { 2 };
            blocks.push(BasicBlock::new(cin, w, stride, device));
            blocks.push(BasicBlock::new(w, w, 1, device));
            cin = w;
        }
        ResNet18 { stem, stem_pool, blocks }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        // Pooling before the ReLU, as in the small CNN (they commute).
        let x = self.stem.linear(x);
        let mut x = relu(match &self.stem_pool {
            Some(p) => p.forward(x),
            None => x,
        });
        for b in &self.blocks {
            x = b.forward(x);
        }
        adaptive_avg_pool2d(x, [1, 1]).flatten(1, 3)
    }
}

/// A backbone: exactly one of the two fields is set.
#[derive(Module, Debug)]
pub struct Backbone {
    small: Option<SmallCnn>,
    resnet: Option<ResNet18>,
}

impl Backbone {
    /// Builds `kind` for `channels`-channel inputs of `input` pixels.
    pub fn new(kind: BackboneKind, channels: usize, input: usize, device: &Device) -> Backbone {
        match kind {
            BackboneKind::SmallCnn => Backbone { small: Some(SmallCnn::new(channels, device)), resnet: None },
            BackboneKind::Resnet18 => Backbone { small: None, resnet: Some(ResNet18::new(channels, input, device)) },
        }
    }

    /// Features `[n, d]` of images `[n, c, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        match (&self.small, &self.resnet) {
            (Some(s), _) => s.forward(x),
            (None, Some(r)) => r.forward(x),
            (None, None) => unreachable!("a Backbone is built with one network"),
        }
    }

    /// [`forward`](Self::forward), or with `mirror` the mean of the features
    /// of each image and of its horizontal mirror (test-time augmentation;
    /// one forward pass over both). A linear head on the mean gives the mean
    /// of its logits.
    pub fn forward_mirrored(&self, x: Tensor<4>, mirror: bool) -> Tensor<2> {
        if !mirror {
            return self.forward(x);
        }
        let n = x.dims()[0];
        let both = self.forward(Tensor::cat(vec![x.clone(), x.flip([3])], 0));
        (both.clone().narrow(0, 0, n) + both.narrow(0, n, n)).mul_scalar(0.5)
    }
}

/// Backbone plus a linear classifier.
#[derive(Module, Debug)]
pub struct Net {
    /// Feature extractor.
    pub backbone: Backbone,
    /// Linear classifier on the features.
    pub fc: Linear,
}

impl Net {
    /// A freshly initialised network.
    pub fn new(kind: BackboneKind, channels: usize, input: usize, classes: usize, device: &Device) -> Net {
        Net {
            backbone: Backbone::new(kind, channels, input, device),
            fc: LinearConfig::new(kind.features(), classes).init(device),
        }
    }

    /// Logits `[n, classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.fc.forward(self.backbone.forward(x))
    }
}

/// The H2E noise identifier head: `z = W f + b`, trained on
/// `z - tau * log(pi)` with `tau` a learnable per-class vector.
#[derive(Module, Debug)]
pub struct Head {
    /// `W`, `b`.
    pub linear: Linear,
    /// Per-class `tau` (initialised to 1).
    pub tau: Param<Tensor<1>>,
}

impl Head {
    /// A fresh head for `features`-dimensional inputs.
    pub fn new(features: usize, classes: usize, device: &Device) -> Head {
        let tau = Tensor::<1>::from_data(TensorData::new(vec![1f32; classes], [classes]), device);
        Head { linear: LinearConfig::new(features, classes).init(device), tau: Param::from_tensor(tau) }
    }

    /// Raw logits `W f + b`.
    pub fn raw(&self, f: Tensor<2>) -> Tensor<2> {
        self.linear.forward(f)
    }

    /// The average of heads of one shape (`None` for none): `W`, `b` and
    /// `tau` averaged. The logits are linear in them, so the average head's
    /// raw and adjusted logits are the averages of the heads' logits.
    pub fn average(heads: Vec<Head>) -> Option<Head> {
        let n = heads.len();
        let mut rest = heads.into_iter();
        let mut sum = rest.next()?;
        for h in rest {
            let w = h.linear.weight.val();
            sum.linear.weight = sum.linear.weight.map(|a| a + w);
            sum.linear.bias = match (sum.linear.bias, h.linear.bias) {
                (Some(b), Some(hb)) => {
                    let hb = hb.val();
                    Some(b.map(|a| a + hb))
                }
                (b, _) => b,
            };
            let t = h.tau.val();
            sum.tau = sum.tau.map(|a| a + t);
        }
        if n > 1 {
            let k = n as f32;
            sum.linear.weight = sum.linear.weight.map(|a| a / k);
            sum.linear.bias = sum.linear.bias.map(|b| b.map(|a| a / k));
            sum.tau = sum.tau.map(|a| a / k);
        }
        Some(sum)
    }

    /// Adjusted logits `W f + b - tau * log_prior` (`log_prior`: `[classes]`).
    pub fn adjusted(&self, f: Tensor<2>, log_prior: Tensor<1>) -> Tensor<2> {
        let shift = (self.tau.val() * log_prior).unsqueeze_dim::<2>(0);
        self.raw(f) - shift
    }
}

/// Re-initialises every weight of `module` from `seed` with h2e's own
/// generator, independent of Burn's process-wide one (which other threads
/// may draw from at any time): the same seed gives the same network
/// whatever else the process does. Weights with two or more dimensions
/// (and the bias that follows one) get Burn's default Kaiming-uniform
/// bound `1 / sqrt(fan_in)`; 1-D tensors that are not biases (batch
/// norm's scale, shift and statistics) keep their constant values.
pub fn seeded<M: Module>(module: M, seed: u64) -> M {
    struct Init {
        rng: crate::rng::Rng,
        names: Vec<String>,
        fan_in: usize,
    }
    impl burn::module::ModuleMapper for Init {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.names.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.names.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let is_bias = self.names.last().is_some_and(|n| n == "bias");
            param.map(|old| {
                let dims = old.dims();
                if D >= 2 {
                    // [out, in, k...] for convolutions, [in, out] for Burn's linear layers.
                    self.fan_in = if D == 2 { dims[0] } else { dims[1..].iter().product() };
                } else if !is_bias {
                    return old;
                }
                let bound = 1.0 / (self.fan_in.max(1) as f64).sqrt();
                let n: usize = dims.iter().product();
                let values: Vec<f32> = (0..n).map(|_| ((2.0 * self.rng.f64() - 1.0) * bound) as f32).collect();
                let fresh = Tensor::<D>::from_data(TensorData::new(values, dims.to_vec()), &old.device());
                if old.is_require_grad() {
                    fresh.require_grad()
                } else {
                    fresh
                }
            })
        }
    }
    module.map(&mut Init { rng: crate::rng::Rng::derive(seed, 0x1417), names: Vec::new(), fan_in: 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        crate::train::read_f32(t, "a test tensor").expect("f32 tensor")
    }

    #[test]
    fn the_average_head_gives_the_average_logits() {
        let device = Device::flex();
        let heads: Vec<Head> = (0..3)
            .map(|k| {
                let mut h = seeded(Head::new(4, 3, &device), 7 + k);
                let tau =
                    Tensor::<1>::from_data(TensorData::new(vec![0.5 + k as f32, 1.0, 2.0 - k as f32], [3]), &device);
                h.tau = Param::from_tensor(tau);
                h
            })
            .collect();
        let f = Tensor::<2>::from_data(
            TensorData::new((0..8).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<f32>>(), [2, 4]),
            &device,
        );
        let lp = Tensor::<1>::from_data(TensorData::new(vec![-0.2f32, -1.5, -3.0], [3]), &device);
        let each: Vec<Vec<f32>> = heads.iter().map(|h| values(h.adjusted(f.clone(), lp.clone()))).collect();
        let avg = Head::average(heads).expect("three heads");
        let got = values(avg.adjusted(f, lp));
        for (j, g) in got.iter().enumerate() {
            let want = each.iter().map(|e| e[j]).sum::<f32>() / 3.0;
            assert!((g - want).abs() < 1e-5, "logit {j}: {g} against {want}");
        }
        // The heads differ, so the test would catch an average that kept one.
        assert!(each[0].iter().zip(&each[1]).any(|(a, b)| (a - b).abs() > 1e-3));
        assert_eq!(values(avg.tau.val()), vec![1.5, 1.0, 1.0]);
        assert!(Head::average(Vec::new()).is_none());
    }
}
