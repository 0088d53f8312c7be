//! Launching our WGSL on Burn's own wgpu device.
//!
//! Route (Burn 0.22.1, features `template` + `extension` + `cubecl`):
//! - the input tensors' primitives are taken with
//!   `Tensor::try_into_primitive::<Cube>()` (a fusion tensor, `Cube` being
//!   `Fusion<CubeBackend>`) and resolved to `CubeTensor`s by the fusion
//!   client (`resolve_tensor_float/int`: flushes the pending graph for that
//!   tensor only, no read-back);
//! - the packed bytes and small parameter arrays are uploaded with the
//!   device's cubecl `Client` (`cubecl::Device::client()`, the same client
//!   Burn's tensors use), outputs are allocated on it with `Client::empty`;
//! - the kernel is a `SourceKernel` over our `KernelSource` (the WGSL text,
//!   tagged `"wgsl"`), launched with `Client::launch`; buffers bind to
//!   `@group(0) @binding(i)` in order;
//! - outputs become Burn tensors by registering their handles with the
//!   fusion client as an `Init` operation, exactly as Burn itself registers
//!   uploaded data (`float_from_data`), so they stay on the device.
//!
//! When a launch is refused (a build whose wgpu compiler is SPIR-V has no
//! WGSL pass-through), the error is caught with `Client::check` and the
//! callers fall back to the plain implementation.

use burn::backend::fusion::stream::StreamId;
use burn::backend::fusion::{get_client, FusionTensor, NoOp};
use burn::backend::ir::{BackendIr, InitOperationIr, OperationIr, OperationOutput};
use burn::backend::wgpu::{into_contiguous, CubeBackend, CubeTensor, KernelSource, SourceKernel, SourceTemplate};
use burn::backend::{Cube, CubeDevice, DispatchDevice};
use burn::cubecl::prelude::{Client, KernelId};
use burn::cubecl::server::{Handle, KernelArguments};
use burn::cubecl::{CubeCount, CubeDim};
use burn::tensor::{DType, Device, FloatDType, Int, IntDType, Shape, Tensor};

use super::hash::SampleAug;
use super::preprocess::{checked, PackedBatch, PreprocessParams};
use super::score::{check_shapes, ScoreOutput};
use super::{PREPROCESS_WGSL, SCORE_WGSL};
use crate::error::Result;

type FusionRt = <CubeBackend as burn::backend::fusion::FusionBackend>::FusionRuntime;

/// Workgroup size of `preprocess.wgsl`.
const PREPROCESS_WG: u32 = 256;
/// Workgroup size of `score.wgsl`.
const SCORE_WG: u32 = 64;
/// Largest workgroup count per dispatch dimension (WebGPU's minimum limit).
const MAX_GROUPS: u32 = 65_535;

/// The wgpu device behind a (non-autodiff) Burn device, if it is one.
pub(crate) fn wgpu_device(device: &Device) -> Option<CubeDevice> {
    #[allow(unreachable_patterns)]
    match device.as_dispatch() {
        DispatchDevice::Cube(d @ CubeDevice::Wgpu(_)) => Some(d.clone()),
        _ => None,
    }
}

/// True when kernels launched on `device` run our WGSL (a wgpu device).
pub fn runs_wgsl(device: &Device) -> bool {
    wgpu_device(&device.clone().without_autodiff()).is_some()
}

struct PreprocessKernel;
struct ScoreKernel;

macro_rules! wgsl_kernel {
    ($ty:ident, $src:expr) => {
        impl KernelSource for $ty {
            fn source(&self) -> SourceTemplate {
                SourceTemplate::new($src)
            }
            fn id(&self) -> KernelId {
                KernelId::new::<Self>()
            }
            fn lang(&self) -> &'static str {
                "wgsl"
            }
        }
    };
}

wgsl_kernel!(PreprocessKernel, PREPROCESS_WGSL);
wgsl_kernel!(ScoreKernel, SCORE_WGSL);

