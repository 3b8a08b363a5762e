//! Models that ship inside dcl: for each data set, a counter and the localizer trained on it,
//! built into the binary from `models/<name>/` so that `dcl count --model NAME` counts with no
//! training and no files to find. Each folder's MODEL.md is its model card.
use std::path::PathBuf;

use crate::checkpoint::{load_pair_from, Pair, Source};
use crate::device::Device;
use crate::error::{Error, Result};

/// One shipped model: its name, what it was trained on, both networks' safetensors bytes
/// and its model card.
pub struct ShippedModel {
    pub name: &'static str,
    /// The data set, as `dcl train --data` knows it, and the cells it counts.
    pub data: &'static str,
    pub counter: &'static [u8],
    pub localizer: &'static [u8],
    /// MODEL.md: data, recipe, the commands that reproduce it, val metrics.
    pub card: &'static str,
}

macro_rules! shipped {
    ($name:literal, $data:literal) => {
        ShippedModel {
            name: $name,
            data: $data,
            counter: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/models/",
                $name,
                "/counter.safetensors"
            )),
            localizer: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/models/",
                $name,
                "/localizer.safetensors"
            )),
            card: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/models/",
                $name,
                "/MODEL.md"
            )),
        }
    };
}

/// Every shipped model, in the order `dcl models` lists them.
pub static MODELS: &[ShippedModel] = &[
    shipped!("vgg-cells", "vgg: synthetic fluorescence cells"),
    shipped!("adi-adipocytes", "adi: adipocytes in H&E sections"),
    shipped!("mbm-bone-marrow", "mbm: bone-marrow nuclei in H&E sections"),
];

/// The shipped model called `name`; the error lists the names there are.
pub fn find(name: &str) -> Result<&'static ShippedModel> {
    MODELS.iter().find(|m| m.name == name).ok_or_else(|| {
        let names: Vec<&str> = MODELS.iter().map(|m| m.name).collect();
        Error::Invalid(format!(
            "no shipped model called '{name}': there are {} (see `dcl models`)",
            names.join(", ")
        ))
    })
}

impl ShippedModel {
    /// What errors and outputs call one of its networks, e.g. `model vgg-cells (counter)`.
    pub fn label(&self, net: &str) -> PathBuf {
        PathBuf::from(format!("model {} ({net})", self.name))
    }

    /// The first paragraph of its card after the title: what `dcl models` prints.
    pub fn summary(&self) -> String {
        self.card
            .lines()
            .skip_while(|l| l.starts_with('#') || l.trim().is_empty())
            .take_while(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Opens its counter and (unless `with_localizer` is false) its localizer on `device`,
    /// with their hashes (as `checkpoint::load_pair_from`).
    pub fn load(&self, with_localizer: bool, device: &Device) -> Result<Pair> {
        let (cl, ll) = (self.label("counter"), self.label("localizer"));
        let counter = Source::Bytes {
            name: &cl,
            bytes: self.counter,
        };
        let localizer = with_localizer.then_some(Source::Bytes {
            name: &ll,
            bytes: self.localizer,
        });
        load_pair_from(counter, localizer, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_model_loads_as_a_pair_with_a_card() {
        for m in MODELS {
            let p = m.load(true, &Device::Cpu).unwrap();
            assert!(p.counter.counter().is_some(), "{}: a counter", m.name);
            let l = p.localizer.unwrap();
            assert_eq!(l.config.counter_hash, Some(p.counter_hash));
            assert!(p.localizer_hash.is_some());
            assert!(m.card.starts_with("# "), "{}: card title", m.name);
            assert!(m.summary().len() > 40, "{}: card summary", m.name);
        }
        assert!(find("vgg-cells").is_ok());
        let e = find("vgg").err().unwrap().to_string();
        assert!(
            e.contains("vgg-cells") && e.contains("mbm-bone-marrow"),
            "{e}"
        );
    }
}
