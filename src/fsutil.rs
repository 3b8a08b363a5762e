//! File helpers shared by every writer: outputs appear complete or not at all, temporary files
//! cannot be hijacked, and output folders are marked, locked and cleaned.
//!
//! - `atomic_write`: a temporary file created exclusively (`O_CREAT | O_EXCL`, a random name,
//!   never through a symbolic link) in the target's folder, synced, then renamed over the
//!   target. A planted `.NAME...` link or file is never opened, and a symbolic link standing
//!   at the target is replaced, not followed.
//! - Temporary files are named `.NAME.dcl-tmp.PID.RANDOM`; `clean_stale_temps` removes those
//!   of processes that no longer run (a crash or `kill -9` mid-write), on the next start.
//! - `open_append` appends without following a symbolic link.
//! - `DirLock`: an exclusive advisory lock on `DIR/.dcl.lock`, so two runs never write into one
//!   folder at once.
//! - `prepare_output_dir`: creates, checks and marks an output folder (`DIR/.dcl-output`), so
//!   that later runs never take a folder of outputs as input.
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// What every temporary file name holds between the target's name and the writer's PID.
pub const TEMP_TAG: &str = ".dcl-tmp.";
/// The file that marks a folder as outputs of a dcl run (its content names the command).
pub const OUTPUT_MARKER: &str = ".dcl-output";
/// The lock file of a folder being written by a run.
pub const LOCK_FILE: &str = ".dcl.lock";

/// The folder of `path` ("." for a bare file name).
fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A new temporary file in `dir` for a target named `name`, created exclusively.
fn create_temp(dir: &Path, name: &str) -> std::io::Result<tempfile::NamedTempFile> {
    // Long names: keep the temporary name within the usual 255-byte limit.
    let mut short: String = name.chars().take(96).collect();
    if short.is_empty() {
        short.push('f');
    }
    let prefix = format!(".{short}{TEMP_TAG}{}.", std::process::id());
    let mut b = tempfile::Builder::new();
    b.prefix(&prefix).rand_bytes(8);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // as `File::create` would (0666 less the umask), not tempfile's private 0600
        b.permissions(std::fs::Permissions::from_mode(0o666));
    }
    b.tempfile_in(dir)
}

/// Writes `bytes` to `path` atomically: a temporary file created exclusively in the same
/// folder, flushed and synced, then renamed over the target. A crash leaves either the old
/// file or the new one (and a temporary file that `clean_stale_temps` removes later).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_of(path);
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::file(dir, format!("cannot create folder: {e}")))?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::file(path, "not a file path"))?
        .to_string_lossy()
        .into_owned();
    let write = || -> std::io::Result<()> {
        let mut tmp = create_temp(dir, &name)?;
        tmp.as_file_mut().write_all(bytes)?;
        tmp.as_file_mut().sync_all()?;
        // On failure the temporary file is removed when `PersistError` drops.
        tmp.persist(path).map(|_| ()).map_err(|e| e.error)
    };
    write().map_err(|e| Error::file(path, format!("cannot write: {e}")))
}

/// [`atomic_write`] for content made as it is written (a whole-slide image's GeoJSON passes a
/// gigabyte): `write` fills a buffered writer over the temporary file, which is then renamed
/// over `path`; on any error nothing appears at `path`.
pub fn atomic_write_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file.file());
    write(&mut w)
        .and_then(|()| w.flush())
        .map_err(|e| Error::file(path, format!("cannot write: {e}")))?;
    drop(w);
    file.commit()
}

/// A file written in pieces (a streamed density map, a long points list) that appears at its
/// path complete or not at all, as `atomic_write`: a temporary file created exclusively in the
/// target's folder, renamed over the target by `commit`, removed if dropped uncommitted.
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<AtomicFile> {
        let dir = parent_of(path);
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::file(dir, format!("cannot create folder: {e}")))?;
        let name = path
            .file_name()
            .ok_or_else(|| Error::file(path, "not a file path"))?
            .to_string_lossy()
            .into_owned();
        let tmp =
            create_temp(dir, &name).map_err(|e| Error::file(path, format!("cannot write: {e}")))?;
        Ok(AtomicFile {
            tmp,
            path: path.to_path_buf(),
        })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }
    /// Syncs the file and renames it over the target.
    pub fn commit(mut self) -> Result<()> {
        let path = self.path.clone();
        let fail = |e: std::io::Error| Error::file(&path, format!("cannot write: {e}"));
        self.tmp.as_file_mut().sync_all().map_err(fail)?;
        self.tmp
            .persist(&path)
            .map(|_| ())
            .map_err(|e| fail(e.error))
    }
}

