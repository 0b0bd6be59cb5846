//! The house's walls, checked from the source: which file of `src/` takes names from which.
//!
//! Each `use crate::…`, `use super::…`, `use self::…` (and the same paths written inline)
//! is resolved to the file that defines the name, following re-exports, so
//! `crate::actors::DbGateway` counts as an import of `actors/db_executor.rs`, not of
//! `actors/mod.rs`. Declaring a child module (`mod x;`) is no import, and test modules
//! (`#[cfg(test)] mod …`) may reach anywhere. On that graph:
//! - no two files import each other, directly or round a loop;
//! - the top-level modules (a folder of `src/` or a file beside them) form no loop
//!   either, so every arrow between them runs one way, down;
//! - the layers of the architecture point one way: `domain/` takes nothing from outside
//!   `domain/`; `db/`, `auth/` and `config.rs` take nothing from `actors/` or `http/`
//!   (nor `config.rs` and `auth/` from `db/`); nothing outside `http/` but the composition
//!   root (`app.rs`, `lib.rs`, `main.rs`) takes anything from `http/`, so `http/` alone
//!   knows problem+json.
//!
//! A failure names the files and the loop, so the fix starts where it is read.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    path::{Path, PathBuf},
};

/// A module path from the crate root, e.g. `["actors", "cache"]`; the root is `[]`.
type ModPath = Vec<String>;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Semi,
    Star,
    Other,
}

