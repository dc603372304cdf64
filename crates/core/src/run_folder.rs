//! The output folder of a run (`fit`, `transform`), held for the run's length (docs/formats.md
//! "Output folder"):
//! - a lock (`.soft-cluster.lock`, an OS file lock): a second run into the same folder refuses at
//!   once, naming the holder;
//! - outputs written into a staging folder of ours and moved into place only when the run is
//!   complete, so a folder never holds a half-finished run's files next to a finished one's;
//! - a manifest (`soft-cluster-run.json`, written last) listing the files of the run that
//!   finished: a later run into a folder that holds another run's outputs refuses unless told to
//!   `overwrite` them, and then replaces them only once it is complete;
//! - inputs are never deleted or overwritten.

use crate::error::{Error, Result};
use crate::output::{remove_stale_temporaries, temporary_name, write_atomically};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

pub const LOCK_FILE: &str = ".soft-cluster.lock";
pub const MANIFEST_FILE: &str = "soft-cluster-run.json";
const MANIFEST_FORMAT: &str = "soft-cluster-run";
/// A fit's in-progress state (`checkpoint::FILE_NAME`): the one output written in place.
const CHECKPOINT_FILE: &str = crate::checkpoint::FILE_NAME;

/// What a run is, for the manifest and the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    Fit,
    Transform,
}

/// `soft-cluster-run.json`: which files of the folder the last finished run wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub command: RunKind,
    /// Seconds since the Unix epoch when the run finished.
    pub finished: u64,
    /// File names (in the folder) the run wrote.
    pub files: Vec<String>,
    /// The chunk files it read, as given.
    pub chunks: Vec<String>,
}

/// How a run may treat what the folder already holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Continue the unfinished fit whose checkpoint the folder holds.
    pub resume: bool,
    /// Replace another run's outputs (once this run is complete).
    pub overwrite: bool,
}

/// An output folder held by this run. Dropped without `commit`, it removes its staging folder
/// (and the output folder itself, if the run made it and nothing else is in it).
pub struct RunFolder {
    dir: PathBuf,
    kind: RunKind,
    staging: PathBuf,
    /// Files of an earlier run to remove at commit (unless this run writes the same name).
    previous: BTreeSet<String>,
    staged: BTreeSet<String>,
    made_dir: bool,
    lock: Option<File>,
    /// A rank that writes into another rank's run (`join`) leaves the staging folder alone.
    joined: bool,
}

impl RunFolder {
    /// Takes `dir` for a run reading `inputs`: makes it if missing, locks it, checks what it holds
    /// against `options`, and clears abandoned temporaries of ours.
    pub fn open(dir: &Path, kind: RunKind, inputs: &[PathBuf], options: RunOptions) -> Result<Self> {
        let made_dir = !dir.exists();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let lock = take_lock(dir, kind)?;
        // Unique within the process too (several runs of one process, into other folders).
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let staging = dir.join(temporary_name(&format!("run-{}", RUNS.fetch_add(1, Ordering::Relaxed))));
        let mut folder = RunFolder { dir: dir.to_path_buf(), kind, staging, previous: BTreeSet::new(), staged: BTreeSet::new(), made_dir, lock: Some(lock), joined: false };
        remove_stale_temporaries(dir);
        folder.previous = folder.check_contents(inputs, options)?;
        std::fs::create_dir(&folder.staging).map_err(|e| Error::io(&folder.staging, e))?;
        Ok(folder)
    }

    /// Writes into the run that rank 0 of a run on several processes opened in `dir`, whose
    /// staging folder is `staging_name` there: `staged` works, `commit` is rank 0's, and dropping
    /// this handle removes nothing.
    pub fn join(dir: &Path, kind: RunKind, staging_name: &str) -> Result<Self> {
        let staging = dir.join(staging_name);
        if !is_plain_name(staging_name) || !staging.is_dir() {
            return Err(Error::invalid_input(
                &dir.display().to_string(),
                format!("this rank does not see the staging folder {staging_name} that rank 0 made there; the output folder must be on a filesystem every rank sees"),
            ));
        }
        Ok(RunFolder { dir: dir.to_path_buf(), kind, staging, previous: BTreeSet::new(), staged: BTreeSet::new(), made_dir: false, lock: None, joined: true })
    }

