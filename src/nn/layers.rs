//! Layers: thin wrappers that own `ParamId`s in a `ParamStore` and call ops. They know nothing
//! about devices; a `Forward` carries the tape, the bound parameters and the mode.
use std::cell::RefCell;

use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::nn::params::{Bound, ParamId, ParamKind, ParamStore};
use crate::ops::batch_norm2d::{self, BatchStats};
use crate::ops::conv2d::{self, Conv2dArgs};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// One forward pass: where ops record, the parameters as vars, and whether BatchNorm uses batch
/// statistics (training) or running statistics (eval). Running-statistics updates are collected
/// here and applied by the trainer after the step, so the store is never mutated mid-pass.
pub struct Forward<'a> {
    pub tape: &'a Tape,
    pub params: &'a Bound,
    pub store: &'a ParamStore,
    pub training: bool,
    pub bn_updates: RefCell<Vec<RunningUpdate>>,
}

impl<'a> Forward<'a> {
    pub fn new(tape: &'a Tape, params: &'a Bound, store: &'a ParamStore, training: bool) -> Self {
        Forward {
            tape,
            params,
            store,
            training,
            bn_updates: RefCell::new(Vec::new()),
        }
    }

    pub fn var(&self, id: ParamId) -> &Var {
        self.params.var(id)
    }

    /// The running-statistics updates of this pass (empty in eval mode).
    pub fn take_bn_updates(&self) -> Vec<RunningUpdate> {
        std::mem::take(&mut self.bn_updates.borrow_mut())
    }

    /// Runs `pass` once in inference mode with the parameters of `store`: a tape that records
    /// nothing for backward, parameters bound without gradients, BatchNorm on running
    /// statistics.
    pub fn inference<T>(store: &ParamStore, pass: impl FnOnce(&Forward) -> Result<T>) -> Result<T> {
        let tape = Tape::inference();
        let bound = store.bind(&tape, false);
        pass(&Forward::new(&tape, &bound, store, false))
    }
}

/// Batch statistics of one BatchNorm layer, to fold into its running statistics.
pub struct RunningUpdate {
    pub running_mean: ParamId,
    pub running_var: ParamId,
    pub stats: BatchStats,
    pub momentum: f32,
}

/// Applies collected running-statistics updates to the store.
pub fn apply_bn_updates(store: &mut ParamStore, updates: Vec<RunningUpdate>) -> Result<()> {
    for u in updates {
        // try_clone: on a GPU this is a device copy, whose failure is an error, not a panic
        let mut rm = store.value(u.running_mean).try_clone()?;
        let mut rv = store.value(u.running_var).try_clone()?;
        batch_norm2d::update_running_stats(&mut rm, &mut rv, &u.stats, u.momentum)?;
        store.set(u.running_mean, rm)?;
        store.set(u.running_var, rv)?;
    }
    Ok(())
}

/// Both networks take [N,3,H,W] with H and W positive multiples of 16 (four 2x2 poolings).
pub fn check_image_batch(op: &'static str, d: &[usize]) -> Result<()> {
    let ok = d.len() == 4
        && d[1] == 3
        && d[2] > 0
        && d[3] > 0
        && d[2].is_multiple_of(16)
        && d[3].is_multiple_of(16);
    if ok {
        Ok(())
    } else {
        Err(crate::error::Error::shape(
            op,
            format!("input must be [N,3,H,W] with H and W positive multiples of 16, got {d:?}"),
        ))
    }
}

/// Scales a channel count by the width multiplier (at least one channel).
pub fn scaled(channels: usize, width_mult: f32) -> usize {
    ((channels as f32 * width_mult).round() as usize).max(1)
}

pub struct Conv2d {
    pub weight: ParamId,
    pub bias: Option<ParamId>,
    pub args: Conv2dArgs,
    pub in_channels: usize,
    pub out_channels: usize,
}

/// How a convolution's weights start.
#[derive(Clone, Copy, Debug)]
pub enum ConvInit {
    /// Kaiming normal, fan_out, ReLU gain, zero bias: torchvision's VGG initialisation.
    KaimingFanOut,
    /// PyTorch's default (uniform ±1/√fan_in for weight and bias): for output heads, where
    /// Kaiming's fan_out of 1 would give huge initial outputs.
    Default,
    /// Normal(0, std) weights and zero bias (GMP offsets: small, so the bias moves dominate).
    Normal(f32),
}

