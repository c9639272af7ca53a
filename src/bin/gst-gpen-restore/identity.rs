//! Where a segment file comes from: the input's identity (its size, a hash of its first and last
//! MiB, its duration) and the restoring settings, written into the segment's comment tag under
//! its label, and read back by a resumed run and by the join.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::plan::Scan;

const MIB: u64 = 1 << 20;

/// The properties that do not change what is written (where it runs, how much memory it may
/// take): segments restored on different machines still join.
const NOT_SETTINGS: [&str; 2] = ["device", "vram-budget"];

/// `input SIZE bytes, sha256 HEX of its first and last MiB, DURATION ns`.
pub fn of_input(path: &Path, scan: &Scan) -> Result<String, (i32, String)> {
    let read = |e: std::io::Error| (2, format!("{}: cannot be read ({e})", path.display()));
    let mut f = std::fs::File::open(path).map_err(read)?;
    let size = f.metadata().map_err(read)?.len();
    let mut hash = Sha256::new();
    let mut head = Vec::new();
    (&mut f).take(MIB).read_to_end(&mut head).map_err(read)?;
    hash.update(&head);
    if size > MIB {
        f.seek(SeekFrom::Start(size.saturating_sub(MIB).max(MIB))).map_err(read)?;
        let mut tail = Vec::new();
        f.take(MIB).read_to_end(&mut tail).map_err(read)?;
        hash.update(&tail);
    }
    let hex: String = hash.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect();
    let duration = scan.pts.last().map_or(0, |l| l + scan.last_duration - scan.pts[0]);
    Ok(format!("input {size} bytes, sha256 {hex} of its first and last MiB, {duration} ns"))
}

/// `settings K=V K=V ...`: the restoring options, sorted, and the preroll.
pub fn of_settings(properties: &[(String, String)], preroll: f64) -> String {
    let mut kv: Vec<String> =
        properties.iter().filter(|(k, _)| !NOT_SETTINGS.contains(&k.as_str())).map(|(k, v)| format!("{k}={v}")).collect();
    kv.sort();
    kv.push(format!("preroll={preroll}"));
    format!("settings {}", kv.join(" "))
}

/// The comment tag of a segment: its label, the input's identity, the settings, one a line.
pub fn comment(label: &str, input: &str, settings: &str) -> String {
    format!("{label}\n{input}\n{settings}")
}

/// What a segment's comment says: label, input identity, settings (empty when missing, as in
/// segments of older versions).
pub struct Said<'a> {
    pub label: &'a str,
    pub input: &'a str,
    pub settings: &'a str,
}

pub fn parse(comment: &str) -> Said<'_> {
    let mut lines = comment.lines();
    let label = lines.next().unwrap_or("");
    let (mut input, mut settings) = ("", "");
    for l in lines {
        if l.starts_with("input ") {
            input = l;
        } else if l.starts_with("settings ") {
            settings = l;
        }
    }
    Said { label, input, settings }
}
