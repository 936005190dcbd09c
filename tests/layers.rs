//! The layering check: each top-level module of `src/` may use only the
//! modules of lower layers, so the imports point one way (reload ← domain
//! ← store ← core ← engines ← app ← edges ← config ← server) and no import
//! circle between modules can form. The client side (the worker
//! library, the CLI) uses only the generated protos and telemetry helpers.
//!
//! It reads the source, as text: every `crate::<module>` outside comments
//! and test modules counts as an import. A new module must be given a layer
//! here; an import that breaks the order fails with the file and the line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Layers, lowest first. A module may use modules of lower layers only:
/// never one of its own layer (so two edges never use each other), never a
/// higher one.
const LAYERS: &[&[&str]] = &[
    // Files read again when they change (the TLS certificate, the JWKS
    // file): below the modules that read them.
    &["reload"],
    // Leaves: the model, logs/traces/metrics hooks, bearer tokens, TLS, the
    // HTTP/2 limits.
    &["domain", "telemetry", "auth", "tls", "http2"],
    // Generated protos, their codec and Struct ⇄ JSON.
    &["pb"],
    &["store"],
    &["core"],
    // Engines: in-process executors, external backends, the schedules
    // runner (which makes tasks through the core as an edge would), and the
    // flow rules set at run time (which the core enforces).
    &["executor", "backend", "schedules", "flow", "keys"],
    // What both edges share: conversions and the error mapping.
    &["app"],
    // The edges.
    &["api", "admin"],
    // Replicas over PostgreSQL: who leads, what standbys do.
    &["cluster"],
    // The configuration aggregates every section.
    &["config"],
    // Wiring.
    &["server"],
];

/// The client side, and what it may use.
const CLIENTS: &[&str] = &["worker", "cli"];
const CLIENT_MAY_USE: &[&str] = &["pb", "telemetry"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let p = entry.expect("a directory entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)]`
/// module, line by line.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let body = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = Vec::new();
    let mut in_block = false;
    for (n, line) in body.lines().enumerate() {
        let mut l = line.to_string();
        if in_block {
            match l.find("*/") {
                Some(i) => {
                    l = l[i + 2..].to_string();
                    in_block = false;
                }
                None => continue,
            }
        }
        if let Some(i) = l.find("/*") {
            in_block = !l[i..].contains("*/");
            l.truncate(i);
        }
        if let Some(i) = l.find("//") {
            l.truncate(i);
        }
        out.push((n + 1, l));
    }
    out
}

/// Every `crate::x` (and `crate::{x, y}`) a line names.
fn imports(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push(name);
            }
        }
    }
    found
}

#[test]
fn modules_import_only_from_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in files {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .to_string();
        let module = rel
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        if matches!(module.as_str(), "lib" | "main" | "bin") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in code_lines(&text) {
            for used in imports(&line) {
                if used == module {
                    continue;
                }
                graph
                    .entry(module.clone())
                    .or_default()
                    .entry(used.clone())
                    .or_insert_with(|| format!("src/{rel}:{n}"));
                let allowed = if CLIENTS.contains(&module.as_str()) {
                    CLIENT_MAY_USE.contains(&used.as_str())
                } else {
                    match (layer_of(&module), layer_of(&used)) {
                        (Some(a), Some(b)) => b < a,
                        (None, _) => {
                            problems.push(format!(
                                "src/{rel}: module `{module}` has no layer in tests/layers.rs"
                            ));
                            true
                        }
                        (_, None) => CLIENTS.contains(&used.as_str()) && module == "server",
                    }
                };
                if !allowed {
                    problems.push(format!(
                        "src/{rel}:{n}: `{module}` uses `{used}`, which is not below it: {}",
                        line.trim()
                    ));
                }
            }
        }
    }
    problems.sort();
    problems.dedup();
    assert!(
        problems.is_empty(),
        "imports that break the layers (see LAYERS in tests/layers.rs):\n{}",
        problems.join("\n")
    );
    // With one-way layers no circle can form; say so if one does anyway
    // (a module missing from LAYERS).
    for (m, uses) in &graph {
        for (u, at) in uses {
            if let Some(back) = graph.get(u).and_then(|g| g.get(m)) {
                panic!("an import circle: {m} uses {u} ({at}) and {u} uses {m} ({back})");
            }
        }
    }
}

#[test]
fn the_check_reads_imports_as_written() {
    assert_eq!(imports("use crate::core::Core;"), vec!["core"]);
    assert_eq!(
        imports("use crate::{domain::Task, store};"),
        vec!["domain", "store"]
    );
    let lines = code_lines("// crate::api\nlet x = 1; // crate::admin\n/* crate::cli */ y");
    assert!(lines.iter().all(|(_, l)| imports(l).is_empty()));
}
