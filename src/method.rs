//! Quantization methods: what rounds a layer onto its grids after the preprocessor.
//!
//! A [`Method`] describes one quantizer (its name, label and parameters) and builds it
//! for a run; [`METHODS`] is the one list of methods of the workspace, which the CLI's
//! `--method`, the reports and the bench all read. Adding a method: implement [`Method`]
//! and add one [`MethodEntry`] to [`METHODS`].

use std::fmt;

use faer::Par;
use quantizers::{CoordinateDescent, GridSpec, Optq, Quantizer, Rtn, SweepOrder};
use serde_json::{Value, json};

use crate::backend::ComputeBackend;
use crate::error::PipelineError;
use crate::registry;

/// What a method needs to build its quantizer for one run.
#[derive(Debug, Clone, Copy)]
pub struct QuantizerContext<'a> {
    /// The grid family.
    pub spec: GridSpec,
    /// OPTQ's act-order (inputs by decreasing `H_ii`).
    pub act_order: bool,
    /// Parallelism of the linear algebra.
    pub par: Par,
    /// Where the heavy work runs.
    pub backend: &'a dyn ComputeBackend,
}

/// A quantization method: `Display` is its short label (`OPTQ`), used alike by the CLI's
/// progress and result lines, the reports and the bench.
pub trait Method: fmt::Display + fmt::Debug + Send + Sync {
    /// The registered name (`--method NAME`).
    fn name(&self) -> &'static str;

    /// Its parameters as a JSON object (recorded in `report.json` and the run's
    /// fingerprint; empty when it has none).
    fn parameters(&self) -> Value {
        json!({})
    }

    /// The relative damping of `H` its quantizer applies (GPTQ's `damp_percent`), if it
    /// uses `H` at all.
    fn damping(&self) -> Option<f64>;

    /// The quantizer of a run.
    fn quantizer<'a>(&self, context: &QuantizerContext<'a>) -> Box<dyn Quantizer + 'a>;
}

/// The options of the registered methods, as the CLI collects them: `None` when not
/// given (the method's default). Giving one that the chosen method does not read is an
/// error ([`method`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MethodOptions {
    /// Coordinate-descent sweeps after OPTQ (default 1).
    pub sweeps: Option<usize>,
    /// Damping `lambda` of the sweeps (default: the reference `0.75 mean(diag H)`).
    pub cd_lambda: Option<f64>,
}

impl MethodOptions {
    /// The options given, as the CLI spells them.
    fn given(&self) -> Vec<&'static str> {
        [
            ("--sweeps", self.sweeps.is_some()),
            ("--cd-lambda", self.cd_lambda.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect()
    }
}

/// A registered method: its name, a line of help, and how to build it from options.
#[derive(Debug, Clone, Copy)]
pub struct MethodEntry {
    /// The name (`--method NAME`).
    pub name: &'static str,
    /// One line of help.
    pub about: &'static str,
    /// The options of [`MethodOptions`] it reads, as the CLI spells them.
    pub options: &'static [&'static str],
    /// The method with these options.
    pub build: fn(&MethodOptions) -> Box<dyn Method>,
}

/// Every method, in the order the CLI lists them.
pub static METHODS: &[MethodEntry] = &[
    MethodEntry {
        name: "rtn",
        about: "round to nearest",
        options: &[],
        build: |_| Box::new(RtnMethod),
    },
    MethodEntry {
        name: "optq",
        about: "OPTQ (GPTQ), blocks of 128, 1% damping",
        options: &[],
        build: |_| Box::new(OptqMethod),
    },
    MethodEntry {
        name: "optq-cd",
        about: "OPTQ then coordinate-descent sweeps (the paper's OPTQ-dagger)",
        options: &["--sweeps", "--cd-lambda"],
        build: |o| {
            Box::new(OptqCdMethod {
                sweeps: o.sweeps.unwrap_or(1),
                lambda: o.cd_lambda,
            })
        },
    },
];

/// The registered method `name` with `options`.
///
/// # Errors
/// An unknown name, listing the known ones; an option given that the method does not
/// read.
pub fn method(name: &str, options: &MethodOptions) -> Result<Box<dyn Method>, PipelineError> {
    let entry = registry::find(METHODS, "method", name)?;
    registry::check_options(METHODS, "method", entry, &options.given())?;
    Ok((entry.build)(options))
}

