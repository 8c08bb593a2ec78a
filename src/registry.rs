//! The lookup shared by the registries ([`crate::METHODS`], [`crate::PREPROCESSORS`],
//! [`crate::FORMATS`]): an entry by its name, or an error listing the known names.

use crate::error::PipelineError;

/// An entry of a registry.
pub(crate) trait Entry {
    /// Its name (`--flag NAME`).
    fn name(&self) -> &'static str;

    /// The options it reads, as the CLI spells them (`--sweeps`).
    fn options(&self) -> &'static [&'static str] {
        &[]
    }
}

/// Refuses an option that was `given` but that `entry` (of `entries`, a registry of
/// `kind`) does not read: silently ignored, it would mislead the user.
pub(crate) fn check_options<E: Entry>(
    entries: &[E],
    kind: &str,
    entry: &E,
    given: &[&str],
) -> Result<(), PipelineError> {
    match given.iter().find(|o| !entry.options().contains(o)) {
        None => Ok(()),
        Some(option) => {
            let readers: Vec<&str> = entries
                .iter()
                .filter(|e| e.options().contains(option))
                .map(Entry::name)
                .collect();
            Err(PipelineError::Settings(format!(
                "{option} does not apply to {kind} `{}` (only to {kind} {})",
                entry.name(),
                readers.join(", ")
            )))
        }
    }
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
