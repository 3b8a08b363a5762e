pub mod font;
pub mod overlay;
