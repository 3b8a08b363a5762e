//! safetensors checkpoints. A model file holds every parameter and BatchNorm running statistic
//! under the DESIGN §1 names (plus PyTorch's `num_batches_tracked`, so the file loads into the
//! PyTorch modules with `strict=True`) and the model configuration in the metadata entry
//! `dcl.config`. Files are written atomically; loading refuses missing, extra or misshapen
//! tensors with an error naming the tensor.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::fsutil::atomic_write;
use crate::nn::{
    CountNet, Counter, Coupled, Localizer, ModelConfig, ModelKind, Network, ParamStore,
};
use crate::tensor::Tensor;

pub const CONFIG_KEY: &str = "dcl.config";
const BN_STEPS_SUFFIX: &str = ".num_batches_tracked";

/// A tensor read from a file: its shape and f32 values.
pub type Loaded = (Vec<usize>, Vec<f32>);

/// Writes f32 tensors (and i64 scalars) with string metadata, atomically. Non-finite values
/// are refused: nothing is written.
pub fn write_tensors(
    path: &Path,
    tensors: &[(String, &Tensor)],
    scalars_i64: &[(String, i64)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let mut bytes: Vec<(String, Vec<usize>, Vec<u8>, Dtype)> = tensors
        .iter()
        .map(|(n, t)| {
            // to_host: a GPU tensor's copy can fail (and surface an earlier kernel fault).
            let host = t.to_host()?;
            // Never write weights that no loader accepts (see `read_model`).
            let bad = host.iter().filter(|v| !v.is_finite()).count();
            if bad > 0 {
                return Err(Error::Checkpoint {
                    path: path.into(),
                    msg: format!(
                        "tensor {n} holds {bad} non-finite values (NaN or infinite) of {}: not \
                         written",
                        host.len()
                    ),
                });
            }
            let data = bytemuck::cast_slice::<f32, u8>(&host).to_vec();
            Ok((n.clone(), t.dims().to_vec(), data, Dtype::F32))
        })
        .collect::<Result<_>>()?;
    bytes.extend(
        scalars_i64
            .iter()
            .map(|(n, v)| (n.clone(), vec![], v.to_le_bytes().to_vec(), Dtype::I64)),
    );
    let views = bytes
        .iter()
        .map(|(n, dims, data, dt)| {
            TensorView::new(*dt, dims.clone(), data)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Checkpoint {
                    path: path.into(),
                    msg: format!("tensor {n}: {e}"),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let out = safetensors::serialize(views, Some(metadata)).map_err(|e| Error::Checkpoint {
        path: path.into(),
        msg: format!("cannot serialise: {e}"),
    })?;
    atomic_write(path, &out)
}

/// The largest checkpoint or snapshot read (a VGG-19-BN counter at `width_mult` 4 with its
/// optimiser moments is about 3.7 GB): a bigger file, or one that is not a regular file (a
/// device, a pipe), is refused before it is read.
pub const MAX_CHECKPOINT_BYTES: u64 = 6 << 30;

/// Every f32 tensor of a file (i64 tensors separately) and its metadata.
pub type Contents = (
    HashMap<String, String>,
    BTreeMap<String, Loaded>,
    BTreeMap<String, i64>,
);

/// Reads every f32 tensor of a file (i64 tensors are returned separately) and its metadata.
pub fn read_tensors(path: &Path) -> Result<Contents> {
    let err = |msg: String| Error::Checkpoint {
        path: path.into(),
        msg,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    if meta.len() > MAX_CHECKPOINT_BYTES {
        return Err(err(format!(
            "{} bytes: larger than any dcl checkpoint ({MAX_CHECKPOINT_BYTES} at most)",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    parse_tensors(&bytes).map_err(err)
}

/// `read_tensors` of bytes in memory; the error is the problem alone (callers name the file).
pub fn parse_tensors(bytes: &[u8]) -> std::result::Result<Contents, String> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
    let (_, meta) =
        SafeTensors::read_metadata(bytes).map_err(|e| format!("bad safetensors header: {e}"))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let mut floats = BTreeMap::new();
    let mut ints = BTreeMap::new();
    for (name, view) in st.iter() {
        match view.dtype() {
            Dtype::F32 => {
                let vals: Vec<f32> = view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                floats.insert(name.to_string(), (view.shape().to_vec(), vals));
            }
            Dtype::I64 if view.shape().iter().product::<usize>() == 1 && view.data().len() == 8 => {
                let d = view.data();
                let mut b = [0u8; 8];
                b.copy_from_slice(d);
                ints.insert(name.to_string(), i64::from_le_bytes(b));
            }
            other => {
                return Err(format!(
                    "tensor {name} has dtype {other:?} and shape {:?}; only F32 (and I64 \
                     num_batches_tracked scalars) are supported",
                    view.shape()
                ))
            }
        }
    }
    Ok((metadata, floats, ints))
}

/// The first tensor holding a NaN or an infinity, with how many of its values are.
pub fn first_non_finite<'a>(
    tensors: impl IntoIterator<Item = (&'a String, &'a Loaded)>,
) -> Option<(String, usize, usize)> {
    tensors.into_iter().find_map(|(name, (_, vals))| {
        let bad = vals.iter().filter(|v| !v.is_finite()).count();
        (bad > 0).then(|| (name.clone(), bad, vals.len()))
    })
}

/// Names of the BatchNorm layers of a store (those with running statistics).
fn bn_prefixes(store: &ParamStore) -> Vec<String> {
    store
        .iter()
        .filter_map(|(_, p)| p.name.strip_suffix(".running_mean").map(str::to_string))
        .collect()
}

/// Saves a model (its configuration, every tensor, and the number of BatchNorm updates).
pub fn save_model(
    path: &Path,
    config: &ModelConfig,
    store: &ParamStore,
    bn_steps: u64,
) -> Result<()> {
    let tensors: Vec<(String, &Tensor)> = store
        .iter()
        .map(|(_, p)| (p.name.clone(), p.value.as_ref()))
        .collect();
    let steps: Vec<(String, i64)> = bn_prefixes(store)
        .into_iter()
        .map(|p| (format!("{p}{BN_STEPS_SUFFIX}"), bn_steps as i64))
        .collect();
    let mut meta = HashMap::new();
    meta.insert(CONFIG_KEY.to_string(), config.to_json());
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(
        "dcl.version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    write_tensors(path, &tensors, &steps, meta)
}

/// `save_model` of a network's own configuration and tensors.
pub fn save_network(path: &Path, net: &impl Network, bn_steps: u64) -> Result<()> {
    save_model(path, net.config(), net.store(), bn_steps)
}

/// Copies loaded tensors into a freshly built store, refusing any mismatch by name.
pub fn load_into(
    path: &Path,
    store: &mut ParamStore,
    mut floats: BTreeMap<String, Loaded>,
) -> Result<()> {
    let err = |msg: String| Error::Checkpoint {
        path: path.into(),
        msg,
    };
    let ids: Vec<_> = store.iter().map(|(id, p)| (id, p.name.clone())).collect();
    for (id, name) in ids {
        let (dims, vals) = floats
            .remove(&name)
            .ok_or_else(|| err(format!("missing tensor {name}")))?;
        let want = store.value(id).dims().to_vec();
        if dims != want {
            return Err(err(format!(
                "tensor {name} has shape {dims:?}, the model expects {want:?}"
            )));
        }
        let device = store.value(id).device();
        store.set(id, Tensor::from_vec(vals, &dims)?.to_device(&device)?)?;
    }
    if let Some(extra) = floats.keys().next() {
        return Err(err(format!(
            "unexpected tensor {extra} (not part of this model)"
        )));
    }
    Ok(())
}

fn config_from_metadata(path: &Path, meta: &HashMap<String, String>) -> Result<ModelConfig> {
    let s = meta.get(CONFIG_KEY).ok_or_else(|| Error::Checkpoint {
        path: path.into(),
        msg: format!("no '{CONFIG_KEY}' metadata: not a dcl checkpoint"),
    })?;
    ModelConfig::from_json(s).map_err(|e| Error::Checkpoint {
        path: path.into(),
        msg: format!("{CONFIG_KEY}: {e}"),
    })
}

/// Checks a checkpoint's contents: its configuration (every field in bounds), that it holds
/// a network of `kind` of about the configured size, integer tensors, and finite values.
fn check_model(
    path: &Path,
    (meta, floats, ints): Contents,
    kind: ModelKind,
) -> Result<(ModelConfig, BTreeMap<String, Loaded>, u64)> {
    let config = config_from_metadata(path, &meta)?;
    if config.model != kind {
        return Err(Error::Checkpoint {
            path: path.into(),
            msg: format!(
                "holds a {:?} network, but a {:?} was expected",
                config.model, kind
            ),
        });
    }
    let err = |msg: String| Error::Checkpoint {
        path: path.into(),
        msg,
    };
    if let Some(bad) = ints.keys().find(|k| !k.ends_with(BN_STEPS_SUFFIX)) {
        return Err(err(format!("unexpected integer tensor {bad}")));
    }
    if let Some((name, v)) = ints.iter().find(|(_, v)| **v < 0) {
        return Err(err(format!("tensor {name} is {v}, a count must be >= 0")));
    }
    let bn_steps = ints.values().copied().max().unwrap_or(0) as u64;
    // The network is built from the configuration only if the file holds about as many values
    // as that network (names and shapes are checked once it is built): what is allocated is
    // bounded by the file's own size (at most twice its values, plus a million).
    let held: u64 = floats.values().map(|(_, v)| v.len() as u64).sum();
    let want = config.parameter_count();
    if want > held.saturating_mul(2).saturating_add(1 << 20) {
        return Err(err(format!(
            "its tensors hold {held} values but the {} its dcl.config describes has {want} \
             (configuration and tensors do not belong together)",
            kind.name()
        )));
    }
    if let Some((name, bad, n)) = first_non_finite(&floats) {
        return Err(err(format!(
            "tensor {name} holds {bad} non-finite values (NaN or infinite) of {n}: the weights \
             are unusable"
        )));
    }
    Ok((config, floats, bn_steps))
}

/// Where a checkpoint is read from: a file, or bytes built into dcl (a shipped model, see
/// `crate::shipped`); `name` is what errors and outputs call it.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    File(&'a Path),
    Bytes { name: &'a Path, bytes: &'a [u8] },
}

impl<'a> Source<'a> {
    pub fn name(&self) -> &'a Path {
        match *self {
            Source::File(p) => p,
            Source::Bytes { name, .. } => name,
        }
    }

    fn contents(&self) -> Result<Contents> {
        match *self {
            Source::File(p) => read_tensors(p),
            Source::Bytes { name, bytes } => {
                parse_tensors(bytes).map_err(|msg| Error::Checkpoint {
                    path: name.into(),
                    msg,
                })
            }
        }
    }
}

/// Loads a checkpoint of network `N` from `src`; returns the network and its BatchNorm step
/// count.
pub fn load_model_from<N: Network>(src: Source) -> Result<(N, u64)> {
    model_from_contents(src.name(), src.contents()?)
}

/// A network `N` built from a checkpoint's parsed contents; `name` names it in errors.
fn model_from_contents<N: Network>(name: &Path, contents: Contents) -> Result<(N, u64)> {
    let (config, floats, steps) = check_model(name, contents, N::KIND)?;
    let mut net = N::new(&config, 0)?;
    load_into(name, net.store_mut(), floats)?;
    Ok((net, steps))
}

/// Loads a checkpoint of network `N`; returns the network and its BatchNorm step count.
pub fn load_model<N: Network>(path: &Path) -> Result<(N, u64)> {
    load_model_from(Source::File(path))
}

/// `load_model` of a checkpoint held in memory; `name` names it in errors.
pub fn load_model_bytes<N: Network>(bytes: &[u8], name: &Path) -> Result<(N, u64)> {
    load_model_from(Source::Bytes { name, bytes })
}

/// Loads a counter checkpoint; returns the network and its BatchNorm step count.
pub fn load_counter(path: &Path) -> Result<(Counter, u64)> {
    load_model(path)
}

/// Loads a localizer checkpoint; returns the network and its BatchNorm step count.
pub fn load_localizer(path: &Path) -> Result<(Localizer, u64)> {
    load_model(path)
}

/// Loads what `--counter` names: a counter, or a coupled baseline (which counts by itself);
/// any other network is refused naming the file.
pub fn load_count_net(path: &Path) -> Result<CountNet> {
    load_count_net_from(Source::File(path))
}

/// `load_count_net` from a file or from bytes.
pub fn load_count_net_from(src: Source) -> Result<CountNet> {
    count_net_from_contents(src.name(), src.contents()?)
}

/// `load_count_net` of a checkpoint's parsed contents.
fn count_net_from_contents(path: &Path, contents: Contents) -> Result<CountNet> {
    let kind = config_from_metadata(path, &contents.0)?.model;
    let (config, floats, _) =
        match kind {
            ModelKind::Counter | ModelKind::Coupled => check_model(path, contents, kind)?,
            ModelKind::Localizer => return Err(Error::file(
                path,
                "holds a localizer, not a counter (or a coupled model): pass it with --localizer",
            )),
        };
    Ok(match kind {
        ModelKind::Coupled => {
            let mut net = Coupled::new(&config, 0)?;
            load_into(path, &mut net.store, floats)?;
            CountNet::Coupled(net)
        }
        _ => {
            let mut net = Counter::new(&config, 0)?;
            load_into(path, &mut net.store, floats)?;
            CountNet::Counter(net)
        }
    })
}

/// A counter (or a coupled model), optionally the localizer trained on it, and their hashes
/// (`file_hash`), which outputs record.
pub struct Pair {
    pub counter: CountNet,
    pub localizer: Option<Localizer>,
    pub counter_hash: String,
    pub localizer_hash: Option<String>,
}

/// Opens a counter (or a coupled model) and, optionally, the localizer trained on the
/// counter, on `device`. The localizer must have been trained on this very counter (it
/// records the counter's hash); also returns that hash, which outputs record.
pub fn load_pair(
    counter: &Path,
    localizer: Option<&Path>,
    device: &Device,
) -> Result<(CountNet, Option<Localizer>, String)> {
    let p = load_pair_from(Source::File(counter), localizer.map(Source::File), device)?;
    Ok((p.counter, p.localizer, p.counter_hash))
}

/// `load_pair` from files or bytes, each read and parsed once (the hashes are taken from the
/// parsed contents).
pub fn load_pair_from(
    counter_src: Source,
    localizer: Option<Source>,
    device: &Device,
) -> Result<Pair> {
    let counter = counter_src.name();
    let contents = counter_src.contents()?;
    let counter_hash = contents_hash(&contents);
    let mut c = count_net_from_contents(counter, contents)?;
    c.store_mut().to_device(device)?;
    let (l, localizer_hash) = match localizer {
        None => (None, None),
        Some(lsrc) => {
            let lp = lsrc.name();
            if c.counter().is_none() {
                return Err(Error::file(
                    counter,
                    "is a coupled model, which makes its own density map: it takes no \
                     --localizer",
                ));
            }
            let contents = lsrc.contents()?;
            let lhash = contents_hash(&contents);
            let (mut l, _) = model_from_contents::<Localizer>(lp, contents)?;
            check_pair(lp, &l.config, counter, c.config())?;
            if let Some(h) = &l.config.counter_hash {
                if *h != counter_hash {
                    return Err(Error::file(
                        lp,
                        format!(
                            "this localizer was trained on another counter (hash {h}), not {} \
                             (hash {counter_hash})",
                            counter.display()
                        ),
                    ));
                }
            }
            l.store.to_device(device)?;
            (Some(l), Some(lhash))
        }
    };
    Ok(Pair {
        counter: c,
        localizer: l,
        counter_hash,
        localizer_hash,
    })
}

/// A localizer records the counter it was trained on: its maps' scale (`input_scale`) and its
/// K (`gmp_points`) must be the counter's, or the localizer would be fed maps of another kind.
fn check_pair(lp: &Path, l: &ModelConfig, cp: &Path, c: &ModelConfig) -> Result<()> {
    let mismatch = |field: &str, lv: String, cv: String| {
        Err(Error::Checkpoint {
            path: lp.into(),
            msg: format!(
                "{CONFIG_KEY}: {field} {lv} differs from that of its counter {} ({cv}): the \
                 localizer was not trained on this counter",
                cp.display()
            ),
        })
    };
    if l.input_scale != c.input_scale {
        return mismatch(
            "input_scale",
            l.input_scale.to_string(),
            c.input_scale.to_string(),
        );
    }
    if l.gmp_points != c.gmp_points {
        return mismatch(
            "gmp_points",
            l.gmp_points.to_string(),
            c.gmp_points.to_string(),
        );
    }
    Ok(())
}

/// A short content hash of a checkpoint (FNV-1a 64 over its configuration and its tensors'
/// names, shapes and values, in name order), to tie outputs and localizers to the exact
/// counter they came from. It ignores the file's layout (safetensors metadata order varies
/// between writes), so the same model always hashes the same. Other files hash by bytes.
pub fn file_hash(path: &Path) -> Result<String> {
    match read_tensors(path) {
        Ok(contents) => Ok(contents_hash(&contents)),
        Err(_) => {
            let bytes =
                std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
            Ok(fnv_hex(&[&bytes]))
        }
    }
}

fn contents_hash((meta, floats, ints): &Contents) -> String {
    let mut parts: Vec<&[u8]> = vec![meta
        .get(CONFIG_KEY)
        .map(String::as_bytes)
        .unwrap_or_default()];
    let dims: Vec<Vec<u8>> = floats
        .values()
        .map(|(d, _)| d.iter().flat_map(|d| (*d as u64).to_le_bytes()).collect())
        .collect();
    let int_bytes: Vec<[u8; 8]> = ints.values().map(|v| v.to_le_bytes()).collect();
    for ((name, (_, vals)), d) in floats.iter().zip(&dims) {
        parts.push(name.as_bytes());
        parts.push(d);
        parts.push(bytemuck::cast_slice(vals));
    }
    for (name, v) in ints.keys().zip(&int_bytes) {
        parts.push(name.as_bytes());
        parts.push(v);
    }
    fnv_hex(&parts)
}

/// FNV-1a 64 over the concatenation of `parts`, as 16 hex digits.
fn fnv_hex(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in parts.iter().flat_map(|p| p.iter()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Backbone, ModelConfig};

    fn small() -> ModelConfig {
        ModelConfig {
            backbone: Backbone::Vgg19Bn,
            width_mult: 1.0 / 16.0,
            gmp_points: 4,
            ..ModelConfig::default()
        }
    }

    #[test]
    fn counter_round_trips_bit_exactly() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.safetensors");
        let mut c = Counter::new(&small(), 7).unwrap();
        // make running statistics non-trivial so they are checked too
        let id = c.store.find("counter.features.1.running_var").unwrap();
        let n = c.store.value(id).numel();
        c.store
            .set(
                id,
                Tensor::from_vec((0..n).map(|i| 1.0 + i as f32 * 0.1).collect(), &[n]).unwrap(),
            )
            .unwrap();
        save_model(&p, &c.config, &c.store, 42).unwrap();
        let (back, steps) = load_counter(&p).unwrap();
        assert_eq!(steps, 42);
        assert_eq!(back.config, c.config);
        assert_eq!(back.store.len(), c.store.len());
        for ((_, a), (_, b)) in c.store.iter().zip(back.store.iter()) {
            assert_eq!(a.name, b.name);
            let (va, vb) = (a.value.to_vec(), b.value.to_vec());
            assert!(
                va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{}",
                a.name
            );
        }
        // the file carries PyTorch's num_batches_tracked for each BatchNorm
        let (_, _, ints) = read_tensors(&p).unwrap();
        assert_eq!(
            ints.get("counter.features.1.num_batches_tracked"),
            Some(&42)
        );
        assert_eq!(ints.len(), 16);
        // the same model written twice hashes the same; another model does not
        let q = d.path().join("c2.safetensors");
        save_model(&q, &c.config, &c.store, 42).unwrap();
        assert_eq!(file_hash(&p).unwrap(), file_hash(&q).unwrap());
        save_model(&q, &c.config, &c.store, 41).unwrap();
        assert_ne!(file_hash(&p).unwrap(), file_hash(&q).unwrap());
    }

    #[test]
    fn bad_checkpoints_are_refused_naming_the_tensor() {
        let d = tempfile::tempdir().unwrap();
        let c = Counter::new(&small(), 7).unwrap();
        let meta = || {
            let mut m = HashMap::new();
            m.insert(CONFIG_KEY.to_string(), c.config.to_json());
            m
        };
        let all: Vec<(String, &Tensor)> = c
            .store
            .iter()
            .map(|(_, p)| (p.name.clone(), p.value.as_ref()))
            .collect();

        let p = d.path().join("missing.safetensors");
        let missing: Vec<_> = all
            .iter()
            .filter(|(n, _)| n != "counter.head.bias")
            .cloned()
            .collect();
        write_tensors(&p, &missing, &[], meta()).unwrap();
        let e = load_counter(&p).err().unwrap().to_string();
        assert!(
            e.contains("missing tensor counter.head.bias") && e.contains("missing.safetensors"),
            "{e}"
        );

        let p = d.path().join("extra.safetensors");
        let extra_t = Tensor::from_vec(vec![1.0], &[1]).unwrap();
        let mut extra = all.clone();
        extra.push(("counter.bogus".into(), &extra_t));
        write_tensors(&p, &extra, &[], meta()).unwrap();
        let e = load_counter(&p).err().unwrap().to_string();
        assert!(e.contains("unexpected tensor counter.bogus"), "{e}");

        let p = d.path().join("shape.safetensors");
        let wrong = Tensor::from_vec(vec![0.0; 2], &[2]).unwrap();
        let shaped: Vec<_> = all
            .iter()
            .map(|(n, t)| {
                if n == "counter.head.bias" {
                    (n.clone(), &wrong)
                } else {
                    (n.clone(), *t)
                }
            })
            .collect();
        write_tensors(&p, &shaped, &[], meta()).unwrap();
        let e = load_counter(&p).err().unwrap().to_string();
        assert!(e.contains("counter.head.bias has shape [2]"), "{e}");

        // a counter is not a localizer, and garbage is not a checkpoint
        let p = d.path().join("ok.safetensors");
        save_model(&p, &c.config, &c.store, 0).unwrap();
        let e = load_localizer(&p).err().unwrap().to_string();
        assert!(e.contains("Counter network"), "{e}");
        let p = d.path().join("junk.safetensors");
        std::fs::write(&p, b"not a checkpoint").unwrap();
        let e = load_counter(&p).err().unwrap().to_string();
        assert!(
            e.contains("junk.safetensors") && e.contains("safetensors"),
            "{e}"
        );
    }
    /// Crafted configurations (the aborts of the reliability issue) and NaN weights are refused
    /// naming the file and the field, before the network is built.
    #[test]
    fn crafted_configs_and_non_finite_weights_are_refused_before_building() {
        let d = tempfile::tempdir().unwrap();
        let c = Counter::new(&small(), 7).unwrap();
        let all: Vec<(String, &Tensor)> = c
            .store
            .iter()
            .map(|(_, p)| (p.name.clone(), p.value.as_ref()))
            .collect();
        let with_config = |name: &str, json: String| {
            let p = d.path().join(name);
            let mut m = HashMap::new();
            m.insert(CONFIG_KEY.to_string(), json);
            write_tensors(&p, &all, &[], m).unwrap();
            p
        };
        let base = c.config.to_json();
        for (field, from, to) in [
            ("input_scale", "\"input_scale\":1.0", "\"input_scale\":1e9"),
            ("input_scale", "\"input_scale\":1.0", "\"input_scale\":1e-9"),
            ("unet_width", "\"unet_width\":64", "\"unet_width\":10000000"),
            ("unet_width", "\"unet_width\":64", "\"unet_width\":1e7"),
            ("width_mult", "\"width_mult\":0.0625", "\"width_mult\":1e30"),
            (
                "point_threshold",
                "\"point_threshold\":0.01",
                "\"point_threshold\":-1",
            ),
            (
                "min_distance",
                "\"min_distance\":2.0",
                "\"min_distance\":-5",
            ),
        ] {
            assert!(base.contains(from), "{base}");
            let p = with_config("crafted.safetensors", base.replace(from, to));
            let e = load_counter(&p).err().unwrap().to_string();
            assert!(
                e.contains("crafted.safetensors") && e.contains(field),
                "{field}: {e}"
            );
        }
        // a valid configuration far larger than the tensors: refused by their count
        let wide = base.replace("\"width_mult\":0.0625", "\"width_mult\":4.0");
        let p = with_config("wide.safetensors", wide);
        let e = load_counter(&p).err().unwrap().to_string();
        assert!(e.contains("values but the counter"), "{e}");

        // NaN weights: refused at load (and never written by save_model)
        let p = d.path().join("nan.safetensors");
        let nan = Tensor::from_vec(vec![f32::NAN], &[1]).unwrap();
        let poisoned: Vec<_> = all
            .iter()
            .map(|(n, t)| {
                if n == "counter.head.bias" {
                    (n.clone(), &nan)
                } else {
                    (n.clone(), *t)
                }
            })
            .collect();
        let e = write_tensors(&p, &poisoned, &[], HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("non-finite") && !p.exists(), "{e}");
        let (meta, mut floats, ints) = read_tensors(&with_config("ok.safetensors", base)).unwrap();
        floats.get_mut("counter.head.bias").unwrap().1[0] = f32::INFINITY;
        let bytes = raw_safetensors(&meta, &floats, &ints);
        std::fs::write(&p, bytes).unwrap();
        let e = load_counter(&p).err().unwrap().to_string();
        assert!(
            e.contains("nan.safetensors")
                && e.contains("counter.head.bias")
                && e.contains("non-finite"),
            "{e}"
        );
        // not a regular file
        let e = load_counter(d.path()).err().unwrap().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    /// Serialises tensors without the finiteness check (to craft bad files).
    fn raw_safetensors(
        meta: &HashMap<String, String>,
        floats: &BTreeMap<String, Loaded>,
        ints: &BTreeMap<String, i64>,
    ) -> Vec<u8> {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>, Dtype)> = floats
            .iter()
            .map(|(n, (d, v))| {
                (
                    n.clone(),
                    d.clone(),
                    bytemuck::cast_slice(v).to_vec(),
                    Dtype::F32,
                )
            })
            .chain(
                ints.iter()
                    .map(|(n, v)| (n.clone(), vec![], v.to_le_bytes().to_vec(), Dtype::I64)),
            )
            .collect();
        let views: Vec<_> = bytes
            .iter()
            .map(|(n, d, b, t)| (n.clone(), TensorView::new(*t, d.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, Some(meta.clone())).unwrap()
    }
}
