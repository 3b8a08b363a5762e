pub mod font;
pub mod overlay;
pub mod plot;
