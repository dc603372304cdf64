//! Writing outputs so that no final-named file is ever half-written: every file is written under
//! a temporary name in the same folder, flushed, then renamed into place (docs/formats.md
//! "Atomic writes").

use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// What every temporary of ours carries before its maker's process id: cleanup touches nothing else.
const TEMPORARY_MARK: &str = ".soft-cluster-tmp-";

/// `.<name>.soft-cluster-tmp-<pid>`: the name of this process's temporary for `name`.
pub fn temporary_name(name: &str) -> String {
    format!(".{name}{TEMPORARY_MARK}{}", std::process::id())
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(temporary_name(&name));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Removes temporaries (files, and a run's staging folder) that a killed run of ours left behind
/// (`.<name>.soft-cluster-tmp-<pid>`, the maker gone): they were never moved into place, so
/// nothing refers to them.
pub fn remove_stale_temporaries(output_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(output_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let maker = name.strip_prefix('.').and_then(|n| n.rsplit_once(TEMPORARY_MARK)).and_then(|(_, pid)| pid.parse::<u32>().ok());
        if maker.is_some_and(|pid| pid != std::process::id() && process_is_gone(pid)) {
            // `file_type` does not follow links: a link is removed, never what it points to.
            let _ = match entry.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(entry.path()),
                _ => std::fs::remove_file(entry.path()),
            };
        }
    }
}

/// Whether no process `pid` runs now. Only Linux can tell (`/proc`); elsewhere a temporary is
/// never assumed abandoned.
fn process_is_gone(pid: u32) -> bool {
    cfg!(target_os = "linux") && Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{pid}")).exists()
}
