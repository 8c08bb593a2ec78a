//! `docs/ARCHITECTURE.md` stays true to the tree: every path its code map names exists.

use std::path::Path;

/// The backticked paths in the first column of the code map's table rows.
fn code_map_paths(text: &str) -> Vec<String> {
    let map = text
        .split("## Code map")
        .nth(1)
        .expect("a `## Code map` section")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    map.lines()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| {
            let first = l.split(" | ").next().unwrap_or_default();
            first
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_path_in_the_code_map_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let paths = code_map_paths(&text);
    assert!(paths.len() > 40, "only {} paths found", paths.len());
    let missing: Vec<&String> = paths.iter().filter(|p| !root.join(p).exists()).collect();
    assert!(
        missing.is_empty(),
        "named in the code map but absent: {missing:?}"
    );
}

#[test]
fn the_parser_finds_first_column_paths_only() {
    let text = "## Code map\n\n| path | what |\n|---|---|\n| `a/b.rs`, `c` | `not/this` |\n\n## Next\n| `nor/this` | x |\n";
    assert_eq!(code_map_paths(text), ["a/b.rs", "c"]);
}
