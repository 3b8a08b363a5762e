//! The autograd tape. Ops record a node (their inputs and a `Backward` holding what they saved)
//! while the tape is recording; `backward(loss)` walks the nodes in reverse, hands each its
//! output gradient, accumulates input gradients, and frees every intermediate gradient as soon
//! as it has been consumed. The tape knows ops only through the `Backward` trait, and nothing
//! about layers.
mod gradients;
pub use gradients::Gradients;

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Identifies a recorded node on one tape.
pub type NodeId = usize;

/// A value flowing through a forward pass, and (when recorded) its place on the tape.
#[derive(Clone, Debug)]
pub struct Var {
    value: Arc<Tensor>,
    node: Option<NodeId>,
}

impl Var {
    /// A value that needs no gradient (inputs, targets, frozen features).
    pub fn constant(t: Tensor) -> Var {
        Var {
            value: Arc::new(t),
            node: None,
        }
    }
    /// A constant sharing an existing value (frozen parameters, buffers).
    pub fn constant_arc(t: Arc<Tensor>) -> Var {
        Var {
            value: t,
            node: None,
        }
    }
    pub fn value(&self) -> &Tensor {
        &self.value
    }
    /// Shared handle to the value, for saving in a `Backward` without copying.
    pub fn value_arc(&self) -> Arc<Tensor> {
        self.value.clone()
    }
    pub fn node(&self) -> Option<NodeId> {
        self.node
    }
    pub fn requires_grad(&self) -> bool {
        self.node.is_some()
    }
    pub fn dims(&self) -> &[usize] {
        self.value.dims()
    }
}

/// The backward pass of one recorded op.
pub trait Backward {
    /// Gradients with respect to each input, in the order they were recorded. `needs[i]` is
    /// false for inputs that need no gradient; return `None` there (and skip the work).
    fn backward(&self, grad_out: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>>;
    /// Op name, for profiles and error messages.
    fn name(&self) -> &'static str;
}

struct Node {
    inputs: Vec<Option<NodeId>>,
    backward: Option<Box<dyn Backward>>, // None for leaves
}

/// Per-op wall time of a step, filled when profiling is on.
#[derive(Default, Clone, Debug)]
pub struct Profile {
    pub entries: Vec<(String, Duration)>,
}

impl Profile {
    /// Totals per op name, largest first.
    pub fn totals(&self) -> Vec<(String, Duration, usize)> {
        let mut m: std::collections::BTreeMap<&str, (Duration, usize)> = Default::default();
        for (n, d) in &self.entries {
            let e = m.entry(n).or_default();
            e.0 += *d;
            e.1 += 1;
        }
        let mut v: Vec<_> = m
            .into_iter()
            .map(|(n, (d, c))| (n.to_string(), d, c))
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v
    }
}

pub struct Tape {
    nodes: RefCell<Vec<Node>>,
    recording: bool,
    profiling: Cell<bool>,
    profile: RefCell<Profile>,
}

impl Default for Tape {
    fn default() -> Self {
        Self::new()
    }
}

impl Tape {
    /// A tape that records ops for a backward pass.
    pub fn new() -> Self {
        Tape {
            nodes: RefCell::new(Vec::new()),
            recording: true,
            profiling: Cell::new(false),
            profile: Default::default(),
        }
    }

    /// A tape for inference: records nothing, so activations are freed as soon as dropped.
    pub fn inference() -> Self {
        Tape {
            recording: false,
            ..Self::new()
        }
    }

    pub fn is_recording(&self) -> bool {
        self.recording
    }

    pub fn set_profiling(&self, on: bool) {
        self.profiling.set(on);
    }

    /// Takes the collected per-op timings (forward entries are "op", backward "op.backward").
    pub fn take_profile(&self) -> Profile {
        std::mem::take(&mut self.profile.borrow_mut())
    }

    /// Times `f` under `name` when profiling (ops call this around their forward work). GPU
    /// launches are asynchronous, so every open GPU's stream is synchronised before and after
    /// `f`: the wall time then covers the op's device work (and only it).
    pub fn timed<T>(&self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if !self.profiling.get() {
            return f();
        }
        crate::device::synchronize_all()?;
        let t0 = Instant::now();
        let r = f();
        crate::device::synchronize_all()?;
        self.profile
            .borrow_mut()
            .entries
            .push((name.to_string(), t0.elapsed()));
        r
    }

