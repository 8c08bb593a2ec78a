//! Preprocessors: what changes a layer's weights before they are quantized, keeping the
//! layer's output on the calibration data (MagR shrinks the largest magnitudes).
//!
//! A [`Preprocessor`] maps `(W0, H)` to the weights handed to the quantizer and records
//! what it did in a [`PreprocessRecord`]; the reports and the magnitude plot read that
//! record whatever the preprocessor. [`PREPROCESSORS`] is the one list: adding one means
//! implementing [`Preprocessor`] and adding one [`PreprocessorEntry`].

use std::fmt;

use faer::{Mat, MatRef, Par};
use magr_report::PreprocessRecord;
use prox_opt::{FISTA_ITERATIONS, MagrOptions, Solver};
use quantizers::GridSpec;
use serde_json::{Value, json};

use crate::backend::{ComputeBackend, Windows};
use crate::error::PipelineError;
use crate::registry;

/// What a preprocessor needs besides the layer.
#[derive(Debug, Clone, Copy)]
pub struct PreprocessContext<'a> {
    /// The grid family the result will be quantized on (MagR works per group with groups).
    pub spec: GridSpec,
    /// Parallelism of the linear algebra.
    pub par: Par,
    /// Where the heavy work runs.
    pub backend: &'a dyn ComputeBackend,
}

/// A preprocessor's output for one layer: the weights to quantize (`None`: `W0` itself)
/// and its record (`None` when it did nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessed {
    /// The weights handed to the quantizer, when they differ from `W0`.
    pub weights: Option<Mat<f32>>,
    /// What happened.
    pub record: Option<PreprocessRecord>,
}

/// A preprocessing step in front of the quantizer. `Display` is its short label (`MagR`).
pub trait Preprocessor: fmt::Display + fmt::Debug + Send + Sync {
    /// The registered name (`--preprocessor NAME`).
    fn name(&self) -> &'static str;

    /// Its parameters as a JSON object (recorded in `report.json` and the fingerprint).
    fn parameters(&self) -> Value {
        json!({})
    }

    /// Whether it leaves every layer as it is (no stage, no label, no plot).
    fn is_identity(&self) -> bool {
        false
    }

    /// Which calibration windows form the `H` that [`Preprocessor::apply`] receives.
    fn windows(&self) -> Windows {
        Windows::All
    }

    /// Settings to choose among layer by layer, by the held-out layer loss after
    /// quantization (the pipeline fits each on the calibration windows not held out and
    /// scores `tr((W0 - Q)^T H_held (W0 - Q))` on the held-out ones, [`Windows::HeldOut`]);
    /// empty when there is nothing to choose, and then [`Preprocessor::apply`] runs as it is.
    fn choices(&self) -> Vec<Box<dyn Preprocessor>> {
        Vec::new()
    }

    /// The weights to quantize for a layer with weights `w0` (in x out) and `H` (in x in).
    ///
    /// # Errors
    /// Whatever the preprocessor refuses in its problem.
    fn apply(
        &self,
        w0: MatRef<'_, f32>,
        h: MatRef<'_, f32>,
        context: &PreprocessContext<'_>,
    ) -> Result<Preprocessed, PipelineError>;
}

/// The options of the registered preprocessors, as the CLI collects them: `None` (or
/// `false`) when not given. Giving one that the chosen preprocessor does not read is an
/// error ([`preprocessor`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PreprocessOptions {
    /// MagR's `alpha` (default: 1e-3 per channel, 1e-4 with groups).
    pub alpha: Option<Alpha>,
    /// MagR's iterations at most (default: 200 plain, [`FISTA_ITERATIONS`] with FISTA).
    pub iterations: Option<usize>,
    /// MagR's solver (default: FISTA; plain is the reference's).
    pub solver: Option<Solver>,
    /// Which windows form MagR's `H` (default: all).
    pub windows: Option<MagrHessian>,
}

impl PreprocessOptions {
    /// The options given, as the CLI spells them.
    fn given(&self) -> Vec<&'static str> {
        [
            ("--alpha", self.alpha.is_some()),
            ("--magr-iters", self.iterations.is_some()),
            ("--magr-solver", self.solver.is_some()),
            ("--magr-hessian", self.windows.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect()
    }
}

/// A registered preprocessor: name, a line of help, and how to build it for a grid.
#[derive(Debug, Clone, Copy)]
pub struct PreprocessorEntry {
    /// The name (`--preprocessor NAME`).
    pub name: &'static str,
    /// One line of help.
    pub about: &'static str,
    /// The options of [`PreprocessOptions`] it reads, as the CLI spells them.
    pub options: &'static [&'static str],
    /// The preprocessor with these options, for grids `spec`.
    pub build: fn(&PreprocessOptions, &GridSpec) -> Box<dyn Preprocessor>,
}

