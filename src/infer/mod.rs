//! Inference on images of any size.
pub mod tiling;
