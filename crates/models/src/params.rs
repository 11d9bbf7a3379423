//! The trainable models' parameters as named fields. Each model lists its variables in
//! checkpoint order in one place; the checkpoint's keys, the variables handed to the
//! optimizer (whose saved state pairs with the keys by position) and the parameter count
//! all come from that list, so they cannot drift apart.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var, bail};

/// A kernel and its bias, saved as `{key}.weight` and `{key}.bias`.
pub(crate) struct Layer {
    key: &'static str,
    pub weight: Var,
    pub bias: Var,
}

impl Layer {
    /// `source` is asked for the weight before the bias: fresh weights draw from the RNG in
    /// that order.
    pub fn new(
        key: &'static str,
        weight: &[usize],
        bias: usize,
        source: &mut impl FnMut(&str, &[usize]) -> Result<Var>,
    ) -> Result<Self> {
        Ok(Self {
            weight: source(&format!("{key}.weight"), weight)?,
            bias: source(&format!("{key}.bias"), &[bias])?,
            key,
        })
    }

    pub fn named(&self) -> [(String, &Var); 2] {
        [
            (format!("{}.weight", self.key), &self.weight),
            (format!("{}.bias", self.key), &self.bias),
        ]
    }
}

/// Reads variables from saved weights, naming a missing key or a wrong shape.
pub(crate) fn saved<'a>(
    weights: &'a HashMap<String, Tensor>,
    dev: &'a Device,
) -> impl FnMut(&str, &[usize]) -> Result<Var> + 'a {
    move |key, shape| {
        let Some(t) = weights.get(key) else {
            bail!("weights lack `{key}`")
        };
        if t.dims() != shape {
            bail!("`{key}` has shape {:?}, expected {shape:?}", t.dims())
        }
        Var::from_tensor(&t.to_device(dev)?.to_dtype(DType::F32)?)
    }
}

/// Checkpoint tensors of named variables.
pub(crate) fn tensors<'a>(
    named: impl IntoIterator<Item = (String, &'a Var)>,
) -> Vec<(String, Tensor)> {
    named
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().clone()))
        .collect()
}

/// Layers' variables, weight before bias, in the order given.
pub(crate) fn vars<'a>(layers: impl IntoIterator<Item = &'a Layer>) -> Vec<Var> {
    layers
        .into_iter()
        .flat_map(|l| [l.weight.clone(), l.bias.clone()])
        .collect()
}

pub(crate) fn count<'a>(layers: impl IntoIterator<Item = &'a Layer>) -> usize {
    layers
        .into_iter()
        .map(|l| l.weight.elem_count() + l.bias.elem_count())
        .sum()
}