impl registry::Entry for MethodEntry {
    fn name(&self) -> &'static str {
        self.name
    }

    fn options(&self) -> &'static [&'static str] {
        self.options
    }
}

/// OPTQ with the reference settings for a run.
fn optq(context: &QuantizerContext<'_>) -> Optq {
    Optq {
        act_order: context.act_order,
        par: context.par,
        ..Optq::new(context.spec)
    }
}

/// Round to nearest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtnMethod;

impl fmt::Display for RtnMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RTN")
    }
}

impl Method for RtnMethod {
    fn name(&self) -> &'static str {
        "rtn"
    }

    fn damping(&self) -> Option<f64> {
        None
    }

    fn quantizer<'a>(&self, context: &QuantizerContext<'a>) -> Box<dyn Quantizer + 'a> {
        Box::new(Rtn {
            spec: context.spec,
            par: context.par,
        })
    }
}

/// OPTQ (GPTQ) with blocks of 128 and 1% damping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptqMethod;

impl fmt::Display for OptqMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OPTQ")
    }
}

impl Method for OptqMethod {
    fn name(&self) -> &'static str {
        "optq"
    }

    fn damping(&self) -> Option<f64> {
        Some(Optq::REFERENCE_DAMPING)
    }

    fn quantizer<'a>(&self, context: &QuantizerContext<'a>) -> Box<dyn Quantizer + 'a> {
        context.backend.optq(optq(context))
    }
}

/// OPTQ then `sweeps` coordinate-descent sweeps (the paper's OPTQ-dagger) on
/// `tr((W0 - Q)^T (H + lambda I) (W0 - Q))`, inputs in natural order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptqCdMethod {
    /// Number of sweeps.
    pub sweeps: usize,
    /// The damping `lambda` (`None`: the reference `0.75 mean(diag H)`).
    pub lambda: Option<f64>,
}

impl fmt::Display for OptqCdMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OPTQ+CD")
    }
}

impl Method for OptqCdMethod {
    fn name(&self) -> &'static str {
        "optq-cd"
    }

    fn parameters(&self) -> Value {
        json!({ "sweeps": self.sweeps, "lambda": self.lambda })
    }

    fn damping(&self) -> Option<f64> {
        OptqMethod.damping()
    }

    fn quantizer<'a>(&self, context: &QuantizerContext<'a>) -> Box<dyn Quantizer + 'a> {
        context.backend.coordinate_descent(CoordinateDescent {
            optq: optq(context),
            sweeps: self.sweeps,
            lambda: self.lambda,
            order: SweepOrder::Natural,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_method_is_found_by_its_own_name() {
        let options = MethodOptions::default();
        for entry in METHODS {
            let m = method(entry.name, &options).unwrap();
            assert_eq!(m.name(), entry.name);
            assert!(m.parameters().is_object());
        }
        let e = method("sgd", &options).unwrap_err().to_string();
        assert!(e.contains("sgd") && e.contains("optq-cd"), "{e}");
    }

    #[test]
    fn an_option_the_method_does_not_read_is_refused() {
        let sweeps = MethodOptions {
            sweeps: Some(5),
            ..MethodOptions::default()
        };
        for name in ["rtn", "optq"] {
            let e = method(name, &sweeps).unwrap_err().to_string();
            assert!(
                e.contains("--sweeps") && e.contains(&format!("`{name}`")) && e.contains("optq-cd"),
                "{e}"
            );
        }
        let lambda = MethodOptions {
            cd_lambda: Some(0.5),
            ..MethodOptions::default()
        };
        assert!(
            method("rtn", &lambda)
                .unwrap_err()
                .to_string()
                .contains("--cd-lambda")
        );
        let cd = method(
            "optq-cd",
            &MethodOptions {
                sweeps: Some(5),
                cd_lambda: Some(0.5),
            },
        )
        .unwrap();
        assert_eq!(cd.parameters(), json!({"sweeps": 5, "lambda": 0.5}));
    }

    #[test]
    fn only_the_hessian_methods_damp() {
        assert_eq!(RtnMethod.damping(), None);
        assert_eq!(OptqMethod.damping(), Some(0.01));
        let cd = OptqCdMethod {
            sweeps: 30,
            lambda: None,
        };
        assert_eq!(cd.damping(), Some(0.01));
        assert_eq!(cd.parameters(), json!({"sweeps": 30, "lambda": null}));
        assert_eq!(cd.to_string(), "OPTQ+CD");
    }
}
