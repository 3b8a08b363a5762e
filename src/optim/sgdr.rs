//! Cosine annealing with warm restarts (Loshchilov & Hutter), computed in closed form from a
//! (possibly fractional) epoch exactly as PyTorch's `CosineAnnealingWarmRestarts.step(epoch)`.
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sgdr {
    pub base_lr: f64,
    /// Length of the first cycle in epochs.
    pub t_0: f64,
    /// Each cycle is `t_mult` times longer than the previous one (an integer ≥ 1 in PyTorch).
    pub t_mult: f64,
    pub eta_min: f64,
}

impl Sgdr {
    pub fn new(base_lr: f64, t_0: f64, t_mult: f64, eta_min: f64) -> Sgdr {
        Sgdr {
            base_lr,
            t_0,
            t_mult,
            eta_min,
        }
    }

    /// (T_cur, T_i) at `epoch`, as PyTorch's `step(epoch)` computes them.
    pub fn cycle(&self, epoch: f64) -> (f64, f64) {
        if epoch < self.t_0 {
            return (epoch, self.t_0);
        }
        if self.t_mult == 1.0 {
            return (epoch % self.t_0, self.t_0);
        }
        let n = ((epoch / self.t_0 * (self.t_mult - 1.0) + 1.0).ln() / self.t_mult.ln()).floor();
        let t_cur = epoch - self.t_0 * (self.t_mult.powf(n) - 1.0) / (self.t_mult - 1.0);
        (t_cur, self.t_0 * self.t_mult.powf(n))
    }

    /// The learning rate at a fractional epoch (epoch + batch/batches_per_epoch).
    pub fn lr(&self, epoch: f64) -> f64 {
        let (t_cur, t_i) = self.cycle(epoch);
        self.eta_min
            + (self.base_lr - self.eta_min) * (1.0 + (std::f64::consts::PI * t_cur / t_i).cos())
                / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    /// Values worked by hand from the SGDR formula
    /// lr = eta_min + (base - eta_min)(1 + cos(pi T_cur / T_i)) / 2.
    #[test]
    fn sgdr_matches_hand_computed_values() {
        let s = Sgdr::new(1e-3, 10.0, 1.0, 0.0);
        close(s.lr(0.0), 1e-3);
        close(s.lr(5.0), 0.5e-3); // cos(pi/2) = 0
        close(s.lr(10.0), 1e-3); // restart
        close(
            s.lr(12.5),
            1e-3 * (1.0 + (std::f64::consts::PI / 4.0).cos()) / 2.0,
        );

        // T_0 = 2, T_mult = 2: cycles [0,2), [2,6), [6,14)
        let s = Sgdr::new(1.0, 2.0, 2.0, 0.1);
        assert_eq!(s.cycle(1.0), (1.0, 2.0));
        assert_eq!(s.cycle(2.0), (0.0, 4.0));
        assert_eq!(s.cycle(5.0), (3.0, 4.0));
        assert_eq!(s.cycle(6.0), (0.0, 8.0));
        close(s.lr(4.0), 0.1 + 0.9 * 0.5); // halfway through the second cycle
        close(s.lr(6.0), 1.0);
        close(s.lr(10.0), 0.55);
    }
}
