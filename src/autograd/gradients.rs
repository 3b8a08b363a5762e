use std::collections::HashMap;

use super::{NodeId, Var};
use crate::tensor::Tensor;

/// Gradients of the leaves (parameters) reached by one backward pass.
#[derive(Default, Debug)]
pub struct Gradients {
    by_node: HashMap<NodeId, Tensor>,
}

impl Gradients {
    pub(super) fn insert(&mut self, node: NodeId, g: Tensor) {
        self.by_node.insert(node, g);
    }

    /// The gradient for a leaf `Var`, if the loss depends on it.
    pub fn get(&self, v: &Var) -> Option<&Tensor> {
        v.node().and_then(|n| self.by_node.get(&n))
    }

    /// Removes and returns the gradient (lets the optimiser free it once used).
    pub fn take(&mut self, v: &Var) -> Option<Tensor> {
        v.node().and_then(|n| self.by_node.remove(&n))
    }

    pub fn len(&self) -> usize {
        self.by_node.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }
}
