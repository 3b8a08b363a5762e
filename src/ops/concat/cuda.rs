//! Concatenation along channels on the GPU (kernels/concat.cu): one copy launch per part.
use super::ConcatPart;
use crate::device::cuda::{check_len, CudaDevice, GpuBuffer, Kernel, KernelFile};
use crate::error::{Error, Result};

const FILE: &str = "concat.cu";
const COPY: Kernel = Kernel::new(FILE, "concat_copy_f32");
const SPLIT: Kernel = Kernel::new(FILE, "concat_split_f32");
pub const KERNELS: KernelFile = KernelFile::new(FILE, &[COPY, SPLIT]);

const OP: &str = "concat_channels (cuda)";

/// Concatenates `xs`, laid out by `parts`, along channels.
pub fn forward(
    dev: &CudaDevice,
    xs: &[&GpuBuffer<f32>],
    parts: &[ConcatPart],
) -> Result<GpuBuffer<f32>> {
    if xs.len() != parts.len() || parts.is_empty() {
        return Err(Error::shape(
            OP,
            format!("{} inputs for {} parts", xs.len(), parts.len()),
        ));
    }
    for (i, (x, p)) in xs.iter().zip(parts).enumerate() {
        check_len(OP, &format!("input {i}"), *x, p.len())?;
    }
    let mut y = dev.alloc::<f32>(parts[0].whole_len())?;
    for (x, p) in xs.iter().zip(parts) {
        dev.launch(COPY)
            .arg(p)
            .buf(*x)
            .out(&mut y)
            .run(dev.cfg(p.len() as u64))?;
    }
    Ok(y)
}

/// Splits dy into the parts' gradients.
pub fn backward(
    dev: &CudaDevice,
    dy: &GpuBuffer<f32>,
    parts: &[ConcatPart],
) -> Result<Vec<GpuBuffer<f32>>> {
    let Some(first) = parts.first() else {
        return Err(Error::shape(OP, "no parts"));
    };
    check_len(OP, "dy", dy, first.whole_len())?;
    parts
        .iter()
        .map(|p| {
            let mut dx = dev.alloc::<f32>(p.len())?;
            dev.launch(SPLIT)
                .arg(p)
                .buf(dy)
                .out(&mut dx)
                .run(dev.cfg(p.len() as u64))?;
            Ok(dx)
        })
        .collect()
}
