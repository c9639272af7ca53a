//! Small building blocks shared by the networks: a strict parameter accessor and fallible
//! convolution layers with BatchNorm folded in at load.

use std::cell::RefCell;
use std::collections::HashSet;

use tch::{Device, Kind, TchError, Tensor};

use crate::checkpoint::StateDict;

type Result<T> = std::result::Result<T, TchError>;

/// Hands out checkpoint tensors by name and expected shape, and remembers every problem, so
/// that missing, mis-shaped and unexpected tensors can be reported together at the end.
pub struct Params<'a> {
    sd: &'a StateDict,
    device: Device,
    used: RefCell<HashSet<String>>,
    requested: RefCell<Vec<(String, Vec<i64>)>>,
    missing: RefCell<Vec<String>>,
    misshaped: RefCell<Vec<String>>,
    non_float: RefCell<Vec<String>>,
}

impl<'a> Params<'a> {
    pub fn new(sd: &'a StateDict, device: Device) -> Self {
        Params {
            sd,
            device,
            used: Default::default(),
            requested: Default::default(),
            missing: Default::default(),
            misshaped: Default::default(),
            non_float: Default::default(),
        }
    }

    /// The tensor as fp32 on the device. A missing or mis-shaped tensor is recorded and
    /// replaced by zeros so that building can go on and find every other problem; the model is
    /// then discarded by [`finish`](Self::finish).
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        self.used.borrow_mut().insert(name.to_owned());
        self.requested.borrow_mut().push((name.to_owned(), shape.to_vec()));
        match self.sd.get(name) {
            Some(t) if t.size() == shape && t.is_floating_point() => t.f_to_kind(Kind::Float)?.f_to_device(self.device),
            Some(t) if t.size() == shape => {
                self.non_float.borrow_mut().push(format!("{name} ({:?})", t.kind()));
                Tensor::f_zeros(shape, (Kind::Float, self.device))
            }
            Some(t) => {
                self.misshaped.borrow_mut().push(format!("{name} (expected {shape:?}, found {:?})", t.size()));
                Tensor::f_zeros(shape, (Kind::Float, self.device))
            }
            None => {
                self.missing.borrow_mut().push(name.to_owned());
                Tensor::f_zeros(shape, (Kind::Float, self.device))
            }
        }
    }

    /// The checkpoint the tensors come from.
    pub fn path(&self) -> &std::path::Path {
        &self.sd.path
    }

    /// Marks tensors that are read but not needed (e.g. BatchNorm's `num_batches_tracked`).
    pub fn ignore(&self, name: &str) {
        self.used.borrow_mut().insert(name.to_owned());
    }

    /// Every tensor asked for so far, with its expected shape, in order.
    pub fn requested(&self) -> Vec<(String, Vec<i64>)> {
        self.requested.borrow().clone()
    }

    /// `Ok` when every expected tensor was there with its shape, floating point and finite, and
    /// nothing else was; otherwise every problem, by name.
    pub fn finish(self) -> std::result::Result<(), String> {
        let used = self.used.into_inner();
        let unexpected: Vec<String> =
            self.sd.names().filter(|n| !used.contains(*n) && !n.ends_with("num_batches_tracked")).map(str::to_owned).collect();
        let list = |what: &str, v: &[String]| -> Option<String> {
            const SHOWN: usize = 8;
            if v.is_empty() {
                return None;
            }
            let more = if v.len() > SHOWN { format!(" and {} more", v.len() - SHOWN) } else { String::new() };
            Some(format!("{} {what}: {}{more}", v.len(), v[..v.len().min(SHOWN)].join(", ")))
        };
        let problems: Vec<String> = [
            list("missing", &self.missing.into_inner()),
            list("unexpected", &unexpected),
            list("mis-shaped", &self.misshaped.into_inner()),
            list("not floating point", &self.non_float.into_inner()),
            list("with NaN or infinite values", &crate::checkpoint::non_finite(self.sd)),
        ]
        .into_iter()
        .flatten()
        .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// `leaky_relu_(x, slope)` in place (through the C++ shim: tch's has no slope argument).
pub fn leaky_relu_(x: &mut Tensor, slope: f64) -> Result<()> {
    crate::sys::leaky_relu_(x, slope).map_err(TchError::Torch)
}

/// `leaky_relu(x, slope)` (slope 0 is ReLU). tch's `leaky_relu` has no slope argument, and
/// `leaky_relu_backward(x, x, s)` computes `x > 0 ? x : x * s` exactly, in one pass.
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    if slope == 0.0 {
        x.f_relu()
    } else {
        x.f_leaky_relu_backward(x, slope, false)
    }
}

/// A convolution with an optional BatchNorm folded into its weight and bias.
#[derive(Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: i64,
    padding: i64,
    groups: i64,
}

/// Shape of a convolution: `(out, in, kernel, stride, padding, groups)`.
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    pub out_channels: i64,
    pub in_channels: i64,
    pub kernel: i64,
    pub stride: i64,
    pub padding: i64,
    pub groups: i64,
}

impl ConvSpec {
    pub fn new(in_channels: i64, out_channels: i64, kernel: i64, stride: i64, padding: i64) -> Self {
        ConvSpec { out_channels, in_channels, kernel, stride, padding, groups: 1 }
    }

    pub fn groups(self, groups: i64) -> Self {
        ConvSpec { groups, ..self }
    }

    fn weight_shape(&self) -> [i64; 4] {
        [self.out_channels, self.in_channels / self.groups, self.kernel, self.kernel]
    }
}

impl Conv2d {
    /// `{conv}.weight` (and `{conv}.bias` if `bias`).
    pub fn new(p: &Params, conv: &str, spec: ConvSpec, bias: bool) -> Result<Self> {
        let weight = p.get(&format!("{conv}.weight"), &spec.weight_shape())?;
        let bias = if bias { Some(p.get(&format!("{conv}.bias"), &[spec.out_channels])?) } else { None };
        Ok(Conv2d { weight, bias, stride: spec.stride, padding: spec.padding, groups: spec.groups })
    }

    /// A bias-free `{conv}.weight` followed by BatchNorm `{bn}` (inference statistics,
    /// eps 1e-5), folded into one convolution.
    pub fn with_batch_norm(p: &Params, conv: &str, bn: &str, spec: ConvSpec) -> Result<Self> {
        let c = [spec.out_channels];
        let weight = p.get(&format!("{conv}.weight"), &spec.weight_shape())?;
        let gamma = p.get(&format!("{bn}.weight"), &c)?;
        let beta = p.get(&format!("{bn}.bias"), &c)?;
        let mean = p.get(&format!("{bn}.running_mean"), &c)?;
        let var = p.get(&format!("{bn}.running_var"), &c)?;
        p.ignore(&format!("{bn}.num_batches_tracked"));
        let scale = gamma.f_div(&var.f_add_scalar(1e-5)?.f_sqrt()?)?;
        let weight = weight.f_mul(&scale.f_reshape([-1, 1, 1, 1])?)?;
        let bias = beta.f_sub(&mean.f_mul(&scale)?)?;
        Ok(Conv2d { weight, bias: Some(bias), stride: spec.stride, padding: spec.padding, groups: spec.groups })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (s, p) = (self.stride, self.padding);
        x.f_conv2d(&self.weight, self.bias.as_ref(), [s, s], [p, p], [1, 1], self.groups)
    }
}
