//! Which networks `count` and `eval` use (`--model NAME`, a shipped model, or a user's
//! `--counter`/`--localizer` checkpoints), and `dcl models`, which lists, shows and exports the
//! shipped ones.
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use crate::checkpoint::{load_pair_from, Pair, Source};
use crate::device::Device;
use crate::shipped::{self, ShippedModel, MODELS};

/// The networks to count with: a shipped model by name, or checkpoint files.
#[derive(Args, Debug, Clone, Default)]
#[group(skip)]
#[command(group(clap::ArgGroup::new("network").required(true).args(["model", "counter"])))]
pub struct ModelChoice {
    /// A model shipped with dcl, by name (`dcl models` lists them): its counter and its
    /// localizer, no training needed.
    #[arg(
        long,
        value_name = "NAME",
        conflicts_with_all = ["counter", "localizer"]
    )]
    pub model: Option<String>,
    /// With --model: its counter alone (counts without locating cells; about 2.5x faster).
    #[arg(long, requires = "model")]
    pub counter_only: bool,
    /// Counter checkpoint (or a coupled model), e.g. a run's counter.best.safetensors.
    #[arg(long)]
    pub counter: Option<PathBuf>,
    /// Localizer checkpoint trained on that counter: adds point locations and a
    /// full-resolution density map.
    #[arg(long, requires = "counter")]
    pub localizer: Option<PathBuf>,
}

/// Checkpoint files as a `ModelChoice` (what `dcl demo` counts with).
impl ModelChoice {
    pub fn files(counter: &Path, localizer: Option<&Path>) -> Self {
        ModelChoice {
            counter: Some(counter.into()),
            localizer: localizer.map(Path::to_path_buf),
            ..Default::default()
        }
    }
}

/// The opened networks with their hashes, and what outputs call them.
pub struct Chosen {
    pub nets: Pair,
    /// A file's path, or `model NAME (counter)`.
    pub counter_name: PathBuf,
    pub localizer_name: Option<PathBuf>,
}

impl Chosen {
    /// How a report's settings show the counter: its name and hash.
    pub fn counter_setting(&self) -> String {
        format!(
            "{} (hash {})",
            self.counter_name.display(),
            self.nets.counter_hash
        )
    }

    /// How a report's settings show the localizer, if there is one.
    pub fn localizer_setting(&self) -> Option<String> {
        let (n, h) = (
            self.localizer_name.as_ref()?,
            self.nets.localizer_hash.as_ref()?,
        );
        Some(format!("{} (hash {h})", n.display()))
    }
}

impl ModelChoice {
    /// Opens the chosen networks on `device` (a localizer only with the counter it was
    /// trained on).
    pub fn load(&self, device: &Device) -> anyhow::Result<Chosen> {
        if let Some(name) = &self.model {
            let m = shipped::find(name)?;
            let with_localizer = !self.counter_only;
            return Ok(Chosen {
                nets: m.load(with_localizer, device)?,
                counter_name: m.label("counter"),
                localizer_name: with_localizer.then(|| m.label("localizer")),
            });
        }
        let cp = self
            .counter
            .as_deref()
            .context("give --model NAME (see `dcl models`) or --counter FILE")?;
        let localizer = self.localizer.as_deref().map(Source::File);
        Ok(Chosen {
            nets: load_pair_from(Source::File(cp), localizer, device)?,
            counter_name: cp.into(),
            localizer_name: self.localizer.clone(),
        })
    }
}

/// `dcl models`: lists the shipped models; with a name, prints its model card; with
/// `--export`, writes its two checkpoints (they load into PyTorch as DESIGN §1 says, and go
/// through `--counter`/`--localizer`, or `dcl train --counter` to train a new localizer).
#[derive(Args, Debug)]
pub struct ModelsArgs {
    /// A shipped model: print its model card.
    pub name: Option<String>,
    /// Write the model's counter.safetensors and localizer.safetensors into this folder.
    #[arg(long, requires = "name", value_name = "DIR")]
    pub export: Option<PathBuf>,
}

pub fn run(a: ModelsArgs) -> anyhow::Result<()> {
    let Some(name) = &a.name else {
        for m in MODELS {
            let kb = (m.counter.len() + m.localizer.len()).div_ceil(1024);
            println!("{:<18} {}  ({kb} KB)", m.name, m.data);
            for line in wrap(&m.summary(), 72) {
                println!("{:<18} {line}", "");
            }
        }
        println!(
            "\n`dcl models NAME` prints a model's card; `dcl count --model NAME IMAGES...` counts \
             with it."
        );
        return Ok(());
    };
    let m = shipped::find(name)?;
    match &a.export {
        None => print!("{}", m.card),
        Some(dir) => export(m, dir)?,
    }
    Ok(())
}

/// `text`'s words in lines of at most `width` characters (a longer word has its own line).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("one line at least");
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(word.to_string());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

/// Writes a shipped model's files (atomically, never over a different existing file).
fn export(m: &ShippedModel, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    for (file, bytes) in [
        ("counter.safetensors", m.counter),
        ("localizer.safetensors", m.localizer),
        ("MODEL.md", m.card.as_bytes()),
    ] {
        let path = dir.join(file);
        match std::fs::read(&path) {
            Ok(old) if old == bytes => continue,
            Ok(_) => anyhow::bail!(
                "{}: exists and is not {}'s {file}: not overwritten",
                path.display(),
                m.name
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("{}: cannot read: {e}", path.display()),
        }
        crate::fsutil::atomic_write(&path, bytes)?;
        println!("{}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn wrap_keeps_words_whole_within_the_width() {
        let lines = wrap("aa bbb cc dddddddddd e", 6);
        assert_eq!(lines, ["aa bbb", "cc", "dddddddddd", "e"]);
        assert_eq!(wrap("", 10), [""]);
    }
}