/// Every preprocessor, in the order the CLI lists them.
pub static PREPROCESSORS: &[PreprocessorEntry] = &[
    PreprocessorEntry {
        name: "magr",
        about: "MagR: l-infinity-penalised proximal gradient (weight magnitude reduction)",
        options: &["--alpha", "--magr-iters", "--magr-solver", "--magr-hessian"],
        build: |o, spec| {
            let defaults = match o.solver.unwrap_or(Solver::Fista) {
                Solver::Fista => MagrSettings::fista(spec),
                Solver::Plain => MagrSettings::reference(spec),
            };
            let (alpha, alpha_per_layer) = match o.alpha {
                None => (defaults.alpha, false),
                Some(Alpha::Value(a)) => (a, false),
                Some(Alpha::PerLayer) => (defaults.alpha, true),
            };
            let (windows, windows_per_layer) = match o.windows {
                None => (defaults.windows, false),
                Some(MagrHessian::Windows(w)) => (w, false),
                Some(MagrHessian::PerLayer) => (defaults.windows, true),
            };
            Box::new(MagrSettings {
                alpha,
                alpha_per_layer,
                iterations: o.iterations.unwrap_or(defaults.iterations),
                windows,
                windows_per_layer,
                ..defaults
            })
        },
    },
    PreprocessorEntry {
        name: "none",
        about: "none: quantize the weights as they are",
        options: &[],
        build: |_, _| Box::new(Identity),
    },
];

/// The registered preprocessor `name` with `options` for grids `spec`.
///
/// # Errors
/// An unknown name, listing the known ones; an option given that the preprocessor does
/// not read (`--alpha` with `none`).
pub fn preprocessor(
    name: &str,
    options: &PreprocessOptions,
    spec: &GridSpec,
) -> Result<Box<dyn Preprocessor>, PipelineError> {
    let entry = registry::find(PREPROCESSORS, "preprocessor", name)?;
    registry::check_options(PREPROCESSORS, "preprocessor", entry, &options.given())?;
    Ok((entry.build)(options, spec))
}

impl registry::Entry for PreprocessorEntry {
    fn name(&self) -> &'static str {
        self.name
    }

    fn options(&self) -> &'static [&'static str] {
        self.options
    }
}

/// No preprocessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity;

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("none")
    }
}

impl Preprocessor for Identity {
    fn name(&self) -> &'static str {
        "none"
    }

    fn is_identity(&self) -> bool {
        true
    }

    fn apply(
        &self,
        _w0: MatRef<'_, f32>,
        _h: MatRef<'_, f32>,
        _context: &PreprocessContext<'_>,
    ) -> Result<Preprocessed, PipelineError> {
        Ok(Preprocessed {
            weights: None,
            record: None,
        })
    }
}

/// MagR's `alpha` as the CLI takes it (`--alpha 1e-3`, `--alpha auto`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Alpha {
    /// This value.
    Value(f64),
    /// Chosen per layer from [`ALPHA_FACTORS`] times the reference value by the held-out
    /// layer loss ([`Preprocessor::choices`]).
    PerLayer,
}

/// Which windows form MagR's `H` as the CLI takes it (`--magr-hessian last`,
/// `--magr-hessian auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MagrHessian {
    /// These windows.
    Windows(Windows),
    /// Chosen per layer from [`HESSIAN_CHOICES`] by the held-out layer loss
    /// ([`Preprocessor::choices`]).
    PerLayer,
}

/// The `H`s that `--magr-hessian auto` tries on each layer: all windows, and the last one
/// (the reference code's).
pub const HESSIAN_CHOICES: [Windows; 2] = [Windows::All, Windows::Last];

/// The alphas that `--alpha auto` tries on each layer, as multiples of the reference
/// value (1e-3 per channel, 1e-4 per group); 0 leaves the layer as it is.
pub const ALPHA_FACTORS: [f64; 7] = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0];