    /// A trainable leaf (a parameter). On an inference tape it is a constant. Takes an `Arc`
    /// so parameters are shared with the tape, not copied, every step.
    pub fn leaf(&self, t: impl Into<Arc<Tensor>>) -> Var {
        let t = t.into();
        if !self.recording {
            return Var {
                value: t,
                node: None,
            };
        }
        let mut nodes = self.nodes.borrow_mut();
        nodes.push(Node {
            inputs: vec![],
            backward: None,
        });
        Var {
            value: t,
            node: Some(nodes.len() - 1),
        }
    }

    /// Records an op's output. If nothing needs a gradient (or the tape is not recording) the
    /// output is a constant and `backward` is dropped at once, freeing what it saved.
    pub fn record(
        &self,
        out: impl Into<Arc<Tensor>>,
        inputs: &[&Var],
        backward: impl Backward + 'static,
    ) -> Var {
        let out = out.into();
        if !self.recording || inputs.iter().all(|v| v.node.is_none()) {
            return Var {
                value: out,
                node: None,
            };
        }
        let mut nodes = self.nodes.borrow_mut();
        nodes.push(Node {
            inputs: inputs.iter().map(|v| v.node).collect(),
            backward: Some(Box::new(backward)),
        });
        Var {
            value: out,
            node: Some(nodes.len() - 1),
        }
    }

    /// Number of recorded nodes (for tests of inference mode and freeing).
    pub fn len(&self) -> usize {
        self.nodes.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Back-propagates from a scalar `loss`, returning the gradient of every leaf that the loss
    /// depends on. The tape is emptied: every saved activation is freed.
    pub fn backward(&self, loss: &Var) -> Result<Gradients> {
        let root = loss.node.ok_or_else(|| {
            Error::Invalid("backward: the loss does not depend on any parameter".into())
        })?;
        if loss.value.numel() != 1 {
            return Err(Error::shape(
                "backward",
                format!("loss must be a scalar, got {}", loss.value.shape()),
            ));
        }
        let nodes = std::mem::take(&mut *self.nodes.borrow_mut());
        // Which nodes lie on a path to the root (only those need gradients).
        let mut needed = vec![false; nodes.len()];
        needed[root] = true;
        for i in (0..=root).rev() {
            if needed[i] {
                for inp in nodes[i].inputs.iter().flatten() {
                    needed[*inp] = true;
                }
            }
        }
        let mut grads: Vec<Option<Tensor>> = (0..nodes.len()).map(|_| None).collect();
        grads[root] = Some(Tensor::try_full(
            loss.value.dims(),
            1.0,
            &loss.value.device(),
        )?);
        let mut leaves = Gradients::default();
        let mut nodes = nodes;
        for i in (0..=root).rev() {
            let Some(g) = grads[i].take() else { continue };
            let node = &mut nodes[i];
            let Some(bw) = node.backward.take() else {
                leaves.insert(i, g);
                continue;
            };
            let needs: Vec<bool> = node
                .inputs
                .iter()
                .map(|n| n.is_some_and(|n| needed[n]))
                .collect();
            if self.profiling.get() {
                crate::device::synchronize_all()?;
            }
            let t0 = self.profiling.get().then(Instant::now);
            let name = bw.name();
            let input_grads = bw.backward(&g, &needs)?;
            if let Some(t0) = t0 {
                crate::device::synchronize_all()?;
                self.profile
                    .borrow_mut()
                    .entries
                    .push((format!("{name}.backward"), t0.elapsed()));
            }
            drop(bw); // frees the activations this op saved
            if input_grads.len() != node.inputs.len() {
                return Err(Error::Invalid(format!(
                    "{name}: backward returned {} gradients for {} inputs",
                    input_grads.len(),
                    node.inputs.len()
                )));
            }
            for (inp, ig) in node.inputs.iter().zip(input_grads) {
                if let (Some(j), Some(ig)) = (inp, ig) {
                    if !needed[*j] {
                        continue;
                    }
                    grads[*j] = Some(match grads[*j].take() {
                        None => ig,
                        Some(mut acc) => {
                            acc.add_assign(&ig)?;
                            acc
                        }
                    });
                }
            }
        }
        Ok(leaves)
    }
}