    /// The staging folder's name in `dir`, for `join`.
    pub fn staging_name(&self) -> String {
        self.staging.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where to write the output `name`; it moves to `dir/name` at `commit`.
    pub fn staged(&mut self, name: &str) -> PathBuf {
        self.staged.insert(name.to_string());
        self.staging.join(name)
    }

    /// Ends the run: moves the staged outputs into place, removes the earlier run's other files,
    /// then writes the manifest.
    pub fn commit(mut self, chunks: &[PathBuf]) -> Result<()> {
        for name in &self.staged {
            let (from, to) = (self.staging.join(name), self.dir.join(name));
            std::fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
        }
        for name in self.previous.difference(&self.staged) {
            match std::fs::remove_file(self.dir.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&self.dir.join(name), e)),
                _ => {}
            }
        }
        let manifest = Manifest {
            format: MANIFEST_FORMAT.to_string(),
            format_version: 1,
            command: self.kind,
            finished: unix_seconds(),
            files: self.staged.iter().cloned().collect(),
            chunks: chunks.iter().map(|p| p.display().to_string()).collect(),
        };
        let path = self.dir.join(MANIFEST_FILE);
        write_atomically(&path, &serde_json::to_vec_pretty(&manifest).expect("serializable"))?;
        self.made_dir = false;
        Ok(())
    }

    /// The names of an earlier run's files that this run would replace; refuses what `options`
    /// does not allow, and anything that would touch an input.
    fn check_contents(&self, inputs: &[PathBuf], options: RunOptions) -> Result<BTreeSet<String>> {
        let dir = &self.dir;
        let shown = dir.display();
        let manifest_path = dir.join(MANIFEST_FILE);
        let mut previous = BTreeSet::new();
        let mut finished = None;
        if manifest_path.exists() {
            match std::fs::read(&manifest_path).ok().and_then(|b| serde_json::from_slice::<Manifest>(&b).ok()).filter(|m| m.format == MANIFEST_FORMAT) {
                Some(m) => {
                    previous.extend(m.files.iter().filter(|f| is_plain_name(f)).cloned());
                    finished = Some(m.command);
                }
                None if !options.overwrite => {
                    return Err(Error::OutputExists { dir: shown.to_string(), problem: format!("its {MANIFEST_FILE} is not a soft-cluster run manifest; pass --overwrite (overwrite: true) to replace it") });
                }
                None => {}
            }
            previous.insert(MANIFEST_FILE.to_string());
        }
        // Outputs of a version that wrote no manifest.
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "model.safetensors" || name.ends_with(".memberships.npz") {
                previous.insert(name);
            }
        }
        previous.retain(|name| dir.join(name).exists());
        let checkpoint = dir.join(CHECKPOINT_FILE).exists();
        let continuing = checkpoint && options.resume && self.kind == RunKind::Fit;
        if checkpoint && !continuing {
            if !options.overwrite {
                let hint = match self.kind {
                    RunKind::Fit => "pass --resume (resume: true) to continue it, or --overwrite (overwrite: true) to start over",
                    RunKind::Transform => "write into another folder, or pass --overwrite (overwrite: true) to replace it",
                };
                return Err(Error::OutputExists { dir: shown.to_string(), problem: format!("holds an unfinished fit ({CHECKPOINT_FILE}); {hint}") });
            }
            previous.insert(CHECKPOINT_FILE.to_string());
        }
        let others: Vec<&String> = previous.iter().filter(|n| n.as_str() != MANIFEST_FILE && n.as_str() != CHECKPOINT_FILE).collect();
        if !others.is_empty() && !options.overwrite {
            let what = match finished {
                Some(kind) => format!("holds the outputs of an earlier {} run ({} files: {MANIFEST_FILE})", kind_name(kind), others.len()),
                None => format!("holds outputs of an earlier run ({}{})", others.iter().take(3).map(|s| s.as_str()).collect::<Vec<_>>().join(", "), if others.len() > 3 { ", ..." } else { "" }),
            };
            return Err(Error::OutputExists { dir: shown.to_string(), problem: format!("{what}; write into another folder, or pass --overwrite (overwrite: true) to replace them once this run is complete") });
        }
        // Inputs are never replaced or deleted.
        let inputs: Vec<PathBuf> = inputs.iter().filter_map(|p| p.canonicalize().ok()).collect();
        for name in previous.iter().chain([CHECKPOINT_FILE.to_string(), "model.safetensors".to_string()].iter()) {
            if let Ok(real) = dir.join(name).canonicalize() {
                if let Some(input) = inputs.iter().find(|i| **i == real) {
                    return Err(Error::OutputExists { dir: shown.to_string(), problem: format!("this run would replace or delete {name}, which is one of its inputs ({}); write into another folder", input.display()) });
                }
            }
        }
        Ok(previous)
    }
}

impl Drop for RunFolder {
    fn drop(&mut self) {
        if self.joined {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.staging);
        if let Some(lock) = self.lock.take() {
            // Removed while held: a run that opened it meanwhile sees that it is gone and retries.
            let _ = std::fs::remove_file(self.dir.join(LOCK_FILE));
            drop(lock);
        }
        if self.made_dir {
            let _ = std::fs::remove_dir(&self.dir); // fails, as it should, once anything else is in it
        }
    }
}

fn kind_name(kind: RunKind) -> &'static str {
    match kind {
        RunKind::Fit => "fit",
        RunKind::Transform => "transform",
    }
}

/// A manifest entry that names a file in the folder itself (a hostile manifest must not make a
/// run delete `../x`).
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\\')
}

/// Locks `dir/.soft-cluster.lock` for this process and writes who holds it; refuses at once if
/// another run holds it.
fn take_lock(dir: &Path, kind: RunKind) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    for _ in 0..100 {
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Busy { dir: dir.display().to_string(), holder: holder_of(&path) });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        // The holder before us may have removed the file between our open and our lock.
        if !same_file(&file, &path) {
            continue;
        }
        let text = format!("soft-cluster {}, process {}\n{}\n", kind_name(kind), std::process::id(), unix_seconds());
        file.set_len(0).and_then(|()| file.write_all(text.as_bytes())).and_then(|()| file.flush()).map_err(|e| Error::io(&path, e))?;
        return Ok(file);
    }
    Err(Error::Busy { dir: dir.display().to_string(), holder: "other soft-cluster runs starting and ending at the same time".to_string() })
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Who holds the lock file at `path`, from what it wrote there: "soft-cluster fit, process 12,
/// started 40 s ago".
fn holder_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines = text.lines();
    match (lines.next().filter(|l| l.starts_with("soft-cluster ")), lines.next().and_then(|l| l.trim().parse::<u64>().ok())) {
        (Some(who), Some(started)) => format!("{who}, started {} s ago", unix_seconds().saturating_sub(started)),
        (Some(who), None) => who.to_string(),
        _ => "another soft-cluster run".to_string(),
    }
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &File, path: &Path) -> bool {
    path.exists()
}
