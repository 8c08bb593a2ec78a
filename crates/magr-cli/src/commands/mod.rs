//! One module per subcommand: its arguments and its `run`.

pub mod eval;
pub mod inspect;
pub mod quantize;
