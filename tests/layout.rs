//! The shape of the source tree: no file under `src/` over 800 lines, every file's first line a
//! doc comment that says its job, and no two source files that use each other (dependencies
//! point one way, so each file can be read, tested and replaced on its own). Reads the sources;
//! needs nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A crate's source files by module path (`[]` for the crate root, `["restorer", "engine"]`
/// for `restorer/engine.rs` or `restorer/engine/mod.rs`).
struct Tree {
    files: BTreeMap<Vec<String>, PathBuf>,
}

impl Tree {
    /// The crate whose root file is `root` (`lib.rs` or a command's `main.rs`); commands are
    /// left out of the library's tree.
    fn of(root: &Path) -> Tree {
        let dir = root.parent().unwrap();
        let mut all = Vec::new();
        rust_files(dir, &mut all);
        let mut files = BTreeMap::new();
        for f in all {
            let rel = f.strip_prefix(dir).unwrap();
            if rel.starts_with("bin") {
                continue;
            }
            let mut path: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
            let last = path.pop().unwrap();
            match last.as_str() {
                "mod.rs" => {}
                _ if f == root => {}
                name => path.push(name.trim_end_matches(".rs").to_owned()),
            }
            files.insert(path, f);
        }
        Tree { files }
    }

    /// The file that a path in the file of module `from` names: the deepest module along it
    /// that is a file (`super` is the parent module, `self` this one, a bare first segment a
    /// child module of this one, if it is one).
    fn resolve(&self, from: &[String], path: &[String]) -> Option<&PathBuf> {
        let (mut at, mut rest) = match path.first().map(String::as_str) {
            Some("crate") => (Vec::new(), &path[1..]),
            Some("super" | "self") => (from.to_vec(), path),
            Some(first) => {
                let mut child = from.to_vec();
                child.push(first.to_owned());
                if !self.files.contains_key(&child) {
                    return None;
                }
                (from.to_vec(), path)
            }
            None => return None,
        };
        while let Some(first) = rest.first().map(String::as_str) {
            match first {
                "super" => {
                    at.pop()?;
                }
                "self" => {}
                _ => break,
            }
            rest = &rest[1..];
        }
        self.deepest(at, rest)
    }

    fn deepest(&self, mut at: Vec<String>, rest: &[String]) -> Option<&PathBuf> {
        for seg in rest {
            at.push(seg.clone());
            if !self.files.contains_key(&at) {
                at.pop();
                break;
            }
        }
        self.files.get(&at)
    }

    /// Every file each file uses, by the paths its code names (comments left out).
    fn uses(&self) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
        let mut uses: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
        for (module, file) in &self.files {
            let text = std::fs::read_to_string(file).unwrap();
            // Unit tests sit at the end of a file, where `super` is the file itself.
            let code = strip_comments(text.split("#[cfg(test)]").next().unwrap_or_default());
            for path in paths(&code) {
                if let Some(target) = self.resolve(module, &path) {
                    if target != file {
                        uses.entry(file.clone()).or_default().insert(target.clone());
                    }
                }
            }
        }
        uses
    }
}

/// The code without its comments and string literals (doc links name paths the code does not
/// use).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    match c {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => break,
                        _ => escaped = false,
                    }
                }
                out.push_str("\"\"");
            }
            c => out.push(c),
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every path of two or more segments in `code`, with `use` groups expanded
/// (`use super::{a, b::{c, d}}` names `super::a`, `super::b::c` and `super::b::d`).
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        if !is_ident(bytes[i]) || (i > 0 && (is_ident(bytes[i - 1]) || bytes[i - 1] == ':')) {
            i += 1;
            continue;
        }
        let (path, end) = parse_path(&bytes, i);
        i = end.max(i + 1);
        for p in path {
            if p.len() >= 2 {
                out.push(p);
            }
        }
    }
    out
}

/// The path (or use tree) starting at `i`: its expansions and where it ends.
fn parse_path(s: &[char], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    loop {
        let start = i;
        while i < s.len() && is_ident(s[i]) {
            i += 1;
        }
        if i == start {
            break;
        }
        prefix.push(s[start..i].iter().collect::<String>());
        if i + 1 < s.len() && s[i] == ':' && s[i + 1] == ':' {
            i += 2;
            if i < s.len() && s[i] == '{' {
                let (items, end) = parse_group(s, i + 1);
                let expanded = items.into_iter().map(|tail| prefix.iter().cloned().chain(tail).collect::<Vec<String>>()).collect();
                return (expanded, end);
            }
        } else {
            break;
        }
    }
    (vec![prefix], i)
}

