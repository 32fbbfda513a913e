//! The shape of `src/`: imports flow one way (STYLE.md, practice 13). A lower module never
//! imports a higher one, and nothing calls back into what built it.
//!
//! The test reads the sources as text, so it needs no build of its own and sees what `cargo`
//! sees: every `crate::…` and `super::…` path in code (comments and string literals left out),
//! resolved to the top-level module it names.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The crate root's node: `lib.rs`, which declares and assembles every module.
const ROOT: &str = "lib.rs";

/// No import circle between the top-level modules of `src/`, and no module naming the crate
/// root's own items.
///
/// Granularity: one node per top-level module of `src/` (`src/x.rs`, or `src/x/` with
/// everything under it, so `store`, `api` and `front` are one node each), and one node for the
/// crate root `lib.rs` itself. An edge `a -> b` is any `crate::b…` or `super::…` path in `a`'s
/// code that resolves to `b` (`use` or not, `#[cfg(test)]` modules included), grouped imports
/// (`crate::{b, c}`) counted per name. `lib.rs` is the top: it names every module, so a module
/// that names one of its items (`crate::build`, `crate::Server`) is a circle through it.
/// `main.rs` and `src/bin/` are crates of their own, reaching the library as `signpost::`, and
/// are left out. A failure prints the circle, with the line that makes each edge.
#[test]
fn the_modules_of_src_import_each_other_without_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = Graph::of(&src);
    assert!(
        graph.edges.len() > 5,
        "the scan found almost no references in {}: {:?}",
        src.display(),
        graph.edges
    );
    if let Some(circle) = graph.circle() {
        panic!("an import circle in src/:\n{}", graph.describe(&circle));
    }
    let callers: Vec<String> = graph
        .edges
        .iter()
        .filter(|((_, to), _)| to == ROOT)
        .map(|((from, to), place)| format!("{from} -> {to} ({place})"))
        .collect();
    assert!(
        callers.is_empty(),
        "modules call back into the crate root that assembles them:\n{}",
        callers.join("\n")
    );
}

/// The scanner resolves every form of path the sources use, and ignores what only looks like
/// one: `crate::` groups, `super::` at a module's top and inside an inline `mod`, comments,
/// strings, raw strings and character literals.
#[test]
fn the_scanner_resolves_paths_as_rustc_does() {
    let modules: BTreeSet<String> = ["alpha", "beta", "gamma", "delta", "store"]
        .map(String::from)
        .into();
    let source = r####"
        //! Docs naming crate::delta are not code.
        use crate::{alpha::One, beta::{Two, Three}};
        use super::gamma::Four;
        fn f() -> &'static str { let _c = '{'; let _q = '\''; "crate::delta" }
        fn g() { let _ = r#"super::delta "# ; let _ = crate::build(); }
        /* crate::delta, /* nested */ crate::delta */
        #[cfg(test)]
        mod tests {
            use super::*;
            use super::super::store::Thing;
        }
    "####;
    let found = references(&modules, &["alpha".to_owned()], source);
    let names: BTreeSet<&str> = found.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["alpha", "beta", "gamma", "store", ROOT]),
        "{found:?}"
    );
    let in_submodule = references(&modules, &["store".into(), "redis".into()], "use super::X;");
    assert_eq!(in_submodule, [("store".to_owned(), 1)]);
}

/// Which top-level module names which, with the first place that does.
struct Graph {
    /// `(from, to)` to `path:line` of the first reference.
    edges: BTreeMap<(String, String), String>,
}

impl Graph {
    fn of(src: &Path) -> Graph {
        let mut modules = BTreeSet::new();
        for entry in std::fs::read_dir(src).expect("src/ lists") {
            let path = entry.expect("src/ entry").path();
            let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
                continue;
            };
            if path.is_dir() && name != "bin" {
                modules.insert(name.to_owned());
            } else if let Some(stem) = name.strip_suffix(".rs") {
                if stem != "lib" && stem != "main" {
                    modules.insert(stem.to_owned());
                }
            }
        }
        let mut edges = BTreeMap::new();
        for file in rust_files(src) {
            let relative = file.strip_prefix(src).expect("under src/");
            let Some(module_path) = module_path(relative) else {
                continue;
            };
            let from = module_path
                .first()
                .cloned()
                .unwrap_or_else(|| ROOT.to_owned());
            let text = std::fs::read_to_string(&file).expect("a source file reads");
            for (to, line) in references(&modules, &module_path, &text) {
                if to != from {
                    let place = format!("src/{}:{line}", relative.display());
                    edges.entry((from.clone(), to)).or_insert(place);
                }
            }
        }
        Graph { edges }
    }

    /// A circle, as the nodes along it, the first repeated at the end; `None` if there is none.
    fn circle(&self) -> Option<Vec<String>> {
        let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (from, to) in self.edges.keys() {
            next.entry(from).or_default().push(to);
        }
        // Depth first; a node met again while still on the path closes a circle.
        let mut done = BTreeSet::new();
        for start in next.keys() {
            let mut path: Vec<&str> = Vec::new();
            if let Some(circle) = visit(start, &next, &mut path, &mut done) {
                return Some(circle);
            }
        }
        None
    }

    /// The circle's edges, each with the line that makes it.
    fn describe(&self, circle: &[String]) -> String {
        let mut text = circle.join(" -> ");
        for pair in circle.windows(2) {
            let place = &self.edges[&(pair[0].clone(), pair[1].clone())];
            let _ = write!(text, "\n  {} -> {}: {place}", pair[0], pair[1]);
        }
        text
    }
}