/// `ceil(threads / wg)` workgroups laid out within the per-dimension limit.
fn groups(threads: usize, wg: u32) -> CubeCount {
    let g = threads.div_ceil(wg as usize).max(1) as u32;
    let x = g.min(MAX_GROUPS);
    CubeCount::Static(x, g.div_ceil(x), 1)
}

fn words_to_bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Registers a device buffer as a fusion tensor, as Burn does for uploads.
fn register(tensor: CubeTensor, int: bool) -> FusionTensor<FusionRt> {
    let client = get_client::<CubeBackend>(&tensor.device);
    let shape = tensor.meta.shape().clone();
    let dtype = tensor.dtype;
    let handle = if int {
        <CubeBackend as BackendIr>::int_tensor_handle(tensor)
    } else {
        <CubeBackend as BackendIr>::float_tensor_handle(tensor)
    };
    let desc = InitOperationIr::create(shape, dtype, || client.register_tensor_handle(handle));
    client.register(StreamId::current(), OperationIr::Init(desc), NoOp::<CubeBackend>::new()).output()
}

fn float_tensor<const D: usize>(t: CubeTensor) -> Tensor<D> {
    Tensor::from_primitive::<Cube>(register(t, false))
}

fn int_tensor<const D: usize>(t: CubeTensor) -> Tensor<D, Int> {
    Tensor::from_primitive::<Cube>(register(t, true))
}

fn output(client: &Client, device: &CubeDevice, shape: Vec<usize>, dtype: DType) -> CubeTensor {
    let shape = Shape::from(shape);
    let handle = client.empty(shape.num_elements() * dtype.size());
    CubeTensor::new_contiguous(client.clone(), device.clone(), shape, handle, dtype)
}

thread_local! {
    static LAUNCHES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many of our WGSL kernels this thread has launched successfully: lets
/// a test check that a code path really ran on the kernels rather than on
/// the plain fallback (the results are the same by design).
pub fn wgsl_launches() -> u64 {
    LAUNCHES.with(|c| c.get())
}

/// Launches `kernel` and reports whether the device accepted it.
fn launch<K: KernelSource>(
    client: &Client,
    kernel: K,
    wg: u32,
    count: CubeCount,
    buffers: Vec<Handle>,
    outputs: &[&Handle],
) -> bool {
    let bindings = buffers.into_iter().map(|h| h.binding()).collect();
    client.launch(
        Box::new(SourceKernel::new(kernel, CubeDim::new_1d(wg))),
        count,
        KernelArguments::new().with_buffers(bindings),
    );
    match client.check(outputs.iter().copied()) {
        Ok(()) => {
            LAUNCHES.with(|c| c.set(c.get() + 1));
            true
        }
        Err(e) => {
            log::warn!("WGSL kernel refused by the device, using the plain implementation: {e}");
            false
        }
    }
}

/// Runs `shaders/preprocess.wgsl` on `device` (a wgpu device)
/// and returns its output tensor, or `None` when `device` is not a wgpu
/// device or the device refused the kernel. Inputs must be valid (see
/// [`preprocess`](super::preprocess)). On an autodiff device the tensor is a
/// constant of the graph.
pub fn preprocess(device: &Device, batch: &PackedBatch, p: &PreprocessParams) -> Result<Option<Tensor<4>>> {
    preprocess_with(device, batch, p, None)
}

/// [`preprocess`] with explicit per-sample parameters (see
/// [`preprocess_with`](super::preprocess_with)).
pub fn preprocess_with(
    device: &Device,
    batch: &PackedBatch,
    p: &PreprocessParams,
    augs: Option<&[SampleAug]>,
) -> Result<Option<Tensor<4>>> {
    checked(batch, p, augs)?;
    let Some(cube) = wgpu_device(&device.clone().without_autodiff()) else { return Ok(None) };
    let client = cube.client();
    let n = batch.len();
    let ch = batch.channels();
    let (oh, ow) = (p.height as usize, p.width as usize);

    let mut bytes = batch.data().to_vec();
    bytes.resize(bytes.len().div_ceil(4).max(1) * 4, 0);
    let samples: Vec<u32> = batch
        .samples()
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            let a = augs.map_or(SampleAug::IDENTITY, |augs| augs[i]);
            [
                s.offset as u32,
                s.width,
                s.height,
                a.dx as u32,
                a.dy as u32,
                a.flip as u32,
                a.gain.to_bits(),
                a.offset.to_bits(),
            ]
        })
        .collect();
    let (scale, bias) = p.affine();
    let mut params = vec![
        n as u32,
        ch as u32,
        p.height,
        p.width,
        p.pad,
        p.flip as u32,
        p.seed as u32,
        (p.seed >> 32) as u32,
        p.brightness.to_bits(),
        p.contrast.to_bits(),
    ];
    params.extend(scale.iter().chain(&bias).map(|v| v.to_bits()));
    params.push(augs.is_some() as u32);

    let pixels = client.create_from_slice(&bytes);
    let samples = client.create_from_slice(&words_to_bytes(&samples));
    let params = client.create_from_slice(&words_to_bytes(&params));
    let out = output(&client, &cube, vec![n, ch, oh, ow], DType::F32);
    let ok = launch(
        &client,
        PreprocessKernel,
        PREPROCESS_WG,
        groups(n * oh * ow, PREPROCESS_WG),
        vec![pixels, samples, params, out.handle.clone()],
        &[&out.handle],
    );
    if !ok {
        return Ok(None);
    }
    let t = float_tensor(out);
    Ok(Some(if device.is_autodiff() { Tensor::from_inner(t) } else { t }))
}

