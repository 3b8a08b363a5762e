//! Named parameter storage shared by the layers of a network. Layers hold `ParamId`s; a forward
//! pass binds the store to a tape (one `Var` per tensor) so parameters are shared, not copied.
use std::sync::Arc;

use crate::autograd::{Gradients, Tape, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Index of a tensor in its `ParamStore`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(pub usize);

/// Trainable tensors get gradients and optimiser state; buffers (BatchNorm running statistics)
/// are saved in checkpoints but updated by the forward pass, not the optimiser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    Trainable,
    Buffer,
}

#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub kind: ParamKind,
    pub value: Arc<Tensor>,
}

#[derive(Clone, Debug, Default)]
pub struct ParamStore {
    params: Vec<Param>,
}

impl ParamStore {
    pub fn add(&mut self, name: impl Into<String>, kind: ParamKind, value: Tensor) -> ParamId {
        self.params.push(Param {
            name: name.into(),
            kind,
            value: Arc::new(value),
        });
        ParamId(self.params.len() - 1)
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    pub fn get(&self, id: ParamId) -> &Param {
        &self.params[id.0]
    }

    pub fn value(&self, id: ParamId) -> &Tensor {
        &self.params[id.0].value
    }

    pub fn iter(&self) -> impl Iterator<Item = (ParamId, &Param)> {
        self.params.iter().enumerate().map(|(i, p)| (ParamId(i), p))
    }

    pub fn find(&self, name: &str) -> Option<ParamId> {
        self.params.iter().position(|p| p.name == name).map(ParamId)
    }

    /// Replaces a tensor's value; the shape must not change.
    pub fn set(&mut self, id: ParamId, value: Tensor) -> Result<()> {
        let p = &mut self.params[id.0];
        if p.value.dims() != value.dims() {
            return Err(Error::shape(
                "ParamStore::set",
                format!(
                    "{}: expected {}, got {}",
                    p.name,
                    p.value.shape(),
                    value.shape()
                ),
            ));
        }
        p.value = Arc::new(value);
        Ok(())
    }

    /// Mutable access for in-place updates (optimiser). Copies only if the value is still shared
    /// (a `Var` of a live tape holds it), so after `backward` the update happens in place.
    pub fn value_mut(&mut self, id: ParamId) -> &mut Tensor {
        Arc::make_mut(&mut self.params[id.0].value)
    }

    /// Number of trainable scalars.
    pub fn trainable_count(&self) -> usize {
        self.params
            .iter()
            .filter(|p| p.kind == ParamKind::Trainable)
            .map(|p| p.value.numel())
            .sum()
    }

    /// Where the parameters live (the CPU for an empty store).
    pub fn device(&self) -> Device {
        self.params
            .first()
            .map(|p| p.value.device())
            .unwrap_or_default()
    }

    /// Moves every tensor to `device`.
    pub fn to_device(&mut self, device: &Device) -> Result<()> {
        for p in &mut self.params {
            if p.value.device() != *device {
                p.value = Arc::new(p.value.to_device(device)?);
            }
        }
        Ok(())
    }

    /// Binds every tensor to `tape`: trainable ones become leaves (when `trainable`), the rest
    /// constants. The returned vars are indexed by `ParamId`.
    pub fn bind(&self, tape: &Tape, trainable: bool) -> Bound {
        Bound {
            vars: self
                .params
                .iter()
                .map(|p| {
                    if trainable && p.kind == ParamKind::Trainable {
                        tape.leaf(p.value.clone())
                    } else {
                        Var::constant_arc(p.value.clone())
                    }
                })
                .collect(),
        }
    }
}

/// The store's tensors as `Var`s of one forward pass.
pub struct Bound {
    vars: Vec<Var>,
}

impl Bound {
    pub fn var(&self, id: ParamId) -> &Var {
        &self.vars[id.0]
    }

    /// Pairs each trainable parameter with its gradient (None when the loss did not reach it).
    pub fn take_grads(&self, grads: &mut Gradients) -> Vec<Option<Tensor>> {
        self.vars.iter().map(|v| grads.take(v)).collect()
    }
}
