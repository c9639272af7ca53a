//! The command's files: inputs checked before anything is opened, outputs that are never one of
//! the inputs, and outputs written beside the target and renamed only once complete.
//!
//! An output is written to `DIR/NAME.partial-PID.EXT` and renamed to `DIR/NAME.EXT` when it is
//! finished and read back; a failure removes the partial file, so a file with the output's
//! name is always whole. A run killed outright (SIGKILL, power loss) may leave the partial file,
//! which the next run for the same output removes.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Exit code for bad arguments or an input or output that cannot be handled.
pub const USAGE: i32 = 2;

/// An input the command can read: an existing, non-empty regular file (after links). 2 and what,
/// why and how to fix otherwise.
pub fn check_input(path: &Path) -> Result<(), (i32, String)> {
    let bad = |why: &str| Err((USAGE, format!("{}: {why}", path.display())));
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return bad("no such file: check the path"),
        Err(e) => return bad(&format!("cannot be read ({e}): check its permissions")),
    };
    let kind = meta.file_type();
    if kind.is_dir() {
        return bad("is a folder, not a video file: give the video file inside it");
    }
    if kind.is_char_device() || kind.is_block_device() || kind.is_fifo() || kind.is_socket() {
        return bad("is a device, pipe or socket, not a video file: the command reads regular files (it seeks and reads them twice)");
    }
    if meta.len() == 0 {
        return bad("is empty (0 bytes): not a video file");
    }
    Ok(())
}

/// Device and inode of an existing file, after links.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Refuses (2) an output that is one of `inputs`, whatever path names it (`./x`, `../d/x`, a
/// link, a hard link), and an output whose folder does not exist.
pub fn check_output(output: &Path, inputs: &[&Path]) -> Result<(), (i32, String)> {
    if let Some(out) = identity(output) {
        for input in inputs {
            if identity(input) == Some(out) {
                return Err((
                    USAGE,
                    format!(
                        "{}: is the same file as the input {}: writing it would destroy what is read. Give another output path",
                        output.display(),
                        input.display()
                    ),
                ));
            }
        }
        if std::fs::metadata(output).is_ok_and(|m| m.is_dir()) {
            return Err((USAGE, format!("{}: is a folder: give a file name ending in .mp4 or .mkv", output.display())));
        }
    }
    let dir = folder(output);
    if !dir.is_dir() {
        return Err((USAGE, format!("{}: the folder {} does not exist: create it first", output.display(), dir.display())));
    }
    Ok(())
}

fn folder(output: &Path) -> &Path {
    output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// `DIR/NAME.partial-PID.EXT`: what is being written; renamed to the output once complete.
pub fn partial_path(output: &Path) -> PathBuf {
    let stem = output.file_stem().unwrap_or_default().to_string_lossy();
    let ext = output.extension().unwrap_or_default().to_string_lossy();
    output.with_file_name(format!("{stem}.partial-{}.{ext}", std::process::id()))
}

/// Partial files an interrupted or killed run for `output` left behind.
pub fn remove_stale_partials(output: &Path) {
    let stem = output.file_stem().unwrap_or_default().to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir(folder(output)) else { return };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&format!("{stem}.partial-")) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// An output being written: removed when dropped unless [`Partial::commit`]ted.
pub struct Partial {
    pub path: PathBuf,
    target: PathBuf,
    done: bool,
}

impl Partial {
    pub fn new(target: &Path) -> Self {
        remove_stale_partials(target);
        Partial { path: partial_path(target), target: target.to_owned(), done: false }
    }

    /// Renames the finished file to the output.
    pub fn commit(mut self) -> Result<(), (i32, String)> {
        self.done = true;
        std::fs::rename(&self.path, &self.target).map_err(|e| {
            let _ = std::fs::remove_file(&self.path);
            (1, format!("{}: cannot rename the finished file to it ({e})", self.target.display()))
        })
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
