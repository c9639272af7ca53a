//! The manual, checked: `README.md` stays a front page of at most 300 lines; every relative link
//! in it and in `docs/*.md` points at a file (and at a heading of it, where the link names one);
//! `docs/element.md` holds what `gst-inspect-1.0 gpenfilter` prints now, and a row saying when
//! each property it lists takes effect; the README's property table names real properties with
//! their real defaults. After a property changes, `./scripts/element-doc.sh` regenerates the
//! reference (it runs this test with `GST_GPEN_UPDATE_DOCS=1`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const BEGIN: &str = "<!-- gst-inspect:begin -->";
const END: &str = "<!-- gst-inspect:end -->";
const WHEN_BEGIN: &str = "<!-- takes-effect:begin -->";
const WHEN_END: &str = "<!-- takes-effect:end -->";
const REGENERATE: &str = "./scripts/element-doc.sh";
const README_MAX_LINES: usize = 300;

/// Lines of `gst-inspect-1.0` that change from build to build, not with the element.
const VOLATILE: [&str; 3] = ["Filename ", "Version ", "Source release date "];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What `gst-inspect-1.0 gpenfilter` prints for the plugin next to this test binary
/// (`target/<profile>/libgstgpen.so`), read once per process through a registry of its own.
fn inspect() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap();
        let so = profile_dir.join("libgstgpen.so");
        assert!(so.exists(), "{} is not built: run `cargo build --lib --features fault-injection` (or {REGENERATE})", so.display());
        let registry = std::env::temp_dir().join(format!("gst-gpen-docs-{}", std::process::id())).join("registry.bin");
        let out = Command::new("gst-inspect-1.0")
            .arg("gpenfilter")
            .env("GST_PLUGIN_PATH", profile_dir)
            .env("GST_PLUGIN_SYSTEM_PATH_1_0", "")
            .env("GST_REGISTRY", &registry)
            .env_remove("GST_PLUGIN_PATH_1_0")
            .output()
            .expect("gst-inspect-1.0 is installed");
        let _ = std::fs::remove_dir_all(registry.parent().unwrap());
        let text = String::from_utf8(out.stdout).expect("gst-inspect-1.0 prints UTF-8");
        assert!(out.status.success(), "gst-inspect-1.0 gpenfilter failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
        text
    })
}

/// The block that goes between the markers: gst-inspect's output without the volatile lines
/// and trailing blanks, as a fenced text block.
fn generated(inspect: &str) -> String {
    let kept: Vec<&str> = inspect.lines().filter(|l| !VOLATILE.iter().any(|v| l.trim_start().starts_with(v))).map(str::trim_end).collect();
    let end = kept.iter().rposition(|l| !l.is_empty()).map_or(0, |i| i + 1);
    format!("\n```text\n{}\n```\n", kept[..end].join("\n"))
}

/// Where the text between two markers lies in `doc`.
fn between(doc: &str, begin: &str, end: &str, file: &str) -> std::ops::Range<usize> {
    let start = doc.find(begin).unwrap_or_else(|| panic!("{file} lacks the marker {begin}")) + begin.len();
    let stop = doc[start..].find(end).unwrap_or_else(|| panic!("{file} lacks the marker {end} after {begin}")) + start;
    start..stop
}

/// Each property gst-inspect lists, with the lines that describe it (blurb, flags, type, default).
fn properties(inspect: &str) -> BTreeMap<String, Vec<String>> {
    let section = inspect.split_once("Element Properties:").expect("gst-inspect lists the element's properties").1;
    let mut out = BTreeMap::<String, Vec<String>>::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        let is_name = line.starts_with("  ") && !line.starts_with("   ") && line.contains(':');
        if is_name {
            let (name, rest) = line.split_once(':').unwrap();
            let name = name.trim().to_owned();
            out.insert(name.clone(), vec![rest.trim().to_owned()]);
            current = Some(name);
        } else if let Some(name) = &current {
            out.get_mut(name).unwrap().push(line.trim().to_owned());
        }
    }
    assert!(out.len() > 30, "expected gpenfilter's properties in:\n{inspect}");
    out
}

fn flags_of(lines: &[String]) -> &str {
    lines.iter().find_map(|l| l.strip_prefix("flags: ")).expect("each property has a flags line")
}

/// What follows `Default:` for a property, e.g. `512, "512"`, `"auto"`, `0.8`, `null`.
fn default_of(lines: &[String]) -> &str {
    lines.iter().find_map(|l| l.split_once("Default:").map(|(_, d)| d.trim())).expect("each property has a default")
}

/// The first cells of a Markdown table's rows (backticks stripped) with the rest of the row.
fn table_rows(table: &str) -> Vec<(String, Vec<String>)> {
    table
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<String> = l.trim().trim_matches('|').split('|').map(|c| c.trim().to_owned()).collect();
            (cells[0].trim_matches('`').to_owned(), cells[1..].to_vec())
        })
        .collect()
}

