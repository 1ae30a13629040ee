//! Tidy checks on the source tree (std only, no build of anything, well under a second):
//!
//! 1. **No import circle between xtask modules.** Every module of `xtask/src` (files and
//!    directories, from `lib.rs` along its `mod name;` declarations) is a node. A module
//!    depends on another when it names it through `crate::…`, `super::…`, `self::…` or a
//!    child module's name, in a `use` declaration or in a path anywhere in its code (its
//!    inline `mod tests` included; comments and string literals are not code). A name of
//!    the crate root that is not a module (`crate::Result`) is an edge to the root, whose
//!    `mod` declarations are not edges. The graph must have no cycle; a cycle is reported
//!    with its path and the place of each edge.
//! 2. **No source file over [`MAX_LINES`] lines** in the workspace (`.rs`, `.c`, `.h`,
//!    `.py`, `.pyi`): the crates, xtask, benches and examples. Excepted: test code
//!    ([`TEST_DIRS`]: `tests/` directories and the cargo-fuzz targets), files that are only compiled for tests (declared as
//!    `#[cfg(test)] mod name;`), the [`GENERATED`] files, and `target/` and hidden
//!    directories. [`TEMPORARY_OVER_LIMIT_ALLOWLIST`] (empty, and meant to stay so) would
//!    list files over the limit whose split is under way; an entry that is already under
//!    the limit (or gone) fails the check too, so the list cannot go stale.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Longest a non-test source file may be, in lines.
const MAX_LINES: usize = 800;

/// Generated files, exempt from the line limit (paths relative to the workspace root).
const GENERATED: &[&str] = &[
    // The C header: the C ABI's declarations, one per entry point.
    "crates/capi/include/fastattn.h",
];

/// TEMPORARY: files over [`MAX_LINES`] whose split is under way. Issue 29's splits are
/// merged, so this list must stay empty: split a file along its concerns instead of listing
/// it here. An entry that is under the limit or no longer exists makes the check fail.
const TEMPORARY_OVER_LIMIT_ALLOWLIST: &[&str] = &[];

/// Directories of test code, exempt from the line limit: integration tests and the
/// cargo-fuzz targets (`fuzz/fuzz_targets/`, test harnesses run by `.ci/fuzz.sh`).
const TEST_DIRS: &[&str] = &["tests", "fuzz_targets"];

/// Source file extensions the line limit applies to.
const SOURCE_EXTENSIONS: &[&str] = &["rs", "c", "h", "py", "pyi"];

