//! The module picture in docs/architecture.md, checked against the code:
//! every `crate::` path in `src/` (outside comments and test modules) must
//! point to the same layer or one below. A new module must be given its
//! layer here; an import that runs back up fails the test run.

use std::collections::BTreeMap;
use std::path::Path;

/// Bottom to top. A module may use its own layer and those before it.
const LAYERS: &[(&str, &[&str])] = &[
    ("core", &["error", "clock", "keyspace", "config", "backend", "metrics", "tasks", "telemetry"]),
    ("backends", &["store", "bus", "cache", "seq", "ratelimit", "auth"]),
    ("protocol", &["protocol", "validate"]),
    ("fanout", &["fanout"]),
    (
        "domain",
        &[
            "audit",
            "sessions",
            "users",
            "rooms",
            "messages",
            "receipts",
            "search",
            "contacts",
            "typing",
            "presence",
            "notifications",
            "health",
        ],
    ),
    ("jobs", &["jobs"]),
    ("edges", &["http", "ws"]),
    ("wiring", &["node", "main", "lib"]),
];

/// Handles the edges must not hold: they reach the store and the bus
/// through the domain services (data types such as `store::Cursor` are fine).
const NOT_AT_THE_EDGES: &[(&str, &str)] = &[("store", "Store"), ("bus", "Bus")];

/// Whether `tail` (a path after `crate::`) names `handle` in `module`.
fn names(tail: &str, module: &str, handle: &str) -> bool {
    tail.strip_prefix(module)
        .is_some_and(|rest| rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).any(|word| word == handle))
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, modules)| modules.contains(&module))
}

/// The code of a file without `//` comments and without its
/// `#[cfg(test)]` module (tests may reach anywhere).
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Each `crate::<module>` path a file uses, with what follows it.
fn uses(code: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::C}`: each of them.
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for path in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let name: String = path.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                found.push((name, path.to_string()));
            }
            continue;
        }
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        // The path, with a `{…}` group whole.
        let mut depth = 0;
        let tail: String = rest
            .chars()
            .take_while(|&c| {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                depth > 0 || c.is_alphanumeric() || c == '_' || c == ':' || c == '}'
            })
            .collect();
        found.push((name, tail));
    }
    found
}

#[test]
fn imports_only_run_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/");
        let module = rel.split('/').next().unwrap().trim_end_matches(".rs").to_string();
        let Some(own) = layer_of(&module) else {
            wrong.entry(rel).or_default().push(format!("module `{module}` has no layer in tests/layers.rs"));
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for (used, tail) in uses(&code(&text)) {
            if used == module {
                continue;
            }
            match layer_of(&used) {
                None => wrong.entry(rel.clone()).or_default().push(format!("uses `crate::{used}`, which has no layer")),
                Some(layer) if layer > own => wrong.entry(rel.clone()).or_default().push(format!(
                    "{} module `{module}` uses `crate::{tail}` of the {} layer above it",
                    LAYERS[own].0, LAYERS[layer].0
                )),
                _ => {}
            }
            if LAYERS[own].0 == "edges" && NOT_AT_THE_EDGES.iter().any(|(m, handle)| names(&tail, m, handle)) {
                wrong
                    .entry(rel.clone())
                    .or_default()
                    .push(format!("edge module uses `crate::{tail}`: go through a service"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers (docs/architecture.md):\n{wrong:#?}");
}

#[test]
fn the_check_sees_an_import_that_runs_up() {
    let file = "use crate::http::Api;\n// crate::node in a comment\nfn f() { crate::ws::Sockets::new(); }\nuse crate::{bus, node::X};\n";
    let found: Vec<String> = uses(&code(file)).into_iter().map(|(m, _)| m).collect();
    assert_eq!(found, ["http", "ws", "bus", "node"]);
    assert!(layer_of("store") < layer_of("messages"));
    assert!(layer_of("messages") < layer_of("http"));
    assert_eq!(layer_of("gateway"), None);
    assert!(names("store::{Cursor, Store};", "store", "Store"));
    assert!(!names("store::Cursor;", "store", "Store"));
}
