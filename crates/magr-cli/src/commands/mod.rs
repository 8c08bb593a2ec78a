//! One module per subcommand: its arguments and its `run`.

pub mod eval;
pub mod gen_model;
pub mod inspect;
pub mod quantize;
pub mod rotate;
