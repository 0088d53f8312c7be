//! Choosing the compute device: a GPU through wgpu (our WGSL kernels run
//! there), CUDA with the `cuda` feature, or the CPU (Burn's `flex`).
//!
//! Getting a device is separate from running on it, so tests and tools can
//! pass their own [`burn::tensor::Device`] to every training and scoring
//! function.

use crate::error::{Error, Result};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

/// The `--device` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// A GPU adapter when wgpu finds a hardware one, else the CPU.
    #[default]
    Auto,
    /// wgpu on whatever API it settles on (WGSL; software Vulkan counts).
    Wgpu,
    /// wgpu pinned to Vulkan (needs the `vulkan` cargo feature).
    Vulkan,
    /// wgpu pinned to Metal (needs the `metal` cargo feature).
    Metal,
    /// wgpu on DirectX 12 (Windows only).
    Dx12,
    /// Burn's `flex` CPU backend.
    Cpu,
    /// Burn's CUDA backend (needs the `cuda` cargo feature).
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => DeviceChoice::Auto,
            "wgpu" => DeviceChoice::Wgpu,
            "vulkan" => DeviceChoice::Vulkan,
            "metal" => DeviceChoice::Metal,
            "dx12" => DeviceChoice::Dx12,
            "cpu" => DeviceChoice::Cpu,
            "cuda" => DeviceChoice::Cuda,
            other => {
                return Err(Error::Argument(format!(
                    "unknown device {other:?}; expected auto, wgpu, vulkan, metal, dx12, cpu or cuda"
                )))
            }
        })
    }
}

/// A selected device and a one-line description of it.
#[derive(Debug, Clone)]
pub struct Selected {
    /// The (non-autodiff) device.
    pub device: Device,
    /// E.g. "wgpu: llvmpipe (Vulkan, Cpu)" or "cpu: flex".
    pub description: String,
    /// Short backend name for reports ("wgpu", "cpu", "cuda").
    pub backend: &'static str,
}

/// What wgpu sees: the best adapter's description and whether it is
/// hardware (not a CPU/software adapter). `None` when no adapter exists.
pub fn probe_wgpu() -> Option<(String, bool)> {
    let instance = wgpu::Instance::default();
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))
    .ok()?;
    let info = adapter.get_info();
    let hardware = !matches!(info.device_type, wgpu::DeviceType::Cpu);
    Some((format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type), hardware))
}

fn unavailable(device: &str, reason: &str) -> Error {
    Error::Device { device: device.to_string(), reason: reason.to_string() }
}

/// Resolves a [`DeviceChoice`] to a device. Never panics: a choice this
/// build or machine cannot serve is an [`Error::Device`] saying what to
/// install or which cargo feature to enable.
pub fn select(choice: DeviceChoice) -> Result<Selected> {
    let cpu = || Selected { device: Device::flex(), description: "cpu: flex".into(), backend: "cpu" };
    match choice {
        DeviceChoice::Cpu => Ok(cpu()),
        DeviceChoice::Auto => match probe_wgpu() {
            Some((name, true)) => Ok(Selected {
                device: Device::wgpu(Default::default()),
                description: format!("wgpu: {name}"),
                backend: "wgpu",
            }),
            _ => Ok(cpu()),
        },
        DeviceChoice::Wgpu => match probe_wgpu() {
            Some((name, _)) => {
                Ok(Selected { device: Device::wgpu(Default::default()), description: format!("wgpu: {name}"), backend: "wgpu" })
            }
            None => Err(unavailable(
                "wgpu",
                "no wgpu adapter found; install a Vulkan/Metal/DX12 driver (on Debian: apt-get install mesa-vulkan-drivers)",
            )),
        },
        DeviceChoice::Vulkan => vulkan(),
        DeviceChoice::Metal => metal(),
        DeviceChoice::Dx12 => {
            if cfg!(windows) {
                select(DeviceChoice::Wgpu)
            } else {
                Err(unavailable("dx12", "DirectX 12 exists only on Windows; use --device wgpu"))
            }
        }
        DeviceChoice::Cuda => cuda(),
    }
}

#[cfg(feature = "vulkan")]
fn vulkan() -> Result<Selected> {
    match probe_wgpu() {
        Some((name, _)) => Ok(Selected {
            device: Device::vulkan(Default::default()),
            description: format!("vulkan: {name}"),
            backend: "wgpu",
        }),
        None => Err(unavailable("vulkan", "no Vulkan adapter found; install a Vulkan driver")),
    }
}

#[cfg(not(feature = "vulkan"))]
fn vulkan() -> Result<Selected> {
    Err(unavailable(
        "vulkan",
        "this build lacks the `vulkan` cargo feature; rebuild with --features vulkan, or use --device wgpu",
    ))
}

#[cfg(feature = "metal")]
fn metal() -> Result<Selected> {
    Ok(Selected { device: Device::metal(Default::default()), description: "metal".into(), backend: "wgpu" })
}

#[cfg(not(feature = "metal"))]
fn metal() -> Result<Selected> {
    Err(unavailable(
        "metal",
        "this build lacks the `metal` cargo feature; rebuild with --features metal, or use --device wgpu",
    ))
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<Selected> {
    Ok(Selected { device: Device::cuda(0), description: "cuda: device 0".into(), backend: "cuda" })
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<Selected> {
    Err(unavailable(
        "cuda",
        "this build lacks the `cuda` cargo feature; rebuild with --features cuda (needs the CUDA toolkit)",
    ))
}
