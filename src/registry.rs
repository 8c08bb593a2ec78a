//! The lookup shared by the registries ([`crate::METHODS`], [`crate::PREPROCESSORS`],
//! [`crate::FORMATS`]): an entry by its name, or an error listing the known names.

use crate::error::PipelineError;

/// An entry of a registry.
pub(crate) trait Entry {
    /// Its name (`--flag NAME`).
    fn name(&self) -> &'static str;
}

/// The entry of `entries` named `name`; `kind` names the registry in the error.
pub(crate) fn find<'a, E: Entry>(
    entries: &'a [E],
    kind: &str,
    name: &str,
) -> Result<&'a E, PipelineError> {
    entries.iter().find(|e| e.name() == name).ok_or_else(|| {
        PipelineError::Settings(format!(
            "unknown {kind} `{name}` (known: {})",
            entries
                .iter()
                .map(Entry::name)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}