/// Writes `bytes` into a new file `DIR/PREFIX<random>SUFFIX`, created exclusively (so also
/// safe in a shared folder such as /tmp), and keeps it; returns its path.
pub fn write_new_file(dir: &Path, prefix: &str, suffix: &str, bytes: &[u8]) -> Result<PathBuf> {
    let write = || -> std::io::Result<PathBuf> {
        let mut f = tempfile::Builder::new()
            .prefix(prefix)
            .suffix(suffix)
            .rand_bytes(8)
            .tempfile_in(dir)?;
        f.as_file_mut().write_all(bytes)?;
        f.as_file_mut().sync_all()?;
        f.keep().map(|(_, p)| p).map_err(|e| e.error)
    };
    write().map_err(|e| Error::file(dir, format!("cannot write a file here: {e}")))
}

/// The PID in a temporary file name `.NAME.dcl-tmp.PID.RANDOM`, if it is one of ours.
pub fn temp_owner(file_name: &str) -> Option<u32> {
    let rest = &file_name[file_name.rfind(TEMP_TAG)? + TEMP_TAG.len()..];
    let (pid, random) = rest.split_once('.')?;
    if !file_name.starts_with('.') || random.is_empty() || random.contains('.') {
        return None;
    }
    pid.parse().ok()
}

/// The PID in a temporary file name written before temporary files were created exclusively
/// (`.NAME.tmpPID`), so folders written by older versions are cleaned too.
fn legacy_temp_owner(file_name: &str) -> Option<u32> {
    let (head, pid) = file_name.rsplit_once(".tmp")?;
    if !file_name.starts_with('.') || head.len() < 2 || pid.is_empty() {
        return None;
    }
    pid.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| pid.parse().ok())?
}

/// Whether process `pid` still runs (on other systems than Unix: assumed so).
fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // Safety: kill with signal 0 only checks that the process exists.
        if unsafe { libc::kill(pid, 0) } == 0 {
            return true;
        }
        std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Removes the temporary files in `dir` left by processes that no longer run (a crash or a
/// kill during a write); returns how many. Links are removed, never followed. Errors (a folder
/// that cannot be listed) are ignored: cleaning is best effort.
pub fn clean_stale_temps(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let me = std::process::id();
    let mut removed = 0;
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| temp_owner(n).or_else(|| legacy_temp_owner(n)))
        else {
            continue;
        };
        let is_file = e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink());
        if is_file && pid != me && !process_alive(pid) && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Opens `path` for appending, creating it if needed, without following a symbolic link at
/// `path` (a link there is an error) and refusing anything but a regular file.
pub fn open_append(path: &Path) -> Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NOFOLLOW);
    }
    let f = o
        .open(path)
        .map_err(|e| Error::file(path, format!("cannot open for appending: {e}")))?;
    let meta = f
        .metadata()
        .map_err(|e| Error::file(path, format!("cannot open for appending: {e}")))?;
    if !meta.is_file() {
        return Err(Error::file(path, "not a regular file"));
    }
    Ok(f)
}

/// Reads a file the program wrote itself (an index, a journal, a CSV it merges): None when it
/// does not exist; an error when it is a symbolic link or not a regular file, so a planted
/// link never makes the program read (and copy) another file.
pub fn read_own_file(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::file(path, format!("cannot read: {e}"))),
        Ok(m) if !m.file_type().is_file() => {
            return Err(Error::file(
                path,
                "not a regular file (a symbolic link or folder stands where dcl keeps its own \
                 file); remove it",
            ))
        }
        Ok(_) => {}
    }
    std::fs::read(path)
        .map(Some)
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))
}

/// An exclusive lock on a folder, held until dropped. Two runs that write into one folder
/// (two `dcl count --out X`, two `dcl train` of one run) would lose each other's results; the
/// second is refused while the first runs. The lock is advisory (`flock`) and is released by
/// the system when the process ends, however it ends.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    pub path: PathBuf,
}

