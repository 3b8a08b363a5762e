pub fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

pub fn scale(a: &[f32], s: f32) -> Vec<f32> {
    a.iter().map(|x| x * s).collect()
}

pub fn abs(a: &[f32]) -> Vec<f32> {
    a.iter().map(|x| x.abs()).collect()
}

pub fn abs_backward(a: &[f32], dy: &[f32]) -> Vec<f32> {
    a.iter()
        .zip(dy)
        .map(|(&x, &g)| {
            if x > 0.0 {
                g
            } else if x < 0.0 {
                -g
            } else {
                0.0
            }
        })
        .collect()
}

pub fn sum(a: &[f32]) -> f32 {
    a.iter().map(|&x| x as f64).sum::<f64>() as f32
}
