//! Small building blocks shared by the networks: a strict parameter accessor and fallible
//! convolution layers with BatchNorm folded in at load.

use std::cell::RefCell;
use std::collections::HashSet;

use tch::{Device, Kind, TchError, Tensor};

use crate::checkpoint::StateDict;
use crate::{Error, Network};

type Result<T> = std::result::Result<T, TchError>;

/// The strict check every network's checkpoint goes through: the tensors `expected` (names and
/// shapes, in order) against those of `sd`. Missing, unexpected, mis-shaped, non-floating-point
/// and non-finite tensors are reported together, by name, as one [`Error::ModelMismatch`];
/// `description` says what was looked for (the configuration read from the shapes, …).
/// `ignorable` names tensors that may be in the file and are not needed (BatchNorm's
/// `num_batches_tracked`, …).
pub fn check_tensors(
    sd: &StateDict,
    network: Network,
    description: &str,
    expected: &[(String, Vec<i64>)],
    ignorable: &dyn Fn(&str) -> bool,
) -> std::result::Result<(), Error> {
    let (mut missing, mut misshaped, mut non_float) = (Vec::new(), Vec::new(), Vec::new());
    let mut known = HashSet::new();
    for (name, shape) in expected {
        if !known.insert(name.as_str()) {
            continue;
        }
        match sd.get(name) {
            None => missing.push(name.clone()),
            Some(t) if t.size() != *shape => misshaped.push(format!("{name} (expected {shape:?}, found {:?})", t.size())),
            Some(t) if !t.is_floating_point() => non_float.push(format!("{name} ({:?}, expected floating point)", t.kind())),
            Some(_) => {}
        }
    }
    let unexpected: Vec<String> = sd.names().filter(|n| !known.contains(n) && !ignorable(n)).map(str::to_owned).collect();
    let list = |what: &str, v: &[String]| -> Option<String> {
        const SHOWN: usize = 8;
        if v.is_empty() {
            return None;
        }
        let more = if v.len() > SHOWN { format!(" and {} more", v.len() - SHOWN) } else { String::new() };
        Some(format!("{} {what}: {}{more}", v.len(), v[..v.len().min(SHOWN)].join(", ")))
    };
    let problems: Vec<String> = [
        list("missing", &missing),
        list("unexpected", &unexpected),
        list("mis-shaped", &misshaped),
        list("not floating point", &non_float),
        list("with NaN or infinite values", &crate::checkpoint::non_finite(sd)),
    ]
    .into_iter()
    .flatten()
    .collect();
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::ModelMismatch { network, path: sd.path.clone(), expected: description.to_owned(), details: problems.join("; ") })
}

/// Hands out checkpoint tensors by name and expected shape while a network is built, and
/// remembers every request, so that [`finish`](Self::finish) can run [`check_tensors`] on them:
/// the network's code is its own list of expected tensors.
pub struct Params<'a> {
    sd: &'a StateDict,
    device: Device,
    /// What the layers built from them compute in (their weights folded in fp32 first).
    kind: Kind,
    requested: RefCell<Vec<(String, Vec<i64>)>>,
    ignored: RefCell<HashSet<String>>,
}

impl<'a> Params<'a> {
    pub fn new(sd: &'a StateDict, device: Device) -> Self {
        Self::with_kind(sd, device, Kind::Float)
    }

    /// As [`new`](Self::new), for layers computing in `kind` (bf16 on CPUs that have it).
    pub fn with_kind(sd: &'a StateDict, device: Device, kind: Kind) -> Self {
        Params { sd, device, kind, requested: Default::default(), ignored: Default::default() }
    }

