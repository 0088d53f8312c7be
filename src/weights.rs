//! Module weights as safetensors (an open format that candle, PyTorch and
//! Burn read). Tensors are named by their module path
//! (`backbone.small.blocks.0.conv.weight`), stored as little-endian f32.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Error, Result};

/// Tracks the module path during a traversal.
#[derive(Default)]
struct PathStack {
    stack: Vec<String>,
    seen: BTreeMap<String, usize>,
}

impl PathStack {
    fn enter(&mut self, name: &str) {
        self.stack.push(name.to_string());
    }
    fn exit(&mut self) {
        self.stack.pop();
    }
    /// The current path, made unique if a traversal ever repeats one.
    fn key(&mut self) -> String {
        let base = if self.stack.is_empty() { "param".to_string() } else { self.stack.join(".") };
        let n = self.seen.entry(base.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            base
        } else {
            format!("{base}#{}", *n - 1)
        }
    }
}

struct Collect {
    path: PathStack,
    out: Vec<(String, Vec<usize>, Vec<f32>)>,
    error: Option<String>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let key = self.path.key();
        let t = param.val();
        let shape = t.dims().to_vec();
        match t.into_data().convert::<f32>().try_to_vec::<f32>() {
            Ok(v) => self.out.push((key, shape, v)),
            Err(e) => self.error = Some(format!("reading {key}: {e:?}")),
        }
    }
}

/// Serialises every float tensor of `module` (parameters and running
/// statistics) to safetensors bytes. The validation-mode snapshot is what
/// is written: batch norm synchronises its running statistics there.
pub fn to_safetensors<M: Module>(
    module: &M,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut c = Collect { path: PathStack::default(), out: Vec::new(), error: None };
    module.valid().visit(&mut c);
    if let Some(e) = c.error {
        return Err(Error::Train(e));
    }
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        c.out.into_iter().map(|(k, s, v)| (k, s, v.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(k, s, b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (k.clone(), v)))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Train(format!("safetensors: {e}")))?;
    safetensors::serialize(views, &metadata).map_err(|e| Error::Train(format!("safetensors: {e}")))
}

struct Load<'a> {
    path: PathStack,
    tensors: &'a SafeTensors<'a>,
    name: &'a str,
    error: Option<Error>,
}

impl ModuleMapper for Load<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let key = self.path.key();
        if self.error.is_some() {
            return param;
        }
        let view = match self.tensors.tensor(&key) {
            Ok(v) => v,
            Err(_) => {
                self.error = Some(Error::invalid(self.name, "weights", format!("tensor {key} is missing")));
                return param;
            }
        };
        let want = param.val().dims().to_vec();
        if view.dtype() != Dtype::F32 || view.shape() != want.as_slice() {
            self.error = Some(Error::invalid(
                self.name,
                "weights",
                format!("tensor {key} is {:?} {:?}, expected F32 {:?}", view.dtype(), view.shape(), want),
            ));
            return param;
        }
        let values: Vec<f32> =
            view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        if values.iter().any(|v| !v.is_finite()) {
            self.error = Some(Error::invalid(self.name, "weights", format!("tensor {key} holds non-finite values")));
            return param;
        }
        param.map(|old| {
            let device = old.device();
            Tensor::<D>::from_data(TensorData::new(values, want.clone()), &device)
        })
    }
}

/// Loads safetensors `bytes` (named `name` in errors) into `module`, which
/// must have the same architecture. Every tensor must be present with the
/// right shape; the module keeps its device.
pub fn from_safetensors<M: Module>(module: M, bytes: &[u8], name: &str) -> Result<M> {
    let tensors = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::invalid(name, "weights", format!("not a safetensors file: {e}")))?;
    let mut l = Load { path: PathStack::default(), tensors: &tensors, name, error: None };
    let module = module.map(&mut l);
    match l.error {
        Some(e) => Err(e),
        None => Ok(module),
    }
}