/// Rust source as the few tokens that paths are made of; comments, strings, chars and
/// lifetimes are dropped, so a path inside a doc comment or a message is no import.
fn tokenize(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || (next == Some('#') && raw_string_start(&chars, i + 1))) {
            let mut hashes = 0;
            i += 1;
            while chars[i] == '#' {
                hashes += 1;
                i += 1;
            }
            i += 1; // the opening quote
            while i < chars.len() {
                if chars[i] == '"' && (0..hashes).all(|h| chars.get(i + 1 + h) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            tokens.push(Token::Other);
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            tokens.push(Token::Other);
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a): both are no path.
            if next == Some('\\') {
                i += 3;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            tokens.push(Token::Other);
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c == ':' && next == Some(':') {
            tokens.push(Token::PathSep);
            i += 2;
        } else {
            tokens.push(match c {
                '{' => Token::Open,
                '}' => Token::Close,
                ',' => Token::Comma,
                ';' => Token::Semi,
                '*' => Token::Star,
                _ => Token::Other,
            });
            i += 1;
        }
    }
    tokens
}

fn raw_string_start(chars: &[char], mut i: usize) -> bool {
    while chars.get(i) == Some(&'#') {
        i += 1;
    }
    chars.get(i) == Some(&'"')
}

/// One path a file names: its segments as written, the module it is written in (an
/// inline `mod tests { .. }` included), and for a `use` the name it binds there.
#[derive(Debug, Clone)]
struct Named {
    written_in: ModPath,
    segments: Vec<String>,
    /// The name a `use` binds (a private `use` too: child modules see it through
    /// `super::`); `None` for a path written inline.
    binds: Option<String>,
}

/// Expands a use tree (`a::{b, c::d as e, *}`) starting at `tokens[*at]` into whole
/// paths, each with the name it binds.
fn use_tree(tokens: &[Token], at: &mut usize, prefix: &[String], out: &mut Vec<(Vec<String>, String)>) {
    let mut path = prefix.to_vec();
    loop {
        match tokens.get(*at) {
            Some(Token::Ident(name)) if name == "as" => {
                *at += 1;
                if let Some(Token::Ident(alias)) = tokens.get(*at) {
                    *at += 1;
                    out.push((path.clone(), alias.clone()));
                }
                return;
            }
            Some(Token::Ident(name)) => {
                path.push(name.clone());
                *at += 1;
            }
            Some(Token::PathSep) => *at += 1,
            Some(Token::Star) => {
                *at += 1;
                path.push("*".into());
                out.push((path, "*".into()));
                return;
            }
            Some(Token::Open) => {
                *at += 1;
                loop {
                    match tokens.get(*at) {
                        Some(Token::Close) => {
                            *at += 1;
                            return;
                        }
                        Some(Token::Comma) => *at += 1,
                        None => return,
                        _ => use_tree(tokens, at, &path, out),
                    }
                }
            }
            _ => {
                if path.len() > prefix.len() {
                    // `use a::{self}` binds `a`.
                    if path.last().map(String::as_str) == Some("self") {
                        path.pop();
                    }
                    if let Some(bound) = path.last().cloned() {
                        out.push((path, bound));
                    }
                }
                return;
            }
        }
    }
}

/// Every path a file names, with the module each is written in.
fn named_paths(file_module: &ModPath, source: &str) -> Vec<Named> {
    let tokens = tokenize(source);
    let mut named = Vec::new();
    // Inline modules open a scope for `super::`; the stack holds (brace depth, module).
    let mut scopes: Vec<(usize, ModPath)> = vec![(0, file_module.clone())];
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let module = scopes.last().map(|(_, m)| m.clone()).unwrap_or_default();
        match &tokens[i] {
            Token::Open => {
                depth += 1;
                i += 1;
            }
            Token::Close => {
                if scopes.len() > 1 && scopes.last().map(|(d, _)| *d) == Some(depth) {
                    scopes.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            Token::Ident(word) if word == "mod" => {
                let test_only = i >= 5
                    && tokens[i - 5] == Token::Ident("cfg".into())
                    && tokens[i - 3] == Token::Ident("test".into());
                if let (true, Some(Token::Open)) = (test_only, tokens.get(i + 2)) {
                    // Tests may reach anywhere; the walls are for what ships.
                    let mut open = 0;
                    i += 2;
                    while i < tokens.len() {
                        match tokens[i] {
                            Token::Open => open += 1,
                            Token::Close => open -= 1,
                            _ => {}
                        }
                        i += 1;
                        if open == 0 {
                            break;
                        }
                    }
                } else if let (Some(Token::Ident(name)), Some(Token::Open)) = (tokens.get(i + 1), tokens.get(i + 2)) {
                    let mut inner = module.clone();
                    inner.push(name.clone());
                    depth += 1;
                    scopes.push((depth, inner));
                    i += 3;
                } else {
                    i += 1;
                }
            }
            Token::Ident(word) if word == "use" => {
                i += 1;
                let mut trees = Vec::new();
                use_tree(&tokens, &mut i, &[], &mut trees);
                for (segments, bound) in trees {
                    named.push(Named { written_in: module.clone(), segments, binds: Some(bound) });
                }
            }
            Token::Ident(word) if i == 0 || tokens[i - 1] != Token::PathSep => {
                let mut segments = vec![word.clone()];
                i += 1;
                while let (Some(Token::PathSep), Some(Token::Ident(next))) = (tokens.get(i), tokens.get(i + 1)) {
                    segments.push(next.clone());
                    i += 2;
                }
                if segments.len() > 1 {
                    named.push(Named { written_in: module, segments, binds: None });
                }
            }
            _ => i += 1,
        }
    }
    named
}

struct Crate {
    /// Module path → the file that holds it (inline modules map to their file).
    files: BTreeMap<ModPath, PathBuf>,
    /// Per module: re-exported name → the absolute path it stands for.
    reexports: HashMap<ModPath, HashMap<String, ModPath>>,
    /// Per file: the absolute paths it names.
    uses: BTreeMap<PathBuf, Vec<ModPath>>,
}

fn module_of(src: &Path, file: &Path) -> ModPath {
    let relative = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `segments` as written in `module`, made absolute; `None` for another crate's path.
fn absolute(files: &BTreeMap<ModPath, PathBuf>, module: &ModPath, segments: &[String]) -> Option<ModPath> {
    let mut base = module.clone();
    let mut rest = segments;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        Some(first) => {
            // A path that starts at a child module of this one (`pub use cache::Cache`).
            let mut child = module.clone();
            child.push(first.to_owned());
            if !files.contains_key(&child) {
                return None;
            }
        }
        None => return None,
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

impl Crate {
    fn read(src: &Path) -> Crate {
        let mut paths = Vec::new();
        rust_files(src, &mut paths);
        // The binary's root speaks to the library by its name, as any other crate would.
        paths.retain(|p| !(p.parent() == Some(src) && p.file_name().is_some_and(|n| n == "main.rs")));
        let mut files = BTreeMap::new();
        let mut named_by_file = Vec::new();
        for path in paths {
            let module = module_of(src, &path);
            let source = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let named = named_paths(&module, &source);
            for name in &named {
                files.entry(name.written_in.clone()).or_insert_with(|| path.clone());
            }
            files.insert(module, path.clone());
            named_by_file.push((path, named));
        }
        let mut reexports: HashMap<ModPath, HashMap<String, ModPath>> = HashMap::new();
        for (_, named) in &named_by_file {
            for name in named {
                let (Some(bound), Some(whole)) = (&name.binds, absolute(&files, &name.written_in, &name.segments))
                else {
                    continue;
                };
                reexports.entry(name.written_in.clone()).or_default().insert(bound.clone(), whole);
            }
        }
        let mut uses = BTreeMap::new();
        for (path, named) in named_by_file {
            let mut absolute_paths = Vec::new();
            for name in named {
                let whole = match absolute(&files, &name.written_in, &name.segments) {
                    Some(whole) => whole,
                    // `cache::invalidate(..)` after `use crate::actors::cache;`.
                    None if name.binds.is_none() => {
                        let Some(module) = reexports
                            .get(&name.written_in)
                            .and_then(|bound| bound.get(&name.segments[0]))
                            .filter(|target| files.contains_key(*target))
                        else {
                            continue;
                        };
                        let mut whole = module.clone();
                        whole.extend(name.segments[1..].iter().cloned());
                        whole
                    }
                    None => continue,
                };
                absolute_paths.push(whole);
            }
            uses.insert(path, absolute_paths);
        }
        Crate { files, reexports, uses }
    }

    /// The file that defines what `path` names, through re-exports.
    fn defining_file(&self, path: &ModPath, hops: usize) -> Option<PathBuf> {
        let module_len = (0..=path.len()).rev().find(|&n| self.files.contains_key(&path[..n]))?;
        let module = path[..module_len].to_vec();
        if let Some(name) = path.get(module_len) {
            if hops < 16 {
                if let Some(target) = self.reexports.get(&module).and_then(|names| names.get(name)) {
                    let mut through = target.clone();
                    if target.last().map(String::as_str) == Some("*") {
                        through.pop();
                        through.push(name.clone());
                    }
                    through.extend(path[module_len + 1..].iter().cloned());
                    if let Some(file) = self.defining_file(&through, hops + 1) {
                        return Some(file);
                    }
                }
            }
        }
        self.files.get(&module).cloned()
    }

    /// File → the files it takes names from (itself excluded).
    fn graph(&self, src: &Path) -> BTreeMap<String, BTreeSet<String>> {
        let show = |p: &Path| p.strip_prefix(src.parent().unwrap_or(src)).unwrap_or(p).display().to_string();
        let mut graph = BTreeMap::new();
        for (file, paths) in &self.uses {
            let targets: &mut BTreeSet<String> = graph.entry(show(file)).or_default();
            for path in paths {
                if let Some(target) = self.defining_file(path, 0) {
                    if target != *file {
                        targets.insert(show(&target));
                    }
                }
            }
        }
        graph
    }
}

/// The loops of a graph: each strongly connected part of two nodes or more, as one loop
/// through it (found by walking from its first node).
fn loops(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Tarjan's strongly connected components, iteratively small enough to recurse.
    struct Walk<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: HashMap<&'g str, usize>,
        low: HashMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        parts: Vec<Vec<String>>,
    }
    fn visit<'g>(w: &mut Walk<'g>, node: &'g str) {
        let n = w.index.len();
        w.index.insert(node, n);
        w.low.insert(node, n);
        w.stack.push(node);
        w.on_stack.insert(node);
        for next in w.graph.get(node).into_iter().flatten() {
            if !w.index.contains_key(next.as_str()) {
                visit(w, next);
                let low = w.low[next.as_str()].min(w.low[node]);
                w.low.insert(node, low);
            } else if w.on_stack.contains(next.as_str()) {
                let low = w.index[next.as_str()].min(w.low[node]);
                w.low.insert(node, low);
            }
        }
        if w.low[node] == w.index[node] {
            let mut part = Vec::new();
            while let Some(top) = w.stack.pop() {
                w.on_stack.remove(top);
                part.push(top.to_owned());
                if top == node {
                    break;
                }
            }
            if part.len() > 1 {
                w.parts.push(part);
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        parts: Vec::new(),
    };
    for node in graph.keys() {
        if !walk.index.contains_key(node.as_str()) {
            visit(&mut walk, node);
        }
    }
    walk.parts.into_iter().map(|part| one_loop(graph, &part)).collect()
}

/// A shortest way round a strongly connected part, from its first node back to it.
fn one_loop(graph: &BTreeMap<String, BTreeSet<String>>, part: &[String]) -> Vec<String> {
    let members: BTreeSet<&String> = part.iter().collect();
    let start = part.iter().min().cloned().unwrap_or_default();
    let mut came_from: HashMap<String, String> = HashMap::new();
    let mut frontier = vec![start.clone()];
    while !frontier.is_empty() {
        let mut next_frontier = Vec::new();
        for node in frontier {
            for next in graph.get(&node).into_iter().flatten().filter(|n| members.contains(n)) {
                if *next == start {
                    let mut back = Vec::new();
                    let mut at = node.clone();
                    while at != start {
                        back.push(at.clone());
                        at = came_from[&at].clone();
                    }
                    back.reverse();
                    let mut way = vec![start.clone()];
                    way.extend(back);
                    way.push(start.clone());
                    return way;
                }
                if !came_from.contains_key(next) && *next != start {
                    came_from.insert(next.clone(), node.clone());
                    next_frontier.push(next.clone());
                }
            }
        }
        frontier = next_frontier;
    }
    part.to_vec()
}

fn file_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    Crate::read(&src).graph(&src)
}

/// `src/actors/cache.rs` → `actors`; `src/app.rs` → `app`.
fn top_level(file: &str) -> String {
    let inside = file.strip_prefix("src/").unwrap_or(file);
    inside.split('/').next().unwrap_or(inside).trim_end_matches(".rs").to_owned()
}

fn describe(loops: &[Vec<String>]) -> String {
    loops.iter().map(|way| format!("  {}", way.join(" -> "))).collect::<Vec<_>>().join("\n")
}

#[test]
fn no_file_of_src_imports_itself_round_a_loop() {
    let loops = loops(&file_graph());
    assert!(loops.is_empty(), "import circles among the files of src/:\n{}", describe(&loops));
}

#[test]
fn the_top_level_modules_import_one_way() {
    let mut modules: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut witnesses: BTreeMap<(String, String), String> = BTreeMap::new();
    for (file, targets) in file_graph() {
        let from = top_level(&file);
        let entry = modules.entry(from.clone()).or_default();
        for target in targets {
            let to = top_level(&target);
            if to != from && !matches!(from.as_str(), "lib" | "main") {
                entry.insert(to.clone());
                witnesses.entry((from.clone(), to)).or_insert_with(|| format!("{file} -> {target}"));
            }
        }
    }
    let loops = loops(&modules);
    let shown: Vec<String> = loops
        .iter()
        .map(|way| {
            let steps: Vec<String> =
                way.windows(2).map(|pair| witnesses[&(pair[0].clone(), pair[1].clone())].clone()).collect();
            format!("  {}\n    ({})", way.join(" -> "), steps.join("; "))
        })
        .collect();
    assert!(loops.is_empty(), "top-level modules of src/ that import each other:\n{}", shown.join("\n"));
}

#[test]
fn the_layers_point_one_way() {
    let may_import_http = ["src/app.rs", "src/lib.rs", "src/main.rs"];
    let mut wrong = Vec::new();
    for (file, targets) in file_graph() {
        for target in targets {
            let refused = if file.starts_with("src/domain/") {
                !target.starts_with("src/domain/")
            } else if file == "src/config.rs" || file.starts_with("src/auth/") {
                // Configuration knows no actors: it says what is set, not who acts on it; nor
                // does auth: hashing and tokens are pure work that actors and http/ call.
                target.starts_with("src/actors/") || target.starts_with("src/db/") || target.starts_with("src/http/")
            } else if file.starts_with("src/db/") {
                target.starts_with("src/actors/") || target.starts_with("src/http/")
            } else {
                target.starts_with("src/http/")
                    && !file.starts_with("src/http/")
                    && !may_import_http.contains(&file.as_str())
            };
            if refused {
                wrong.push(format!("  {file} -> {target}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers (domain/ <- db/ <- actors/ <- http/ <- app):\n{}",
        wrong.join("\n")
    );
}

/// The reader itself: a loop written in a small crate is found and named.
#[test]
fn a_loop_is_found_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("actors")).unwrap();
    fs::write(src.join("lib.rs"), "pub mod actors;\npub mod domain;\n").unwrap();
    fs::write(src.join("domain.rs"), "//! use crate::actors::Cache; is only a comment\npub struct Key;\n").unwrap();
    fs::write(src.join("actors/mod.rs"), "pub mod cache;\npub mod executor;\npub use executor::Executor;\n").unwrap();
    fs::write(
        src.join("actors/cache.rs"),
        "use super::{Executor, super::domain::Key};\npub struct Cache;\n#[cfg(test)]\nmod tests { use super::*; }\n",
    )
    .unwrap();
    fs::write(
        src.join("actors/executor.rs"),
        "pub struct Executor;\nfn f() { let s = \"crate::x\"; crate::actors::cache::Cache; }\n",
    )
    .unwrap();
    let graph = Crate::read(&src).graph(&src);
    let cache = graph.keys().find(|k| k.ends_with("actors/cache.rs")).unwrap().clone();
    let executor = graph.keys().find(|k| k.ends_with("actors/executor.rs")).unwrap().clone();
    assert_eq!(
        graph[&cache],
        BTreeSet::from([executor.clone(), graph.keys().find(|k| k.ends_with("domain.rs")).unwrap().clone()])
    );
    assert_eq!(loops(&graph), vec![vec![cache.clone(), executor, cache]]);
}
