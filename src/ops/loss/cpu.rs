//! Loss reductions, accumulated in f64.

/// Σ|z| of each of the `n` images; `z` holds `n` equal blocks (checked by the caller).
pub fn per_image_abs_sums(z: &[f32], n: usize) -> Vec<f64> {
    let per = z.len() / n;
    (0..n)
        .map(|b| {
            z[b * per..(b + 1) * per]
                .iter()
                .map(|&v| (v as f64).abs())
                .sum()
        })
        .collect()
}

fn sign(v: f64) -> f32 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// (1/N) Σ_n |Σ|z_n| − y_n|.
pub fn count_l1(z: &[f32], counts: &[f32]) -> f32 {
    let n = counts.len();
    let sums = per_image_abs_sums(z, n);
    let total: f64 = sums
        .iter()
        .zip(counts)
        .map(|(&s, &y)| (s - y as f64).abs())
        .sum();
    (total / n as f64) as f32
}

/// dz = (dloss/N) · sign(Σ|z_n| − y_n) · sign(z), with sign(0) = 0.
pub fn count_l1_backward(z: &[f32], counts: &[f32], dloss: f32) -> Vec<f32> {
    let n = counts.len();
    let per = z.len() / n;
    let sums = per_image_abs_sums(z, n);
    let mut dz = vec![0.0f32; z.len()];
    for (b, (&s, &y)) in sums.iter().zip(counts).enumerate() {
        let g = dloss / n as f32 * sign(s - y as f64);
        for (d, &v) in dz[b * per..(b + 1) * per].iter_mut().zip(&z[b * per..]) {
            *d = g * sign(v as f64);
        }
    }
    dz
}

/// mean((p − t)²).
pub fn mse(p: &[f32], t: &[f32]) -> f32 {
    let s: f64 = p
        .iter()
        .zip(t)
        .map(|(&a, &b)| {
            let d = a as f64 - b as f64;
            d * d
        })
        .sum();
    (s / p.len() as f64) as f32
}

/// d/dp = (2·dloss/numel) · (p − t).
pub fn mse_backward(p: &[f32], t: &[f32], dloss: f32) -> Vec<f32> {
    let k = 2.0 * dloss / p.len() as f32;
    p.iter().zip(t).map(|(&a, &b)| k * (a - b)).collect()
}