fn visit<'a>(
    node: &'a str,
    next: &BTreeMap<&'a str, Vec<&'a str>>,
    path: &mut Vec<&'a str>,
    done: &mut BTreeSet<&'a str>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|on_path| *on_path == node) {
        let mut circle: Vec<String> = path[at..].iter().map(|n| n.to_string()).collect();
        circle.push(node.to_owned());
        return Some(circle);
    }
    if !done.insert(node) {
        return None;
    }
    path.push(node);
    for to in next.get(node).into_iter().flatten() {
        if let Some(circle) = visit(to, next, path, done) {
            return Some(circle);
        }
    }
    path.pop();
    None
}

/// Every `.rs` file under `dir`, `src/bin/` and `main.rs` left out.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("a directory lists") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The module a file under `src/` is, as a path from the crate root (`front/mod.rs` is
/// `["front"]`, `lib.rs` is `[]`); `None` for the files of other crates.
fn module_path(relative: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    if parts
        .first()
        .is_some_and(|first| first == "bin" || first == "main.rs")
    {
        return None;
    }
    let file = parts.pop()?;
    let stem = file.strip_suffix(".rs")?;
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    Some(parts)
}

/// The top-level modules that `text`, the source of module `here`, names, each with its line:
/// a name of `modules`, or [`ROOT`] for an item of the crate root.
fn references(modules: &BTreeSet<String>, here: &[String], text: &str) -> Vec<(String, usize)> {
    let tokens = tokens(text);
    let mut found = Vec::new();
    // Inline modules (`mod tests { … }`) and the brace depth each one closes at.
    let mut inline: Vec<(String, isize)> = Vec::new();
    let mut depth: isize = 0;
    let mut i = 0;
    while i < tokens.len() {
        let (token, line) = (&tokens[i].0, tokens[i].1);
        match token.as_str() {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if inline.last().is_some_and(|(_, at)| *at == depth) {
                    inline.pop();
                }
            }
            "mod" if tokens.get(i + 2).is_some_and(|(t, _)| t == "{") => {
                inline.push((tokens[i + 1].0.clone(), depth));
            }
            "crate" | "super" if tokens.get(i + 1).is_some_and(|(t, _)| t == "::") => {
                let mut module: Vec<String> = here.to_vec();
                module.extend(inline.iter().map(|(name, _)| name.clone()));
                let mut at = i;
                if token == "crate" {
                    module.clear();
                    at += 2;
                } else {
                    while tokens.get(at).is_some_and(|(t, _)| t == "super")
                        && tokens.get(at + 1).is_some_and(|(t, _)| t == "::")
                    {
                        module.pop();
                        at += 2;
                    }
                }
                let names = match module.first() {
                    Some(top) => vec![top.clone()],
                    None => first_names(&tokens, at),
                };
                for name in names {
                    let node = if modules.contains(&name) {
                        name
                    } else if name == "*" || name == "self" {
                        continue;
                    } else {
                        ROOT.to_owned()
                    };
                    found.push((node, line));
                }
                i = at;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// The first name of the path that starts at token `at`, or of each path in a `{…}` group.
fn first_names(tokens: &[(String, usize)], at: usize) -> Vec<String> {
    let Some((first, _)) = tokens.get(at) else {
        return Vec::new();
    };
    if first != "{" {
        return vec![first.clone()];
    }
    let mut names = Vec::new();
    let mut depth = 0;
    let mut expect_name = true;
    for (token, _) in &tokens[at..] {
        match token.as_str() {
            "{" => {
                depth += 1;
                expect_name = depth == 1;
            }
            "}" => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            "," if depth == 1 => expect_name = true,
            name if expect_name && depth == 1 => {
                names.push(name.to_owned());
                expect_name = false;
            }
            _ => {}
        }
    }
    names
}

/// The code's tokens as far as paths need them (identifiers, `::`, braces, punctuation), each
/// with its line; comments, string and character literals dropped.
fn tokens(text: &str) -> Vec<(String, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut nesting = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    nesting += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    nesting -= 1;
                    i += 2;
                    if nesting == 0 {
                        break;
                    }
                } else {
                    line += usize::from(chars[i] == '\n');
                    i += 1;
                }
            }
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                line += usize::from(at(i) == '\n');
                i += 1;
            }
            i += 1;
        } else if c == '\'' {
            if at(i + 1) == '\\' {
                // An escaped character literal: past the escaped character, up to the quote.
                i += 3;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                // A lifetime.
                i += 1;
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let hashes = chars[i..].iter().take_while(|c| **c == '#').count();
            if (word == "r" || word == "br") && at(i + hashes) == '"' {
                // A raw string: up to a quote followed by as many `#`.
                i += hashes + 1;
                while i < chars.len() {
                    let closes = chars[i] == '"'
                        && chars[i + 1..].iter().take_while(|c| **c == '#').count() >= hashes;
                    line += usize::from(chars[i] == '\n');
                    i += 1;
                    if closes {
                        i += hashes;
                        break;
                    }
                }
            } else if word != "b" || at(i) != '"' {
                tokens.push((word, line));
            }
        } else if c == ':' && at(i + 1) == ':' {
            tokens.push(("::".to_owned(), line));
            i += 2;
        } else if c.is_whitespace() {
            i += 1;
        } else {
            tokens.push((c.to_string(), line));
            i += 1;
        }
    }
    tokens
}