impl Conv2d {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        padding: usize,
        bias: bool,
        init: ConvInit,
        rng: &mut Rng,
    ) -> Conv2d {
        let dims = [c_out, c_in, k, k];
        let fan_in = (c_in * k * k) as f32;
        let (w, b) = match init {
            ConvInit::KaimingFanOut => {
                let std = (2.0 / (c_out * k * k) as f32).sqrt();
                (
                    Tensor::randn(&dims, std, rng),
                    Tensor::zeros(&[c_out], &Default::default()),
                )
            }
            ConvInit::Default => {
                let bound = 1.0 / fan_in.sqrt();
                (
                    Tensor::uniform(&dims, -bound, bound, rng),
                    Tensor::uniform(&[c_out], -bound, bound, rng),
                )
            }
            ConvInit::Normal(std) => (
                Tensor::randn(&dims, std, rng),
                Tensor::zeros(&[c_out], &Default::default()),
            ),
        };
        let weight = store.add(format!("{name}.weight"), ParamKind::Trainable, w);
        let bias = bias.then(|| store.add(format!("{name}.bias"), ParamKind::Trainable, b));
        Conv2d {
            weight,
            bias,
            args: Conv2dArgs { stride: 1, padding },
            in_channels: c_in,
            out_channels: c_out,
        }
    }

    pub fn forward(&self, f: &Forward, x: &Var) -> Result<Var> {
        conv2d::conv2d(
            f.tape,
            x,
            f.var(self.weight),
            self.bias.map(|b| f.var(b)),
            self.args,
        )
    }
}

pub struct BatchNorm2d {
    pub weight: ParamId,
    pub bias: ParamId,
    pub running_mean: ParamId,
    pub running_var: ParamId,
    pub eps: f32,
    pub momentum: f32,
}

impl BatchNorm2d {
    /// PyTorch defaults: weight 1, bias 0, running mean 0, running var 1, eps 1e-5, momentum 0.1.
    pub fn new(store: &mut ParamStore, name: &str, channels: usize) -> BatchNorm2d {
        let cpu = Default::default();
        BatchNorm2d {
            weight: store.add(
                format!("{name}.weight"),
                ParamKind::Trainable,
                Tensor::full(&[channels], 1.0, &cpu),
            ),
            bias: store.add(
                format!("{name}.bias"),
                ParamKind::Trainable,
                Tensor::zeros(&[channels], &cpu),
            ),
            running_mean: store.add(
                format!("{name}.running_mean"),
                ParamKind::Buffer,
                Tensor::zeros(&[channels], &cpu),
            ),
            running_var: store.add(
                format!("{name}.running_var"),
                ParamKind::Buffer,
                Tensor::full(&[channels], 1.0, &cpu),
            ),
            eps: 1e-5,
            momentum: 0.1,
        }
    }

    pub fn forward(&self, f: &Forward, x: &Var) -> Result<Var> {
        self.run(f, x, false)
    }

    /// `relu(self.forward(x))` as one op (`batch_norm2d::batch_norm2d_*_relu`): the same values
    /// and gradients, one pass and one saved tensor fewer.
    pub fn forward_relu(&self, f: &Forward, x: &Var) -> Result<Var> {
        self.run(f, x, true)
    }

    fn run(&self, f: &Forward, x: &Var, relu: bool) -> Result<Var> {
        let (gamma, beta) = (f.var(self.weight), f.var(self.bias));
        if f.training {
            let train = if relu {
                batch_norm2d::batch_norm2d_train_relu
            } else {
                batch_norm2d::batch_norm2d_train
            };
            let (y, stats) = train(f.tape, x, gamma, beta, self.eps)?;
            f.bn_updates.borrow_mut().push(RunningUpdate {
                running_mean: self.running_mean,
                running_var: self.running_var,
                stats,
                momentum: self.momentum,
            });
            Ok(y)
        } else {
            let eval = if relu {
                batch_norm2d::batch_norm2d_eval_relu
            } else {
                batch_norm2d::batch_norm2d_eval
            };
            eval(
                f.tape,
                x,
                gamma,
                beta,
                f.store.value(self.running_mean),
                f.store.value(self.running_var),
                self.eps,
            )
        }
    }
}

/// milesial's `DoubleConv`: (conv3x3 no bias → BatchNorm → ReLU) × 2, named
/// `<name>.double_conv.{0,1,3,4}`.
pub struct DoubleConv {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
}

impl DoubleConv {
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        c_in: usize,
        c_mid: usize,
        c_out: usize,
        rng: &mut Rng,
    ) -> DoubleConv {
        let p = format!("{name}.double_conv");
        let init = ConvInit::KaimingFanOut;
        DoubleConv {
            conv1: Conv2d::new(
                store,
                &format!("{p}.0"),
                c_in,
                c_mid,
                3,
                1,
                false,
                init,
                rng,
            ),
            bn1: BatchNorm2d::new(store, &format!("{p}.1"), c_mid),
            conv2: Conv2d::new(
                store,
                &format!("{p}.3"),
                c_mid,
                c_out,
                3,
                1,
                false,
                init,
                rng,
            ),
            bn2: BatchNorm2d::new(store, &format!("{p}.4"), c_out),
        }
    }

    pub fn forward(&self, f: &Forward, x: &Var) -> Result<Var> {
        let h = self.bn1.forward_relu(f, &self.conv1.forward(f, x)?)?;
        self.bn2.forward_relu(f, &self.conv2.forward(f, &h)?)
    }
}