    /// The tensor as fp32 on the device. A missing or mis-shaped tensor is replaced by zeros so
    /// that building can go on and find every other problem; the model is then discarded by
    /// [`finish`](Self::finish).
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        self.requested.borrow_mut().push((name.to_owned(), shape.to_vec()));
        match self.sd.get(name) {
            Some(t) if t.size() == shape && t.is_floating_point() => t.f_to_kind(Kind::Float)?.f_to_device(self.device),
            _ => Tensor::f_zeros(shape, (Kind::Float, self.device)),
        }
    }

    /// The checkpoint the tensors come from.
    pub fn path(&self) -> &std::path::Path {
        &self.sd.path
    }

    /// Marks a tensor that may be in the file but is not needed (e.g. BatchNorm's
    /// `num_batches_tracked`).
    pub fn ignore(&self, name: &str) {
        self.ignored.borrow_mut().insert(name.to_owned());
    }

    /// Every tensor asked for so far, with its expected shape, in order.
    pub fn requested(&self) -> Vec<(String, Vec<i64>)> {
        self.requested.borrow().clone()
    }

    /// `Ok` when every tensor asked for was there with its shape, floating point and finite, and
    /// nothing else was (BatchNorm's `num_batches_tracked` aside, wherever it is); otherwise
    /// [`Error::ModelMismatch`] naming every problem.
    pub fn finish(self, network: Network, description: &str) -> std::result::Result<(), Error> {
        let ignored = self.ignored.into_inner();
        let ignorable = |n: &str| ignored.contains(n) || n.ends_with(".num_batches_tracked");
        check_tensors(self.sd, network, description, &self.requested.into_inner(), &ignorable)
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
        let bias = if bias { Some(p.get(&format!("{conv}.bias"), &[spec.out_channels])?.f_to_kind(p.kind)?) } else { None };
        Ok(Conv2d { weight: weight.f_to_kind(p.kind)?, bias, stride: spec.stride, padding: spec.padding, groups: spec.groups })
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
        let (weight, bias) = (weight.f_to_kind(p.kind)?, bias.f_to_kind(p.kind)?);
        Ok(Conv2d { weight, bias: Some(bias), stride: spec.stride, padding: spec.padding, groups: spec.groups })
    }

    /// The same convolution computing in `kind`: weights are folded in fp32 first and rounded
    /// once.
    pub fn to_kind(&self, kind: Kind) -> Result<Self> {
        Ok(Conv2d {
            weight: self.weight.f_to_kind(kind)?,
            bias: self.bias.as_ref().map(|b| b.f_to_kind(kind)).transpose()?,
            stride: self.stride,
            padding: self.padding,
            groups: self.groups,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (s, p) = (self.stride, self.padding);
        x.f_conv2d(&self.weight, self.bias.as_ref(), [s, s], [p, p], [1, 1], self.groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd(tensors: &[(&str, &[i64])]) -> StateDict {
        let t = tensors.iter().map(|(n, s)| (n.to_string(), Tensor::zeros(*s, (Kind::Float, Device::Cpu)))).collect();
        StateDict::new("net.pth".into(), t)
    }

    #[test]
    fn every_problem_is_named_together_as_a_model_mismatch() {
        let file = sd(&[("a.weight", &[2, 3]), ("b.weight", &[4]), ("extra", &[1])]);
        let expected = [("a.weight".to_owned(), vec![2, 3]), ("b.weight".to_owned(), vec![5]), ("c.bias".to_owned(), vec![1])];
        let e = check_tensors(&file, Network::RrdbNet, "RRDBNet x4", &expected, &|_| false).unwrap_err();
        let Error::ModelMismatch { network: Network::RrdbNet, ref expected, ref details, .. } = e else { panic!("{e:?}") };
        assert_eq!(expected, "RRDBNet x4");
        assert_eq!(details, "1 missing: c.bias; 1 unexpected: extra; 1 mis-shaped: b.weight (expected [5], found [4])");
        assert!(e.to_string().starts_with("net.pth: does not match the RRDBNet upscaler (RRDBNet x4): 1 missing"), "{e}");
    }

    /// A network built through [`Params`] with BatchNorm (as ParseNet is): the batch counters are
    /// accepted and ignored, wherever they are; everything else is strict.
    #[test]
    fn params_accept_batch_counters_and_nothing_else() {
        let mut tensors = vec![("conv.weight", &[4, 3, 1, 1][..]), ("bn.weight", &[4]), ("bn.bias", &[4])];
        tensors.extend([("bn.running_mean", &[4][..]), ("bn.running_var", &[4]), ("bn.num_batches_tracked", &[])]);
        tensors.push(("other.num_batches_tracked", &[]));
        let file = sd(&tensors);
        let p = Params::new(&file, Device::Cpu);
        Conv2d::with_batch_norm(&p, "conv", "bn", ConvSpec::new(3, 4, 1, 1, 0)).unwrap();
        p.finish(Network::ParseNet, "ParseNet").unwrap();

        tensors.push(("stray", &[1]));
        let file = sd(&tensors);
        let p = Params::new(&file, Device::Cpu);
        Conv2d::with_batch_norm(&p, "conv", "bn", ConvSpec::new(3, 4, 1, 1, 0)).unwrap();
        let e = p.finish(Network::ParseNet, "ParseNet").unwrap_err().to_string();
        assert!(e.contains("does not match the ParseNet face parser (ParseNet): 1 unexpected: stray"), "{e}");
    }
}