/// MagR (per channel, or per group when the grid has groups):
/// `min_W 1/2 ||X (W - W0)||_F^2 + alpha lambda_max(H) sum ||w||_inf` by proximal
/// gradient ([`prox_opt::magr`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MagrSettings {
    /// Penalty `alpha` (reference: 1e-3 per channel, 1e-4 per group).
    pub alpha: f64,
    /// Choose alpha per layer among [`ALPHA_FACTORS`] times `alpha` by the held-out layer
    /// loss ([`Preprocessor::choices`]) instead of using `alpha` itself.
    pub alpha_per_layer: bool,
    /// Iterations at most (reference: 200).
    pub iterations: usize,
    /// Plain proximal gradient (the reference) or FISTA with the objective test.
    pub solver: Solver,
    /// Which windows form `H`.
    pub windows: Windows,
    /// Choose the windows per layer among [`HESSIAN_CHOICES`] by the held-out layer loss
    /// ([`Preprocessor::choices`]) instead of using `windows` itself.
    pub windows_per_layer: bool,
}

impl MagrSettings {
    /// The reference settings for a grid: alpha 1e-3 per channel or 1e-4 with groups,
    /// 200 plain iterations, `H` from all windows.
    pub fn reference(spec: &GridSpec) -> Self {
        Self {
            alpha: if spec.group_size().is_some() {
                1e-4
            } else {
                1e-3
            },
            alpha_per_layer: false,
            iterations: 200,
            solver: Solver::Plain,
            windows: Windows::All,
            windows_per_layer: false,
        }
    }

    /// The default: the reference problem solved by FISTA in at most
    /// [`FISTA_ITERATIONS`] with the objective test, at or below the objective of the
    /// reference's 200 plain iterations in a fifth of the products (`docs/results.md`).
    pub fn fista(spec: &GridSpec) -> Self {
        Self {
            iterations: FISTA_ITERATIONS,
            solver: Solver::Fista,
            ..Self::reference(spec)
        }
    }

    /// The options of [`prox_opt::magr`] for a grid of `spec`.
    fn options(&self, spec: &GridSpec, par: Par) -> MagrOptions {
        let reference = match spec.group_size() {
            None => MagrOptions::per_channel(),
            Some(g) => MagrOptions::per_group(g),
        };
        let options = match self.solver {
            Solver::Plain => reference,
            Solver::Fista => reference.fista(),
        };
        MagrOptions {
            alpha: self.alpha,
            iterations: self.iterations,
            par,
            ..options
        }
    }
}

impl fmt::Display for MagrSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MagR")
    }
}