/// Directory names never searched: build output, Python caches, fuzzing data (the corpus
/// and crash artifacts are not source). Hidden directories are skipped too.
const SKIPPED_DIRS: &[&str] = &[
    "target",
    "node_modules",
    "__pycache__",
    "corpus",
    "artifacts",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

// ---------------------------------------------------------------------------------------
// A small Rust lexer: identifiers and punctuation, with comments, strings and characters
// removed, each token with its line.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// Tokens of `src` with their 1-based lines. Comments (nested block comments included),
/// string, byte-string, raw-string and character literals are dropped; lifetimes become
/// their identifier; numbers become identifiers (harmless: never `crate`/`super`/`self`).
fn lex(src: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = src.chars().collect();
    let n = c.len();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let count_lines = |from: usize, to: usize| c[from..to].iter().filter(|&&x| x == '\n').count();
    while i < n {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && i + 1 < n && c[i + 1] == '/' {
            while i < n && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && i + 1 < n && c[i + 1] == '*' {
            let start = i;
            let mut depth = 0;
            while i < n {
                if c[i] == '/' && i + 1 < n && c[i + 1] == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && i + 1 < n && c[i + 1] == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            line += count_lines(start, i.min(n));
        } else if ch == '"' {
            let start = i;
            i += 1;
            while i < n && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            line += count_lines(start, i.min(n));
        } else if ch == '\'' {
            // A character literal ('a', '\n', '\u{1F600}', '{') or a lifetime ('a).
            if i + 1 < n && c[i + 1] == '\\' {
                i += 3; // the quote, the backslash and the escaped character
                while i < n && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if i + 2 < n && c[i + 2] == '\'' {
                i += 3;
            } else {
                i += 1; // a lifetime: its name lexes as an identifier
            }
        } else if is_ident_start(ch) || ch.is_ascii_digit() {
            // Raw strings: r"…", r#"…"#, br"…" (and b"…", b'…' via the arms above).
            let raw_prefix = match ch {
                'r' => Some(1),
                'b' if i + 1 < n && c[i + 1] == 'r' => Some(2),
                _ => None,
            };
            if let Some(p) = raw_prefix {
                let mut j = i + p;
                let mut hashes = 0;
                while j < n && c[j] == '#' {
                    hashes += 1;
                    j += 1;
                }
                if j < n && c[j] == '"' {
                    let start = i;
                    j += 1;
                    'scan: while j < n {
                        if c[j] == '"' && (0..hashes).all(|h| j + 1 + h < n && c[j + 1 + h] == '#')
                        {
                            j += 1 + hashes;
                            break 'scan;
                        }
                        j += 1;
                    }
                    i = j;
                    line += count_lines(start, i.min(n));
                    continue;
                }
            }
            if ch == 'b' && i + 1 < n && (c[i + 1] == '"' || c[i + 1] == '\'') {
                i += 1; // the literal lexes (and is dropped) on the next turn
                continue;
            }
            let start = i;
            while i < n && is_ident_char(c[i]) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            out.push((Tok::Ident(word), line));
        } else if ch == ':' && i + 1 < n && c[i + 1] == ':' {
            out.push((Tok::PathSep, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The module graph.
// ---------------------------------------------------------------------------------------

/// A module path: `[]` is the crate root, `["suites", "gemm"]` is `crate::suites::gemm`.
type ModPath = Vec<String>;

/// The display name of a module: `crate` or `suites::gemm`.
fn mod_name(p: &[String]) -> String {
    if p.is_empty() {
        "crate".to_string()
    } else {
        p.join("::")
    }
}

/// The `mod name;` declarations (with a `;`, so a file of their own) of a file's tokens,
/// outside inline modules.
fn file_children(toks: &[(Tok, usize)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    for w in 0..toks.len() {
        match &toks[w].0 {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => depth = depth.saturating_sub(1),
            Tok::Ident(m) if m == "mod" && depth == 0 => {
                if let (Some((Tok::Ident(name), _)), Some((Tok::Punct(';'), _))) =
                    (toks.get(w + 1), toks.get(w + 2))
                {
                    out.push(name.clone());
                }
            }
            _ => {}
        }
    }
    out
}

/// One dependency: `from` names `to` at `line` of `from`'s file.
#[derive(Debug, Clone, PartialEq)]
struct Edge {
    from: ModPath,
    to: ModPath,
    line: usize,
}

/// The paths a `use` tree starting at `toks[i]` names, each as its segments, and the index
/// after the tree. `{a, b::{c, self}}`, `*` and `as x` are understood; `self` inside a
/// group stands for the group's prefix.
fn use_tree(toks: &[(Tok, usize)], mut i: usize, prefix: &[String]) -> (Vec<Vec<String>>, usize) {
    let mut path: Vec<String> = prefix.to_vec();
    let mut out = Vec::new();
    loop {
        match toks.get(i).map(|t| &t.0) {
            Some(Tok::Ident(s))
                if s == "self" && path.len() == prefix.len() && !prefix.is_empty() =>
            {
                i += 1;
            }
            Some(Tok::Ident(s)) if s == "as" => {
                i += 2; // `as name`
                break;
            }
            Some(Tok::Ident(s)) => {
                path.push(s.clone());
                i += 1;
            }
            Some(Tok::PathSep) => i += 1,
            Some(Tok::Punct('*')) => {
                i += 1;
                break;
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                loop {
                    match toks.get(i).map(|t| &t.0) {
                        Some(Tok::Punct('}')) => {
                            i += 1;
                            break;
                        }
                        Some(Tok::Punct(',')) => i += 1,
                        None => break,
                        _ => {
                            let (paths, next) = use_tree(toks, i, &path);
                            out.extend(paths);
                            i = next;
                        }
                    }
                }
                return (out, i);
            }
            _ => break,
        }
    }
    out.push(path);
    (out, i)
}

/// Where `segments` (a path as written in module `here`) lands: the module it names or
/// whose item it names, or `None` for a path outside the crate (another crate, a local
/// name). `children` lists the file modules; `inline_children` the child modules of `here`
/// (files or inline).
fn resolve(
    segments: &[String],
    here: &[String],
    here_children: &BTreeSet<String>,
    modules: &BTreeSet<ModPath>,
) -> Option<ModPath> {
    let first = segments.first()?;
    let (mut abs, rest): (ModPath, &[String]) = match first.as_str() {
        "crate" => (Vec::new(), &segments[1..]),
        "self" => (here.to_vec(), &segments[1..]),
        "super" => {
            let mut p = here.to_vec();
            let mut k = 0;
            while segments.get(k).is_some_and(|s| s == "super") {
                p.pop()?;
                k += 1;
            }
            (p, &segments[k..])
        }
        name if here_children.contains(name) => (here.to_vec(), segments),
        _ => return None,
    };
    abs.extend(rest.iter().cloned());
    // The longest prefix that is a module of its own file.
    (0..=abs.len())
        .rev()
        .map(|k| abs[..k].to_vec())
        .find(|p| modules.contains(p))
}

/// The edges of one file (module `file_mod`, whose file-module children are
/// `file_children`): every `use` path and every other path starting with `crate`,
/// `super`, `self` or a child module, resolved; self-edges dropped.
fn file_edges(
    toks: &[(Tok, usize)],
    file_mod: &[String],
    modules: &BTreeSet<ModPath>,
) -> Vec<Edge> {
    // Child modules of the file module (its files) and of each inline module.
    let file_kids: BTreeSet<String> = modules
        .iter()
        .filter(|m| m.len() == file_mod.len() + 1 && m.starts_with(file_mod))
        .map(|m| m.last().expect("non-empty").clone())
        .collect();
    let mut edges = Vec::new();
    // The inline module stack: (name, brace depth inside it).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let here: ModPath = file_mod
            .iter()
            .cloned()
            .chain(inline.iter().map(|(n, _)| n.clone()))
            .collect();
        let kids: BTreeSet<String> = if inline.is_empty() {
            file_kids.clone()
        } else {
            BTreeSet::new()
        };
        let mut add = |segs: &[String], line: usize| {
            if let Some(to) = resolve(segs, &here, &kids, modules) {
                if to.as_slice() != file_mod {
                    edges.push(Edge {
                        from: file_mod.to_vec(),
                        to,
                        line,
                    });
                }
            }
        };
        let (tok, line) = (&toks[i].0, toks[i].1);
        match tok {
            Tok::Punct('{') => {
                depth += 1;
                i += 1;
            }
            Tok::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            Tok::Ident(m) if m == "mod" => {
                if let (Some((Tok::Ident(name), _)), Some((Tok::Punct('{'), _))) =
                    (toks.get(i + 1), toks.get(i + 2))
                {
                    depth += 1;
                    inline.push((name.clone(), depth));
                    i += 3;
                } else {
                    i += 1;
                }
            }
            Tok::Ident(u) if u == "use" => {
                let (paths, next) = use_tree(toks, i + 1, &[]);
                for p in paths {
                    add(&p, line);
                }
                i = next.max(i + 1);
            }
            Tok::Ident(first) => {
                let starts_path = i == 0 || toks[i - 1].0 != Tok::PathSep;
                let next_is_sep = toks.get(i + 1).is_some_and(|t| t.0 == Tok::PathSep);
                if starts_path && next_is_sep {
                    let mut segs = vec![first.clone()];
                    let mut j = i + 1;
                    while toks.get(j).is_some_and(|t| t.0 == Tok::PathSep) {
                        match toks.get(j + 1) {
                            Some((Tok::Ident(s), _)) => {
                                segs.push(s.clone());
                                j += 2;
                            }
                            _ => break,
                        }
                    }
                    add(&segs, line);
                    i = j;
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    edges
}

/// A crate's module graph: the file modules and the edges between them, each edge with
/// the file and line that makes it.
#[derive(Debug, Default)]
struct Graph {
    modules: BTreeSet<ModPath>,
    /// from → to → (file, line) of the first place that names it.
    edges: BTreeMap<ModPath, BTreeMap<ModPath, (String, usize)>>,
}

impl Graph {
    /// The graph of the crate whose files are `files`: module path → (file name, text).
    fn from_sources(files: &BTreeMap<ModPath, (String, String)>) -> Graph {
        let modules: BTreeSet<ModPath> = files.keys().cloned().collect();
        let mut g = Graph {
            modules: modules.clone(),
            ..Graph::default()
        };
        for (m, (file, text)) in files {
            for e in file_edges(&lex(text), m, &modules) {
                g.edges
                    .entry(e.from)
                    .or_default()
                    .entry(e.to)
                    .or_insert((file.clone(), e.line));
            }
        }
        g
    }

    /// Every cycle a depth-first search meets (one per back edge), each as the modules
    /// along it, the first repeated at the end.
    fn cycles(&self) -> Vec<Vec<ModPath>> {
        #[derive(Clone, Copy, PartialEq)]
        enum State {
            New,
            Open,
            Done,
        }
        fn visit(
            g: &Graph,
            m: &ModPath,
            state: &mut BTreeMap<ModPath, State>,
            stack: &mut Vec<ModPath>,
            out: &mut Vec<Vec<ModPath>>,
        ) {
            state.insert(m.clone(), State::Open);
            stack.push(m.clone());
            for to in g.edges.get(m).into_iter().flat_map(|e| e.keys()) {
                match state.get(to).copied().unwrap_or(State::New) {
                    State::New => visit(g, to, state, stack, out),
                    State::Open => {
                        let at = stack
                            .iter()
                            .position(|s| s == to)
                            .expect("open is on stack");
                        let mut cycle = stack[at..].to_vec();
                        cycle.push(to.clone());
                        out.push(cycle);
                    }
                    State::Done => {}
                }
            }
            stack.pop();
            state.insert(m.clone(), State::Done);
        }
        let mut state = BTreeMap::new();
        let mut out = Vec::new();
        for m in &self.modules {
            if state.get(m).copied().unwrap_or(State::New) == State::New {
                visit(self, m, &mut state, &mut Vec::new(), &mut out);
            }
        }
        out
    }

    /// A cycle as text: `a -> b (src/a.rs:3) -> a (src/b.rs:9)`.
    fn describe(&self, cycle: &[ModPath]) -> String {
        let mut s = mod_name(&cycle[0]);
        for w in cycle.windows(2) {
            let (file, line) = &self.edges[&w[0]][&w[1]];
            s += &format!(" -> {} ({file}:{line})", mod_name(&w[1]));
        }
        s
    }
}

/// Reads the crate whose root file is `root` (`src/lib.rs`) and its modules, following
/// `mod name;` to `name.rs` or `name/mod.rs`. File names are relative to `base`.
fn read_crate(root: &Path, base: &Path) -> BTreeMap<ModPath, (String, String)> {
    let mut files = BTreeMap::new();
    let mut todo: Vec<(ModPath, PathBuf)> = vec![(Vec::new(), root.to_path_buf())];
    while let Some((m, path)) = todo.pop() {
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let is_dir_owner = matches!(
            path.file_name().and_then(|f| f.to_str()),
            Some("lib.rs" | "main.rs" | "mod.rs")
        );
        let dir = if is_dir_owner {
            path.parent().expect("a file has a directory").to_path_buf()
        } else {
            path.with_extension("")
        };
        for child in file_children(&lex(&text)) {
            let flat = dir.join(format!("{child}.rs"));
            let nested = dir.join(&child).join("mod.rs");
            let file = if flat.is_file() { flat } else { nested };
            let mut cm = m.clone();
            cm.push(child);
            todo.push((cm, file));
        }
        let shown = path
            .strip_prefix(base)
            .unwrap_or(&path)
            .display()
            .to_string();
        files.insert(m, (shown, text));
    }
    files
}

#[test]
fn xtask_modules_import_no_circle() {
    let ws = workspace_root();
    let files = read_crate(&ws.join("xtask/src/lib.rs"), &ws);
    assert!(
        files.contains_key(&vec!["bench".to_string()]),
        "expected xtask's modules, found {:?}",
        files.keys().collect::<Vec<_>>()
    );
    let g = Graph::from_sources(&files);
    let cycles = g.cycles();
    assert!(
        cycles.is_empty(),
        "import circle(s) between xtask modules (move the shared items into a module both \
         can use):\n  {}",
        cycles
            .iter()
            .map(|c| g.describe(c))
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------
// The line limit.
// ---------------------------------------------------------------------------------------

/// Every file under `dir` with a source extension, skipping [`SKIPPED_DIRS`], hidden
/// directories and [`TEST_DIRS`]; paths relative to `root`, with `/`.
fn source_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if !(name.starts_with('.')
                || TEST_DIRS.contains(&name.as_str())
                || SKIPPED_DIRS.contains(&name.as_str()))
            {
                source_files(root, &path, out);
            }
        } else if kind.is_file()
            && path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| SOURCE_EXTENSIONS.contains(&e))
        {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(rel.join("/"));
        }
    }
}

/// The files that `rel_file` (a `.rs` file, relative path with `/`) declares as
/// `#[cfg(test)] mod name;`: compiled only for tests, so exempt from the limit.
fn test_only_children(rel_file: &str, text: &str) -> Vec<String> {
    let toks = lex(text);
    let dir = match rel_file.rsplit_once('/') {
        Some((d, "lib.rs" | "main.rs" | "mod.rs")) => d.to_string(),
        Some(_) | None => rel_file.trim_end_matches(".rs").to_string(),
    };
    let ident = |k: usize| match toks.get(k).map(|t| &t.0) {
        Some(Tok::Ident(s)) => Some(s.as_str()),
        _ => None,
    };
    let punct = |k: usize, p: char| toks.get(k).is_some_and(|t| t.0 == Tok::Punct(p));
    let mut out = Vec::new();
    for k in 0..toks.len() {
        // `# [ cfg ( test ) ]`
        let is_cfg_test = punct(k, '#')
            && punct(k + 1, '[')
            && ident(k + 2) == Some("cfg")
            && punct(k + 3, '(')
            && ident(k + 4) == Some("test")
            && punct(k + 5, ')')
            && punct(k + 6, ']');
        if !is_cfg_test {
            continue;
        }
        let mut j = k + 7;
        // Other attributes in between: `#[…]`.
        while punct(j, '#') && punct(j + 1, '[') {
            let mut d = 0;
            j += 1;
            while j < toks.len() {
                if punct(j, '[') {
                    d += 1;
                } else if punct(j, ']') {
                    d -= 1;
                    if d == 0 {
                        j += 1;
                        break;
                    }
                }
                j += 1;
            }
        }
        if ident(j) == Some("pub") {
            j += 1;
            if punct(j, '(') {
                while j < toks.len() && !punct(j, ')') {
                    j += 1;
                }
                j += 1;
            }
        }
        if ident(j) == Some("mod") && punct(j + 2, ';') {
            if let Some(name) = ident(j + 1) {
                out.push(format!("{dir}/{name}.rs"));
                out.push(format!("{dir}/{name}/mod.rs"));
            }
        }
    }
    out
}

/// What the line check found: files over the limit that are not allowed to be, and stale
/// allowlist entries (under the limit, or missing).
fn line_limit_findings(
    files: &BTreeMap<String, String>,
    allowlist: &[&str],
    generated: &[&str],
) -> (Vec<String>, Vec<String>) {
    let test_only: BTreeSet<String> = files
        .iter()
        .filter(|(p, _)| p.ends_with(".rs"))
        .flat_map(|(p, t)| test_only_children(p, t))
        .collect();
    let mut over = Vec::new();
    for (path, text) in files {
        let lines = text.lines().count();
        let exempt = generated.contains(&path.as_str())
            || test_only.contains(path)
            || allowlist.contains(&path.as_str());
        if lines > MAX_LINES && !exempt {
            over.push(format!("{path}: {lines} lines"));
        }
    }
    let mut stale = Vec::new();
    for entry in allowlist {
        match files.get(*entry) {
            None => stale.push(format!("{entry}: no such source file")),
            Some(t) if t.lines().count() <= MAX_LINES => {
                stale.push(format!("{entry}: {} lines", t.lines().count()))
            }
            Some(_) => {}
        }
    }
    (over, stale)
}

#[test]
fn no_source_file_is_over_the_line_limit() {
    let ws = workspace_root();
    let mut paths = Vec::new();
    source_files(&ws, &ws, &mut paths);
    let files: BTreeMap<String, String> = paths
        .into_iter()
        .filter_map(|p| Some((p.clone(), fs::read_to_string(ws.join(&p)).ok()?)))
        .collect();
    assert!(
        files.contains_key("xtask/src/lib.rs"),
        "the walk found no sources under {}",
        ws.display()
    );
    let (over, stale) = line_limit_findings(&files, TEMPORARY_OVER_LIMIT_ALLOWLIST, GENERATED);
    assert!(
        over.is_empty(),
        "source files over {MAX_LINES} lines (split them along their concerns):\n  {}",
        over.join("\n  ")
    );
    assert!(
        stale.is_empty(),
        "TEMPORARY_OVER_LIMIT_ALLOWLIST in xtask/tests/tidy.rs lists files that are not over \
         {MAX_LINES} lines any more; remove them from it:\n  {}",
        stale.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------
// The checker's own logic, on synthetic sources.
// ---------------------------------------------------------------------------------------

fn synthetic(files: &[(&str, &str)]) -> Graph {
    let files: BTreeMap<ModPath, (String, String)> = files
        .iter()
        .map(|(m, text)| {
            let path: ModPath = if m.is_empty() {
                Vec::new()
            } else {
                m.split("::").map(str::to_string).collect()
            };
            (path, (format!("{m}.rs"), text.to_string()))
        })
        .collect();
    Graph::from_sources(&files)
}

fn edges_of(g: &Graph, from: &str) -> Vec<String> {
    let key: ModPath = if from == "crate" {
        Vec::new()
    } else {
        from.split("::").map(str::to_string).collect()
    };
    g.edges
        .get(&key)
        .map(|e| e.keys().map(|m| mod_name(m)).collect())
        .unwrap_or_default()
}

#[test]
fn a_cycle_through_three_modules_is_found_with_its_path() {
    let g = synthetic(&[
        (
            "",
            "pub mod a;\npub mod b;\npub mod c;\npub type Result = ();",
        ),
        ("a", "use crate::b::Thing;\n"),
        ("b", "pub struct Thing;\nfn f() { crate::c::g(); }\n"),
        ("c", "pub fn g() {}\nuse crate::{a, Result};\n"),
    ]);
    let cycles = g.cycles();
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    assert_eq!(
        g.describe(&cycles[0]),
        "a -> b (a.rs:1) -> c (b.rs:2) -> a (c.rs:2)"
    );
}

#[test]
fn a_tree_of_modules_has_no_cycle() {
    let g = synthetic(&[
        (
            "",
            "pub mod a;\npub mod b;\npub mod c;\npub type Result = ();",
        ),
        ("a", "use crate::Result;\n"),
        ("b", "use crate::a;\nuse super::c::{self, X};\n"),
        (
            "c",
            "use crate::a::*;\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
        ),
    ]);
    assert!(g.cycles().is_empty(), "{:?}", g.cycles());
    assert_eq!(edges_of(&g, "a"), ["crate"]);
    assert_eq!(edges_of(&g, "b"), ["a", "c"]);
    // `use super::*` in an inline `mod tests` is the module itself: no edge to the root.
    assert_eq!(edges_of(&g, "c"), ["a"]);
}

#[test]
fn parent_and_child_modules_resolve_super_self_and_child_names() {
    // suites re-exports from its child gemm; gemm uses its sibling shape through `super`:
    // a tree. Comments and strings naming `crate::x` are not code.
    let tree = synthetic(&[
        ("", "pub mod suites;\npub mod case;"),
        ("case", "pub struct Case;"),
        (
            "suites",
            "mod gemm;\nmod shape;\npub use self::gemm::gemm_case;\nfn f() { gemm::g(); }",
        ),
        (
            "suites::gemm",
            "use super::shape::parse;\nuse crate::case::Case;\n// crate::suites::x\nconst S: &str = \"super::Suite\";\nconst R: &str = r#\"crate::suites\"#;\nfn c() -> char { '\"' }\nfn l<'a>(x: &'a str) {}",
        ),
        ("suites::shape", "pub(super) fn parse() {}"),
    ]);
    assert!(tree.cycles().is_empty(), "{:?}", tree.cycles());
    assert_eq!(edges_of(&tree, "suites"), ["suites::gemm"]);
    assert_eq!(edges_of(&tree, "suites::gemm"), ["case", "suites::shape"]);
    // A child naming an item of its parent while the parent uses the child: a circle.
    let circle = synthetic(&[
        ("", "pub mod suites;"),
        (
            "suites",
            "mod gemm;\npub use gemm::gemm_case;\npub struct Suite;",
        ),
        ("suites::gemm", "fn f() -> Option<super::Suite> { None }"),
    ]);
    let cycles = circle.cycles();
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    let names: Vec<String> = cycles[0].iter().map(|m| mod_name(m)).collect();
    assert_eq!(names, ["suites", "suites::gemm", "suites"]);
}

#[test]
fn a_path_to_another_crate_is_no_edge() {
    // `attention::` in a module without an `attention` child is the external crate.
    let g = synthetic(&[
        ("", "pub mod suites;"),
        ("suites", "mod attention;\nuse self::attention::f;"),
        (
            "suites::attention",
            "pub fn f(x: attention::TensorRef) { std::mem::drop(x) }",
        ),
    ]);
    assert_eq!(edges_of(&g, "suites::attention"), Vec::<String>::new());
    assert_eq!(edges_of(&g, "suites"), ["suites::attention"]);
}

#[test]
fn line_limit_flags_long_files_and_stale_allowlist_entries() {
    let long = "x\n".repeat(MAX_LINES + 1);
    let short = "x\n".repeat(MAX_LINES);
    let files: BTreeMap<String, String> = [
        ("a/src/big.rs", long.clone()),
        ("a/src/ok.rs", short.clone()),
        ("a/src/listed.rs", long.clone()),
        ("a/src/was_big.rs", short.clone()),
        ("a/include/gen.h", long.clone()),
        (
            "a/src/lib.rs",
            "#[cfg(test)]\n#[allow(unused)]\nmod tests;\nmod big;".to_string(),
        ),
        ("a/src/tests.rs", long.clone()),
        ("a/src/ok/inner.rs", long),
    ]
    .into_iter()
    .map(|(p, t)| (p.to_string(), t))
    .collect();
    let (over, stale) = line_limit_findings(
        &files,
        &["a/src/listed.rs", "a/src/was_big.rs", "a/src/gone.rs"],
        &["a/include/gen.h"],
    );
    assert_eq!(
        over,
        [
            format!("a/src/big.rs: {} lines", MAX_LINES + 1),
            format!("a/src/ok/inner.rs: {} lines", MAX_LINES + 1),
        ]
    );
    assert_eq!(
        stale,
        [
            format!("a/src/was_big.rs: {MAX_LINES} lines"),
            "a/src/gone.rs: no such source file".to_string(),
        ]
    );
}