/// The items of a `{...}` group starting after its brace, and where the group ends.
fn parse_group(s: &[char], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let mut items = Vec::new();
    while i < s.len() {
        match s[i] {
            '}' => return (items, i + 1),
            c if is_ident(c) => {
                let (mut p, end) = parse_path(s, i);
                items.append(&mut p);
                i = end;
            }
            _ => i += 1,
        }
    }
    (items, i)
}

fn crate_roots() -> Vec<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut roots = vec![src.join("lib.rs")];
    for entry in std::fs::read_dir(src.join("bin")).unwrap() {
        let dir = entry.unwrap().path();
        if dir.join("main.rs").exists() {
            roots.push(dir.join("main.rs"));
        }
    }
    roots
}

/// Pairs of files that use each other, in every crate of `src/`.
fn files_using_each_other(roots: &[PathBuf]) -> Vec<String> {
    let mut pairs = Vec::new();
    for root in roots {
        let uses = Tree::of(root).uses();
        for (a, targets) in &uses {
            for b in targets {
                if a < b && uses.get(b).is_some_and(|t| t.contains(a)) {
                    pairs.push(format!("{} <-> {}", a.display(), b.display()));
                }
            }
        }
    }
    pairs
}

#[test]
fn no_source_file_is_over_800_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).unwrap().lines().count();
            (n > 800).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these: {long:?}");
}

#[test]
fn every_source_file_begins_with_its_job() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let bare: Vec<String> = files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap().lines().next().is_some_and(|l| l.starts_with("//! ") && l.len() > 12))
        .map(|f| f.display().to_string())
        .collect();
    assert!(bare.is_empty(), "these files do not begin with a `//!` line saying their job: {bare:?}");
}

#[test]
fn no_two_source_files_use_each_other() {
    let roots = crate_roots();
    // The scan sees real uses: the engine uses the ladder, the element uses the core.
    let lib = Tree::of(&roots[0]);
    let uses = lib.uses();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let used_by = |from: &str| uses.get(&src.join(from)).cloned().unwrap_or_default();
    let pairs0 = files_using_each_other(&roots);
    eprintln!("PAIRS {pairs0:#?}");
    assert!(used_by("restorer/engine.rs").contains(&src.join("restorer/ladder.rs")), "the scan finds nothing: {uses:#?}");
    assert!(used_by("gpenfilter/imp.rs").contains(&src.join("restorer/mod.rs")), "the scan misses crate paths: {uses:#?}");
    let pairs = files_using_each_other(&roots);
    assert!(pairs.is_empty(), "files that use each other: {pairs:#?}");
}

/// The check itself: a pair added on purpose, in a crate made for it, is found, and so are the
/// ways a path can be written (`super::`, `crate::`, a `use` group, a child of `mod.rs`).
#[test]
fn the_check_finds_files_that_use_each_other() {
    let dir = std::env::temp_dir().join(format!("gst-gpen-layout-{}", std::process::id()));
    let write = |rel: &str, text: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("lib.rs", "//! root\nmod a;\nmod b;\npub use a::X;\n");
    write("bin/.keep", "");
    write("a/mod.rs", "//! a\nmod one;\nmod two;\npub use one::X;\n");
    write("a/one.rs", "//! one\nuse super::two::Y;\npub struct X;\n");
    write("a/two.rs", "//! two\nuse super::{one::X, three};\npub struct Y;\n");
    write("b.rs", "//! b\n// crate::a::one is named in a comment only\nfn f() { let _ = \"crate::a\"; }\n");
    let pairs = files_using_each_other(&[dir.join("lib.rs")]);
    assert_eq!(pairs.len(), 1, "{pairs:?}");
    assert!(pairs[0].contains("a/one.rs") && pairs[0].contains("a/two.rs"), "{pairs:?}");
    // Through `crate::` and a nested group, across folders.
    write("a/two.rs", "//! two\npub struct Y;\n");
    write("b.rs", "//! b\nuse crate::{a::{one::X}};\npub struct B;\n");
    write("a/one.rs", "//! one\npub struct X;\nfn f() -> crate::b::B { todo!() }\n");
    let pairs = files_using_each_other(&[dir.join("lib.rs")]);
    assert_eq!(pairs.len(), 1, "{pairs:?}");
    assert!(pairs[0].contains("a/one.rs") && pairs[0].contains("b.rs"), "{pairs:?}");
    // A parent that declares and re-exports its children is not used by them unless they name it.
    write("a/one.rs", "//! one\npub struct X;\n");
    assert!(files_using_each_other(&[dir.join("lib.rs")]).is_empty());
    write("a/one.rs", "//! one\npub struct X;\nfn f() { super::helper() }\n");
    write("a/mod.rs", "//! a\nmod one;\nmod two;\npub use one::X;\nfn helper() {}\n");
    let pairs = files_using_each_other(&[dir.join("lib.rs")]);
    assert!(pairs.len() == 1 && pairs[0].contains("a/mod.rs"), "{pairs:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