#[test]
fn element_reference_is_what_gst_inspect_prints() {
    let path = root().join("docs/element.md");
    let doc = read(&path);
    let range = between(&doc, BEGIN, END, "docs/element.md");
    let now = generated(inspect());
    if std::env::var_os("GST_GPEN_UPDATE_DOCS").is_some() {
        // Through a rename, so the other tests of this process never read half a file.
        let tmp = path.with_extension(format!("md.{}", std::process::id()));
        std::fs::write(&tmp, format!("{}{now}{}", &doc[..range.start], &doc[range.end..])).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        return;
    }
    let written = &doc[range];
    if written != now {
        let first = written.lines().zip(now.lines()).position(|(a, b)| a != b).unwrap_or(written.lines().count().min(now.lines().count()));
        panic!(
            "docs/element.md's gst-inspect block differs from what gst-inspect-1.0 gpenfilter prints now, from line {} of the block:\n  \
             written: {:?}\n  now:     {:?}\nregenerate it with: {REGENERATE}",
            first + 1,
            written.lines().nth(first).unwrap_or("(end of block)"),
            now.lines().nth(first).unwrap_or("(end of block)"),
        );
    }
}

#[test]
fn every_property_has_a_row_saying_when_it_takes_effect() {
    let doc = read(&root().join("docs/element.md"));
    let rows: BTreeMap<String, String> =
        table_rows(&doc[between(&doc, WHEN_BEGIN, WHEN_END, "docs/element.md")]).into_iter().map(|(n, c)| (n, c[0].clone())).collect();
    let listed = properties(inspect());
    let mut problems = Vec::new();
    for (name, lines) in &listed {
        let flags = flags_of(lines);
        let Some(when) = rows.get(name) else {
            problems.push(format!("`{name}` has no row in the table of when each property takes effect"));
            continue;
        };
        let start_only = flags.contains("changeable only in NULL or READY state");
        let while_playing = flags.contains("changeable in NULL, READY, PAUSED or PLAYING state");
        let consistent = match when.as_str() {
            "live" | "per frame" => !start_only,
            "at the next start" => !while_playing,
            "read-only" => !flags.contains("writable"),
            "—" => true,
            other => {
                problems.push(format!("`{name}`: {other:?} is not one of live, per frame, at the next start, read-only, —"));
                true
            }
        };
        if !consistent {
            problems.push(format!("`{name}` is {when:?} in the table, but gst-inspect-1.0 says: {flags}"));
        }
    }
    for name in rows.keys().filter(|n| !listed.contains_key(*n)) {
        problems.push(format!("`{name}` has a row but gst-inspect-1.0 lists no such property"));
    }
    assert!(problems.is_empty(), "docs/element.md, table of when each property takes effect:\n  {}", problems.join("\n  "));
}

#[test]
fn readme_property_table_names_properties_with_their_defaults() {
    let readme = read(&root().join("README.md"));
    let section = readme.split_once("## The properties people change most").expect("README has its property table").1;
    let rows = table_rows(section.split("\n## ").next().unwrap());
    assert!(rows.len() >= 8, "the README's property table has {} rows", rows.len());
    let listed = properties(inspect());
    for (name, cells) in rows {
        let lines = listed.get(&name).unwrap_or_else(|| panic!("README's table names `{name}`, which gst-inspect-1.0 does not list"));
        let (written, actual) = (cells[0].trim_matches('`'), default_of(lines));
        let same = written == actual || actual.ends_with(&format!("\"{written}\"")) || (written == "unset" && actual == "null");
        assert!(same, "README gives `{name}` the default {written:?}; gst-inspect-1.0 says {actual:?}");
    }
}

#[test]
fn readme_is_a_front_page() {
    let lines = read(&root().join("README.md")).lines().count();
    assert!(lines <= README_MAX_LINES, "README.md has {lines} lines, more than {README_MAX_LINES}: move the detail into docs/");
}

/// GitHub's anchor for a heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The text outside fenced code blocks and inline code, where links are links.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            // Inline code spans: drop the text between pairs of backticks.
            out.extend(line.split('`').step_by(2));
            out.push('\n');
        }
    }
    out
}

fn headings(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.push(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

#[test]
fn relative_links_point_at_files_and_headings() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = read(&file);
        let body = prose(&text);
        let mut rest = body.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(close) = rest.find(')') else { break };
            let target = rest[..close].split_whitespace().next().unwrap_or("");
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, fragment) = target.split_once('#').map_or((target, None), |(p, f)| (p, Some(f)));
            let dest = if path.is_empty() { file.clone() } else { file.parent().unwrap().join(path) };
            let shown = format!("{}: ({target})", file.strip_prefix(root()).unwrap().display());
            if !dest.exists() {
                broken.push(format!("{shown}: no file {}", dest.display()));
            } else if let Some(fragment) = fragment.filter(|_| dest.extension().is_some_and(|x| x == "md")) {
                if !headings(&read(&dest)).iter().any(|h| h == fragment) {
                    broken.push(format!("{shown}: no heading #{fragment} in {}", dest.display()));
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} relative links found");
    assert!(broken.is_empty(), "broken links:\n  {}", broken.join("\n  "));
}