/// Runs `shaders/score.wgsl` on the logits' device and returns its outputs,
/// or `None` when that is not a wgpu device or the device refused the
/// kernel. Autodiff inputs are scored as constants.
pub fn score(
    logits: &Tensor<2>,
    labels: &Tensor<1, Int>,
    tau: &[f32],
    log_prior: &[f32],
) -> Result<Option<ScoreOutput>> {
    let [n, classes] = logits.dims();
    check_shapes(n, classes, labels.dims()[0], tau, log_prior)?;
    let plain = |d: Device| d.without_autodiff();
    let Some(cube) = wgpu_device(&plain(logits.device())) else { return Ok(None) };
    if wgpu_device(&plain(labels.device())) != Some(cube.clone()) {
        return Ok(None);
    }
    let logits = if logits.is_autodiff() { logits.clone().inner() } else { logits.clone() };
    let labels = if labels.is_autodiff() { labels.clone().inner() } else { labels.clone() };
    let logits = logits.cast(FloatDType::F32);
    let labels = labels.cast(IntDType::I32);
    let (Ok(logits), Ok(labels)) = (logits.try_into_primitive::<Cube>(), labels.try_into_primitive::<Cube>()) else {
        return Ok(None);
    };
    let logits = into_contiguous(logits.client.clone().resolve_tensor_float::<CubeBackend>(logits));
    let labels = into_contiguous(labels.client.clone().resolve_tensor_int::<CubeBackend>(labels));
    let client = cube.client();

    let mut params = vec![n as u32, classes as u32];
    params.extend(tau.iter().chain(log_prior).map(|v| v.to_bits()));
    let params = client.create_from_slice(&words_to_bytes(&params));
    let pred = output(&client, &cube, vec![2, n], DType::I32);
    let scores = output(&client, &cube, vec![3, n], DType::F32);
    let ok = launch(
        &client,
        ScoreKernel,
        SCORE_WG,
        groups(n, SCORE_WG),
        vec![logits.handle.clone(), labels.handle.clone(), params, pred.handle.clone(), scores.handle.clone()],
        &[&pred.handle, &scores.handle],
    );
    if !ok {
        return Ok(None);
    }
    let preds = int_tensor::<2>(pred);
    let pred_row = |i: usize| preds.clone().slice([i..i + 1, 0..n]).reshape([n]);
    let scores = float_tensor::<2>(scores);
    let row = |i: usize| scores.clone().slice([i..i + 1, 0..n]).reshape([n]);
    Ok(Some(ScoreOutput {
        noise_score: row(0),
        max_prob: row(1),
        prob_label: row(2),
        pred: pred_row(0),
        plain_pred: pred_row(1),
    }))
}