impl DirLock {
    /// Locks `dir` (which must exist) or says which process holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let mut o = std::fs::OpenOptions::new();
        o.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.custom_flags(libc::O_NOFOLLOW);
        }
        let mut f = o
            .open(&path)
            .map_err(|e| Error::file(&path, format!("cannot open the lock file: {e}")))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                };
                return Err(Error::file(
                    dir,
                    format!(
                        "another dcl run is writing into this folder{who}; wait for it to end \
                         or choose another folder"
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::file(&path, format!("cannot lock: {e}")))
            }
        }
        // Who holds it, for the message of a run refused meanwhile (best effort).
        let _ = f.set_len(0);
        let _ = write!(f, "{}", std::process::id());
        Ok(DirLock { _file: f, path })
    }
}

/// What kind of outputs a marked folder holds (`count`, `eval`, `density`, `train`…), read
/// from its `.dcl-output` marker; None for an unmarked folder.
pub fn output_kind(dir: &Path) -> Option<String> {
    let m = std::fs::symlink_metadata(dir.join(OUTPUT_MARKER)).ok()?;
    if !m.file_type().is_file() {
        return Some(String::new());
    }
    let text = std::fs::read_to_string(dir.join(OUTPUT_MARKER)).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    Some(v["kind"].as_str().unwrap_or_default().to_string())
}

/// Whether `dir` holds outputs of a dcl run: its `.dcl-output` marker, or (folders written
/// before markers existed) a `counts.csv` with `dcl count`'s header.
pub fn is_output_dir(dir: &Path) -> bool {
    if std::fs::symlink_metadata(dir.join(OUTPUT_MARKER)).is_ok() {
        return true;
    }
    let csv = dir.join("counts.csv");
    let Ok(f) = File::open(csv) else {
        return false;
    };
    let mut head = [0u8; 40];
    let mut r = std::io::Read::take(f, 40);
    let n = std::io::Read::read(&mut r, &mut head).unwrap_or(0);
    head[..n].starts_with(b"image,count,width,height,counter_hash")
}

/// The marker's content for outputs of `kind`.
pub fn marker_json(kind: &str) -> String {
    serde_json::json!({ "tool": "dcl", "kind": kind, "version": env!("CARGO_PKG_VERSION") })
        .to_string()
}

/// Creates an output folder (and its parents), checks that it is a folder and writable,
/// removes temporary files left by crashed runs, and marks it as outputs of `kind`
/// (`.dcl-output`), so later runs never read it as input. A folder already marked for another
/// kind of outputs is refused (e.g. `dcl count --out` into a training run's folder).
pub fn prepare_output_dir(dir: &Path, kind: &str) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::file(dir, format!("cannot create output folder: {e}")))?;
    if !dir.is_dir() {
        return Err(Error::file(dir, "output path is not a folder"));
    }
    if let Some(k) = output_kind(dir) {
        if k != kind {
            let what = if k.is_empty() { "other" } else { k.as_str() };
            return Err(Error::file(
                dir,
                format!(
                    "holds the outputs of another command (dcl {what}); choose another folder \
                     for these {kind} outputs"
                ),
            ));
        }
    }
    // Writable: an exclusively created temporary file, removed on drop (never a fixed name
    // that a planted link could redirect).
    create_temp(dir, "write-test")
        .map_err(|e| Error::file(dir, format!("output folder is not writable: {e}")))?;
    clean_stale_temps(dir);
    if output_kind(dir).is_none() {
        atomic_write(&dir.join(OUTPUT_MARKER), marker_json(kind).as_bytes())?;
    }
    Ok(())
}