impl Preprocessor for MagrSettings {
    fn name(&self) -> &'static str {
        "magr"
    }

    fn parameters(&self) -> Value {
        json!({
            "alpha": if self.alpha_per_layer {
                json!(format!("per layer: {ALPHA_FACTORS:?} x {}", self.alpha))
            } else {
                json!(self.alpha)
            },
            "iterations": self.iterations,
            "solver": match self.solver {
                Solver::Plain => "plain",
                Solver::Fista => "fista",
            },
            "hessian": match (self.windows_per_layer, self.windows) {
                (true, _) => "per layer: all windows or the last",
                (false, Windows::All) => "all windows",
                (false, Windows::Last) => "last window",
                (false, Windows::HeldOut) => "held-out windows",
                (false, Windows::LastNotHeldOut) => "last window not held out",
            },
        })
    }

    fn windows(&self) -> Windows {
        self.windows
    }

    /// The alphas (of `--alpha auto`, else the one) times the windows of `H` (of
    /// `--magr-hessian auto`, else the one); alpha 0 once, since it leaves `W0` whatever
    /// the `H`.
    fn choices(&self) -> Vec<Box<dyn Preprocessor>> {
        if !self.alpha_per_layer && !self.windows_per_layer {
            return Vec::new();
        }
        let alphas: Vec<f64> = match self.alpha_per_layer {
            true => ALPHA_FACTORS.iter().map(|f| f * self.alpha).collect(),
            false => vec![self.alpha],
        };
        let windows: &[Windows] = match self.windows_per_layer {
            true => &HESSIAN_CHOICES,
            false => std::slice::from_ref(&self.windows),
        };
        let mut choices: Vec<Box<dyn Preprocessor>> = Vec::new();
        for &alpha in &alphas {
            for (k, &windows) in windows.iter().enumerate() {
                if alpha == 0.0 && k > 0 {
                    continue;
                }
                choices.push(Box::new(MagrSettings {
                    alpha,
                    alpha_per_layer: false,
                    windows,
                    windows_per_layer: false,
                    ..*self
                }));
            }
        }
        choices
    }

    fn apply(
        &self,
        w0: MatRef<'_, f32>,
        h: MatRef<'_, f32>,
        context: &PreprocessContext<'_>,
    ) -> Result<Preprocessed, PipelineError> {
        if self.alpha_per_layer || self.windows_per_layer {
            return Err(PipelineError::Settings(
                "MagR with settings chosen per layer runs through its choices, not as it is".into(),
            ));
        }
        let options = self.options(&context.spec, context.par);
        let (w, r) = context.backend.magr(w0, h, &options)?;
        Ok(Preprocessed {
            weights: Some(w),
            record: Some(PreprocessRecord {
                objective_before: r.objective_before,
                objective_after: r.objective_after,
                output_error: r.output_error,
                iterations: r.iterations,
                seconds: r.seconds,
                warnings: r.warnings,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;

    #[test]
    fn every_registered_preprocessor_is_found_by_its_own_name() {
        let spec = GridSpec::reference(4, None).unwrap();
        for entry in PREPROCESSORS {
            let p = preprocessor(entry.name, &PreprocessOptions::default(), &spec).unwrap();
            assert_eq!(p.name(), entry.name);
        }
        let e = preprocessor("smooth", &PreprocessOptions::default(), &spec)
            .unwrap_err()
            .to_string();
        assert!(e.contains("smooth") && e.contains("magr"), "{e}");
    }

    #[test]
    fn magr_takes_the_reference_alpha_unless_given_and_reports_a_dead_layer() {
        let grouped = GridSpec::reference(3, Some(16)).unwrap();
        let p = preprocessor("magr", &PreprocessOptions::default(), &grouped).unwrap();
        assert_eq!(p.parameters()["alpha"], 1e-4);
        let options = PreprocessOptions {
            alpha: Some(Alpha::Value(0.5)),
            ..PreprocessOptions::default()
        };
        let p = preprocessor("magr", &options, &grouped).unwrap();
        assert_eq!(p.parameters()["alpha"], 0.5);

        // A layer whose H is zero: W0 comes back, and the warning reaches the record.
        let w0 = Mat::from_fn(16, 3, |i, j| (i as f32 - 7.5) * 0.1 + j as f32);
        let h = Mat::<f32>::zeros(16, 16);
        let context = PreprocessContext {
            spec: grouped,
            par: Par::Seq,
            backend: &Cpu,
        };
        let out = p.apply(w0.as_ref(), h.as_ref(), &context).unwrap();
        assert_eq!(out.weights.unwrap(), w0);
        assert!(!out.record.unwrap().warnings.is_empty());
    }

    #[test]
    fn magr_options_are_refused_without_magr() {
        let spec = GridSpec::reference(4, None).unwrap();
        let given = [
            PreprocessOptions {
                alpha: Some(Alpha::Value(1e-3)),
                ..PreprocessOptions::default()
            },
            PreprocessOptions {
                iterations: Some(10),
                ..PreprocessOptions::default()
            },
            PreprocessOptions {
                solver: Some(Solver::Plain),
                ..PreprocessOptions::default()
            },
            PreprocessOptions {
                windows: Some(MagrHessian::Windows(Windows::Last)),
                ..PreprocessOptions::default()
            },
        ];
        for (options, flag) in
            given
                .iter()
                .zip(["--alpha", "--magr-iters", "--magr-solver", "--magr-hessian"])
        {
            let e = preprocessor("none", options, &spec)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(flag) && e.contains("`none`") && e.contains("magr"),
                "{e}"
            );
            assert!(preprocessor("magr", options, &spec).is_ok());
        }
    }

    #[test]
    fn identity_changes_nothing() {
        let w0 = Mat::from_fn(4, 2, |i, j| (i + j) as f32);
        let h = Mat::<f32>::identity(4, 4);
        let context = PreprocessContext {
            spec: GridSpec::reference(4, None).unwrap(),
            par: Par::Seq,
            backend: &Cpu,
        };
        let out = Identity.apply(w0.as_ref(), h.as_ref(), &context).unwrap();
        assert_eq!(
            out,
            Preprocessed {
                weights: None,
                record: None
            }
        );
    }
}
