#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod eigen;
mod error;
mod magr;
mod prox;
mod quadratic;
mod solver;
mod traits;

pub use eigen::{EigenEstimate, largest_eigenvalue};
pub use error::ProxError;
pub use magr::{
    FISTA_ITERATIONS, FISTA_OBJECTIVE_TOL, Grouping, MagrOptions, MagrProblem, MagrReport, Solved,
    Solver, column_max_abs, magr, magr_solved_by,
};
pub use prox::{BoxConstraint, L1Norm, LinfNorm};
pub use quadratic::{LAMBDA_MAX_TOLERANCE, Quadratic};
pub use solver::{
    Fista, MomentumSchedule, OBJECTIVE_CHECK_EVERY, ObjectiveTest, ProximalGradient, SolveReport,
    StoppingRule,
};
pub use traits::{Prox, Smooth};