/// Creates a sub-folder of an output folder for the program's own files, refusing one that is
/// a symbolic link (or not a folder): outputs never land outside the output folder.
pub fn prepare_subdir(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_dir() => {}
        Ok(_) => {
            return Err(Error::file(
                dir,
                "not a folder (a symbolic link or file stands where outputs go); remove it",
            ))
        }
        Err(_) => std::fs::create_dir_all(dir)
            .map_err(|e| Error::file(dir, format!("cannot create output folder: {e}")))?,
    }
    clean_stale_temps(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/x.bin");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(names(p.parent().unwrap()), ["x.bin"]);
    }

    /// The attack of the reliability issue: links planted at every name the old writer used
    /// (`.NAME.tmpPID`) and at the target itself. The victim is never written and the target
    /// ends up a regular file holding the new bytes.
    #[cfg(unix)]
    #[test]
    fn planted_links_are_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let out = d.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let me = std::process::id();
        for pid in [me, me + 1, me.saturating_sub(1)] {
            std::os::unix::fs::symlink(&victim, out.join(format!(".counts.csv.tmp{pid}"))).unwrap();
        }
        std::os::unix::fs::symlink(&victim, out.join("counts.csv")).unwrap();
        atomic_write(&out.join("counts.csv"), b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let meta = std::fs::symlink_metadata(out.join("counts.csv")).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(std::fs::read(out.join("counts.csv")).unwrap(), b"new");
        // appending refuses a link; reading our own files refuses one too
        std::os::unix::fs::symlink(&victim, out.join("log")).unwrap();
        assert!(open_append(&out.join("log")).is_err());
        assert!(read_own_file(&out.join("log")).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        // the old fixed probe name: a link there is not followed either
        std::os::unix::fs::symlink(&victim, out.join(".dcl-write-test")).unwrap();
        prepare_output_dir(&out, "count").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        // an output sub-folder that is a link is refused
        std::os::unix::fs::symlink(d.path(), out.join("overlays")).unwrap();
        assert!(prepare_subdir(&out.join("overlays")).is_err());
    }

    #[test]
    fn stale_temps_of_dead_processes_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let dead = u32::MAX - 7; // no such process
        let me = std::process::id();
        for (name, _) in [
            (format!(".a.csv{TEMP_TAG}{dead}.AbCdEfGh"), ()),
            (format!(".b.png{TEMP_TAG}{me}.AbCdEfGh"), ()),
            ("a.csv".to_string(), ()),
            (format!("x{TEMP_TAG}{dead}.q"), ()),
        ] {
            std::fs::write(d.path().join(name), b"x").unwrap();
        }
        assert_eq!(temp_owner(&format!(".a{TEMP_TAG}12.xyz")), Some(12));
        assert_eq!(temp_owner(".a.tmp12"), None);
        // the names of older versions: `.NAME.tmpPID`
        assert_eq!(legacy_temp_owner(".a.csv.tmp12"), Some(12));
        assert_eq!(legacy_temp_owner(".a.csv.tmpx"), None);
        std::fs::write(d.path().join(format!(".old.safetensors.tmp{dead}")), b"x").unwrap();
        assert_eq!(clean_stale_temps(d.path()), 2);
        let left = names(d.path());
        assert_eq!(left.len(), 3, "{left:?}");
        assert!(!left.iter().any(|n| n.starts_with(".a.csv")), "{left:?}");
    }

    #[test]
    fn a_locked_folder_refuses_a_second_lock_until_released() {
        let d = tempfile::tempdir().unwrap();
        let a = DirLock::acquire(d.path()).unwrap();
        let e = DirLock::acquire(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("another dcl run") && e.contains(&std::process::id().to_string()),
            "{e}"
        );
        drop(a);
        DirLock::acquire(d.path()).unwrap();
    }

    #[test]
    fn output_folders_are_marked_and_kinds_do_not_mix() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("o");
        assert!(!is_output_dir(&out));
        prepare_output_dir(&out, "count").unwrap();
        assert!(is_output_dir(&out));
        assert_eq!(output_kind(&out).as_deref(), Some("count"));
        prepare_output_dir(&out, "count").unwrap();
        let e = prepare_output_dir(&out, "train").unwrap_err().to_string();
        assert!(e.contains("dcl count"), "{e}");
        assert_eq!(names(&out), [OUTPUT_MARKER]);
        // a folder written before markers: recognised by its counts.csv header
        let old = d.path().join("old");
        std::fs::create_dir(&old).unwrap();
        std::fs::write(
            old.join("counts.csv"),
            "image,count,width,height,counter_hash\n",
        )
        .unwrap();
        assert!(is_output_dir(&old));
    }
}
