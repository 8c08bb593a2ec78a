//! `docs/results.md` is written by several commands, each owning one section: the head
//! (up to the first marker) is `bench`'s; every other section starts with a marker line
//! `<!-- cargo xtask NAME -->` and runs to the next marker or the end. A command
//! rewrites its own section and keeps the others as they are (hand-pasted ones
//! included, such as `check-loaders`' table).

use std::path::Path;

/// What every section marker starts with.
const MARKER_PREFIX: &str = "<!-- cargo xtask ";

/// `text` with the section that starts at `marker` replaced by `section` (which starts
/// with `marker` itself), or with `section` appended when there is none; `marker: None`
/// is the head, everything before the first marker.
pub fn replace_section(text: &str, marker: Option<&str>, section: &str) -> String {
    let section = section.trim_end();
    let Some(marker) = marker else {
        let rest = text.find(MARKER_PREFIX).map_or("", |i| &text[i..]);
        return join(&[section, rest]);
    };
    match text.find(marker) {
        None => join(&[text, section]),
        Some(start) => {
            let after = start + marker.len();
            let end = text[after..]
                .find(MARKER_PREFIX)
                .map_or(text.len(), |i| after + i);
            join(&[&text[..start], section, &text[end..]])
        }
    }
}

/// The non-empty parts, each trimmed at its end, a blank line apart, with a final newline.
fn join(parts: &[&str]) -> String {
    let parts: Vec<&str> = parts
        .iter()
        .map(|p| p.trim_end())
        .filter(|p| !p.is_empty())
        .collect();
    format!("{}\n", parts.join("\n\n"))
}

/// Rewrites the section `marker` of the results file (`None`: the head) as [`replace_section`].
pub fn write_section(results: &Path, marker: Option<&str>, section: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(results).unwrap_or_default();
    atomic_fs::write(results, replace_section(&text, marker, section))
        .map_err(|e| format!("{}: {e}", results.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "<!-- cargo xtask a -->";
    const B: &str = "<!-- cargo xtask b -->";

    #[test]
    fn each_section_is_replaced_alone() {
        let text = format!("head\n\n{A}\nold a\n\n{B}\nold b\n");
        assert_eq!(
            replace_section(&text, None, "new head\n"),
            format!("new head\n\n{A}\nold a\n\n{B}\nold b\n")
        );
        assert_eq!(
            replace_section(&text, Some(A), &format!("{A}\nnew a")),
            format!("head\n\n{A}\nnew a\n\n{B}\nold b\n")
        );
        assert_eq!(
            replace_section(&text, Some(B), &format!("{B}\nnew b")),
            format!("head\n\n{A}\nold a\n\n{B}\nnew b\n")
        );
        // A section not there yet goes at the end; an empty file gets the section alone.
        let c = "<!-- cargo xtask c -->\nc";
        assert_eq!(
            replace_section(&text, Some("<!-- cargo xtask c -->"), c),
            format!("{}\n\n{c}\n", text.trim_end())
        );
        assert_eq!(replace_section("", None, "head"), "head\n");
    }
}
