#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod plot;

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use plot::magnitude_svg;

/// What a preprocessor did to one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessRecord {
    /// Its objective at `W0`.
    pub objective_before: f64,
    /// Its objective at the result.
    pub objective_after: f64,
    /// `||X (W - W0)||_F^2`.
    pub output_error: f64,
    /// Iterations run.
    pub iterations: usize,
    /// Seconds.
    pub seconds: f64,
    /// Anything the user should know about this layer (a layer the calibration never
    /// activates, for instance).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// What happened to one linear layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Decoder block.
    pub block: usize,
    /// Hugging Face name suffix (`q_proj`, ...).
    pub layer: String,
    /// Inputs x outputs.
    pub shape: [usize; 2],
    /// The preprocessor's record (absent when it did nothing).
    pub preprocess: Option<PreprocessRecord>,
    /// Largest `|w|` of the original layer.
    pub max_abs_before: f32,
    /// Largest `|w|` of what was quantized (equal to `max_abs_before` without a
    /// preprocessor).
    pub max_abs_after: f32,
    /// Distribution of `|w|` before and after the preprocessor.
    pub magnitudes: MagnitudeHistogram,
    /// `tr((W0 - Q)^T H (W0 - Q))` of the quantized layer against the original weights.
    pub layer_loss: f64,
    /// Seconds of the quantizer.
    pub quantize_seconds: f64,
    /// The settings (the preprocessor's, and the grid's shrink factor) chosen for this
    /// layer by the held-out loss, when the run chooses them per layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice: Option<LayerChoice>,
}

/// A per-layer choice among settings (the preprocessor's, and the grid's shrink factor):
/// each fitted on the calibration windows not held out, scored on the held-out ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerChoice {
    /// Every setting tried with its held-out layer loss
    /// `tr((W0 - Q)^T H_held (W0 - Q))`, in the order tried.
    pub tried: Vec<ChoiceScore>,
    /// Index into `tried` of the chosen setting (the smallest held-out loss; the first
    /// on a tie).
    pub chosen: usize,
    /// Wall time of fitting and scoring every setting (counted in the preprocessor's
    /// stage time).
    pub seconds: f64,
}

/// One setting of a [`LayerChoice`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChoiceScore {
    /// The preprocessor's parameters, with `beta` when the shrink factor is chosen.
    pub parameters: Value,
    /// Its held-out layer loss.
    pub held_out_loss: f64,
}

/// Counts of `|w|` of one layer in [`MagnitudeHistogram::BINS`] equal bins on
/// `[0, upper]`, `upper` the largest `|w|` before the preprocessor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MagnitudeHistogram {
    /// Upper end of the last bin.
    pub upper: f32,
    /// Counts of the original weights.
    pub before: Vec<u64>,
    /// Counts of the weights handed to the quantizer.
    pub after: Vec<u64>,
}

impl MagnitudeHistogram {
    /// Number of bins.
    pub const BINS: usize = 48;

    /// The histograms of the weights `before` and `after` on `[0, upper]` (values above
    /// `upper` count in the last bin).
    pub fn new(
        before: impl IntoIterator<Item = f32>,
        after: impl IntoIterator<Item = f32>,
        upper: f32,
    ) -> Self {
        let scale = if upper > 0.0 {
            Self::BINS as f32 / upper
        } else {
            0.0
        };
        let counts = |w: &mut dyn Iterator<Item = f32>| {
            let mut counts = vec![0u64; Self::BINS];
            for x in w {
                let bin = ((x.abs() * scale) as usize).min(Self::BINS - 1);
                counts[bin] += 1;
            }
            counts
        };
        MagnitudeHistogram {
            upper,
            before: counts(&mut before.into_iter()),
            after: counts(&mut after.into_iter()),
        }
    }
}

/// Wall time of each stage, summed over blocks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageSeconds {
    /// Embedding the calibration windows.
    pub embed: f64,
    /// Float forward passes that accumulate `H`.
    pub capture: f64,
    /// The preprocessor (with the fitting and scoring of its settings when they are
    /// chosen per layer).
    pub preprocess: f64,
    /// The quantizer.
    pub quantize: f64,
    /// Forward passes of the quantized blocks.
    pub propagate: f64,
}

impl StageSeconds {
    /// The sum of the stages.
    pub fn total(&self) -> f64 {
        self.embed + self.capture + self.preprocess + self.quantize + self.propagate
    }
}

/// The pipeline's record of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PipelineReport {
    /// One record per linear layer, in block and forward order.
    pub layers: Vec<LayerRecord>,
    /// Time per stage.
    pub seconds: StageSeconds,
    /// Calibration windows and their length.
    pub calibration: [usize; 2],
    /// The blocks this run restored from its checkpoint (`--resume`): their records and
    /// seconds are those of the process that made them, the peak memory of the report
    /// is this process's. `None`: one process ran every block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_after: Option<usize>,
}

impl PipelineReport {
    /// The sum over every layer of its loss `tr((W0 - Q)^T H (W0 - Q))`.
    pub fn summed_layer_loss(&self) -> f64 {
        self.layers.iter().map(|l| l.layer_loss).sum()
    }

    /// For a run that chose the preprocessor's settings per layer: each chosen setting
    /// (the parameters that differ among those tried, as `name value`) with the number
    /// of layers that took it, in the order first tried; `None` for a run without choices.
    pub fn chosen_settings(&self) -> Option<Vec<(String, usize)>> {
        let mut counts: Vec<(String, usize)> = Vec::new();
        let mut any = false;
        for choice in self.layers.iter().filter_map(|l| l.choice.as_ref()) {
            any = true;
            let describe = |parameters: &Value| {
                let Some(fields) = parameters.as_object() else {
                    return parameters.to_string();
                };
                fields
                    .iter()
                    .filter(|(key, value)| {
                        choice
                            .tried
                            .iter()
                            .any(|t| t.parameters.get(*key) != Some(*value))
                    })
                    .map(|(key, value)| format!("{key} {value}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            for t in &choice.tried {
                let setting = describe(&t.parameters);
                if !counts.iter().any(|(s, _)| *s == setting) {
                    counts.push((setting, 0));
                }
            }
            let chosen = describe(&choice.tried[choice.chosen].parameters);
            if let Some(entry) = counts.iter_mut().find(|(s, _)| *s == chosen) {
                entry.1 += 1;
            }
        }
        any.then_some(counts)
    }
}

/// The perplexity of one model on a text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The evaluation text.
    pub text: PathBuf,
    /// Window length in tokens.
    pub seqlen: usize,
    /// Windows evaluated.
    pub windows: usize,
    /// The first scored position of each window (0 in the papers' protocol,
    /// `seqlen / 2` in llama.cpp's).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub first_scored: usize,
    /// Tokens whose loss was counted.
    pub tokens_scored: usize,
    /// Perplexity.
    pub ppl: f64,
    /// Seconds.
    pub seconds: f64,
    /// Throughput.
    pub tokens_per_second: f64,
    /// The model against a reference on the same windows (`magr eval --reference`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<ReferenceComparison>,
}

/// A model against a reference of the same shapes (its float original) on the
/// evaluation windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceComparison {
    /// The reference model.
    pub model: PathBuf,
    /// The reference's perplexity on the same positions.
    pub ppl: f64,
    /// Mean `KL(reference || model)` of the next-token distributions over the scored
    /// positions, in nats.
    pub mean_kl: f64,
    /// Share of scored positions where both rank the same token first.
    pub top1_agreement: f64,
    /// Per block, the mean over positions of `||h - h'|| / ||h'||` after it.
    pub block_error: Vec<f64>,
    /// Per linear layer, the mean over positions of `||x (W - W')^T||^2`, `x` the
    /// model's own input: the layer loss per token on the evaluation text.
    pub layers: Vec<LayerHeldOut>,
}

/// One layer's loss per token on the evaluation text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerHeldOut {
    /// Block index.
    pub block: usize,
    /// Hugging Face projection name (`q_proj` ...).
    pub layer: String,
    /// Mean over positions of `||x (W - W')^T||^2`.
    pub loss_per_token: f64,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A preprocessor or a method as a report names it: its registered name, its label
/// (`Display`) and its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentRecord {
    /// Registered name (`magr`, `optq-cd`).
    pub name: String,
    /// Label (`MagR`, `OPTQ+CD`).
    pub label: String,
    /// Parameters (a JSON object).
    pub parameters: Value,
}

impl ComponentRecord {
    /// `label (key value, ...)`, or the label alone without parameters.
    pub fn describe(&self) -> String {
        let parameters: Vec<String> = self
            .parameters
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k} {s}"),
                Value::Null => format!("{k} default"),
                v => format!("{k} {v}"),
            })
            .collect();
        if parameters.is_empty() {
            self.label.clone()
        } else {
            format!("{} ({})", self.label, parameters.join(", "))
        }
    }
}

/// The settings of a run, as `report.json` records them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingsRecord {
    /// Bits per weight.
    pub bits: u32,
    /// Inputs per group (`None`: per output channel).
    pub group_size: Option<usize>,
    /// Symmetric grids.
    pub symmetric: bool,
    /// Grid shrink factor.
    pub beta: f32,
    /// Shrink factors chosen among per layer by the held-out layer loss (each layer's
    /// choice in its [`LayerChoice`]); empty when every layer has `beta`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub beta_choices: Vec<f32>,
    /// The GGUF block format the grids are (`q4_0`, ...), if they are one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gguf_type: Option<String>,
    /// The quantizer.
    pub method: ComponentRecord,
    /// The preprocessor.
    pub preprocessor: ComponentRecord,
    /// OPTQ's act-order.
    pub act_order: bool,
    /// Inputs captured after the layers before them were quantized.
    pub true_sequential: bool,
    /// The dtype of the calibration hidden states between blocks (`f32`, `bf16`;
    /// `f32` in reports written before the option existed).
    #[serde(default = "f32_name")]
    pub hidden_dtype: String,
    /// Where the heavy work ran.
    pub backend: String,
    /// Calibration text.
    pub calibration_text: PathBuf,
    /// Calibration windows.
    pub nsamples: usize,
    /// Calibration window length.
    pub seqlen: usize,
    /// Seed of the calibration sampler.
    pub seed: u64,
}

impl SettingsRecord {
    /// `MagR+OPTQ`: the preprocessor's label (unless it is `none`) and the method's.
    pub fn method_label(&self) -> String {
        method_label(
            (self.preprocessor.name != "none").then_some(self.preprocessor.label.as_str()),
            &self.method.label,
        )
    }
}

fn f32_name() -> String {
    "f32".into()
}

/// Everything `report.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// The model quantized.
    pub model: PathBuf,
    /// The output formats written.
    pub formats: Vec<String>,
    /// The settings.
    pub settings: SettingsRecord,
    /// The float model's evaluation, when asked for.
    pub float: Option<Evaluation>,
    /// The quantized model's evaluation, unless evaluation was off.
    pub quantized: Option<Evaluation>,
    /// The pipeline's records.
    pub pipeline: PipelineReport,
    /// Seconds of the whole run.
    pub seconds_total: f64,
    /// Peak resident memory of the process when the report was made (after the
    /// evaluation, before the outputs are written), where the system tells it (Linux).
    #[serde(default)]
    pub peak_rss_bytes: Option<u64>,
}

impl RunReport {
    /// What the GPTQ loaders make of `gptq/`, where one of them cannot run it as written
    /// (empty without a `gptq` format): GPTQModel 7.7 picks a fused CPU kernel
    /// (`_weight_int4pack_mm_cpu`) for 4 bits, also under transformers, which fails at the
    /// first forward unless the groups are of 32, 64, 128 or 256 and divide every width
    /// (seen by `cargo xtask check-loaders`); vLLM 0.33's `AutoGPTQConfig` takes 4 or 8
    /// bits, symmetric, groups of -1, 32, 64 or 128 that divide every layer's width, and
    /// no act-order with groups (read in its source).
    pub fn gptq_loader_notes(&self) -> Vec<String> {
        let s = &self.settings;
        if !self.formats.iter().any(|f| f == "gptq") {
            return Vec::new();
        }
        let widths: std::collections::BTreeSet<usize> =
            self.pipeline.layers.iter().map(|l| l.shape[0]).collect();
        let ragged = |g: usize| widths.iter().find(|&&w| w % g != 0).copied();
        let mut notes = Vec::new();
        let fused_kernel_fails = match s.group_size {
            _ if s.bits != 4 => None,
            None => Some("one group per channel (`group_size: -1`)".to_string()),
            Some(g) if !matches!(g, 32 | 64 | 128 | 256) => Some(format!("groups of {g}")),
            Some(g) => ragged(g).map(|w| format!("groups of {g}, which do not divide {w}")),
        };
        if let Some(groups) = fused_kernel_fails {
            notes.push(format!(
                "`gptq/` has {groups}; GPTQModel and transformers load it, but the fused \
                 CPU kernel GPTQModel picks by itself for 4 bits refuses such groups at the \
                 first forward: load with `GPTQModel.load(dir, backend=\"torch\")`, or in \
                 transformers with `quantization_config=GPTQConfig(bits=4, \
                 backend=\"torch\")`"
            ));
        }
        let mut refusals = Vec::new();
        if !s.symmetric || !matches!(s.bits, 4 | 8) {
            refusals.push(format!(
                "{} bits, {} (it runs 4 or 8 bits, symmetric: `--symmetric`)",
                s.bits,
                if s.symmetric {
                    "symmetric"
                } else {
                    "asymmetric"
                }
            ));
        }
        if let Some(g) = s.group_size {
            if !matches!(g, 32 | 64 | 128) {
                refusals.push(format!("groups of {g} (it takes 32, 64 or 128)"));
            }
            if let Some(w) = ragged(g) {
                refusals.push(format!("groups of {g} do not divide the width {w}"));
            }
            if s.act_order {
                refusals.push("act-order with groups".into());
            }
        }
        if !refusals.is_empty() {
            notes.push(format!(
                "vLLM (0.33) refuses `gptq/`: {}; transformers and GPTQModel read it",
                refusals.join("; ")
            ));
        }
        notes
    }

    /// The label of the run (`MagR+OPTQ w3 g64`): what progress and result lines show.
    pub fn label(&self) -> String {
        let s = &self.settings;
        format!(
            "{}{}",
            s.method_label(),
            grid_label(s.bits, s.group_size, s.gguf_type.as_deref())
        )
    }

    /// `report.md`: the settings, the perplexities and times, and one row per layer.
    pub fn markdown(&self) -> String {
        let s = &self.settings;
        let pre = &s.preprocessor.label;
        let mut md = String::new();
        let _ = writeln!(md, "# magr quantize report\n");
        let _ = writeln!(md, "- model: `{}`", self.model.display());
        match &s.gguf_type {
            Some(t) => {
                let _ = writeln!(md, "- grid: GGUF `{t}` (llama.cpp's block parameters)");
            }
            None => {
                let _ = writeln!(
                    md,
                    "- grid: {} bits, {}, {}, beta {}",
                    s.bits,
                    s.group_size
                        .map_or("per channel".to_string(), |g| format!("groups of {g}")),
                    if s.symmetric {
                        "symmetric"
                    } else {
                        "asymmetric"
                    },
                    s.beta
                );
            }
        }
        for note in self.gptq_loader_notes() {
            let _ = writeln!(md, "- loaders: {note}");
        }
        let _ = writeln!(
            md,
            "- method: {}, act-order {}",
            s.method.describe(),
            s.act_order
        );
        let _ = writeln!(md, "- preprocessor: {}", s.preprocessor.describe());
        let _ = writeln!(
            md,
            "- calibration: {} windows of {} tokens from `{}`, seed {}; hidden states in {}",
            s.nsamples,
            s.seqlen,
            s.calibration_text.display(),
            s.seed,
            s.hidden_dtype
        );
        for (label, e) in [("float", &self.float), ("quantized", &self.quantized)] {
            if let Some(e) = e {
                let _ = writeln!(
                    md,
                    "- {label} perplexity: **{:.4}** ({} windows of {}, {} tokens scored, `{}`)",
                    e.ppl,
                    e.windows,
                    e.seqlen,
                    e.tokens_scored,
                    e.text.display()
                );
                if let Some(r) = &e.reference {
                    let _ = writeln!(
                        md,
                        "- against the float model on the same windows: KL divergence **{:.5}** nats per token, top-1 agreement {:.2}%, float perplexity {:.4}",
                        r.mean_kl,
                        100.0 * r.top1_agreement,
                        r.ppl
                    );
                }
            }
        }
        if s.preprocessor.name != "none" {
            let _ = writeln!(
                md,
                "- weight magnitudes: ![before and after {pre}](magnitudes.svg)"
            );
        }
        let t = &self.pipeline.seconds;
        let _ = writeln!(
            md,
            "- seconds: embed {:.1}, capture {:.1}, {pre} {:.1}, quantizer {:.1}, propagate {:.1}; total run {:.1}{}\n",
            t.embed,
            t.capture,
            t.preprocess,
            t.quantize,
            t.propagate,
            self.seconds_total,
            self.peak_rss_bytes.map_or(String::new(), |b| format!(
                "; peak memory {:.2} GiB",
                b as f64 / f64::from(1u32 << 30)
            ))
        );
        let warnings: Vec<String> = self
            .pipeline
            .layers
            .iter()
            .flat_map(|l| {
                let name = format!("block {} {}", l.block, l.layer);
                l.preprocess
                    .iter()
                    .flat_map(|p| &p.warnings)
                    .map(move |w| format!("- {name}: {w}"))
            })
            .collect();
        if !warnings.is_empty() {
            let _ = writeln!(md, "Warnings:\n\n{}\n", warnings.join("\n"));
        }
        if let Some(counts) = self.pipeline.chosen_settings() {
            let list: Vec<String> = (counts.iter())
                .filter(|(_, n)| *n > 0)
                .map(|(setting, n)| format!("{setting}: {n}"))
                .collect();
            let never = counts.len() - list.len();
            let _ = writeln!(
                md,
                "Settings chosen per layer by the held-out layer loss (layers): {}{}\n",
                list.join(", "),
                match never {
                    0 => String::new(),
                    n => format!(" ({n} more tried, never chosen)"),
                }
            );
        }
        let _ = writeln!(
            md,
            "| block | layer | in x out | max abs before | max abs after {pre} | {pre} objective before -> after | layer loss |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for l in &self.pipeline.layers {
            let objective = l.preprocess.as_ref().map_or("-".to_string(), |m| {
                format!("{:.4e} -> {:.4e}", m.objective_before, m.objective_after)
            });
            let _ = writeln!(
                md,
                "| {} | {} | {} x {} | {:.4} | {:.4} | {} | {:.4e} |",
                l.block,
                l.layer,
                l.shape[0],
                l.shape[1],
                l.max_abs_before,
                l.max_abs_after,
                objective,
                l.layer_loss
            );
        }
        md
    }
}

/// `MagR+OPTQ`: a preprocessor's label (if any) joined to a method's.
pub fn method_label(preprocessor: Option<&str>, method: &str) -> String {
    match preprocessor {
        Some(p) => format!("{p}+{method}"),
        None => method.to_string(),
    }
}

/// ` w3 g64`: bits, and the group size when there is one; ` q4_0` for a GGUF block
/// format.
pub fn grid_label(bits: u32, group_size: Option<usize>, gguf_type: Option<&str>) -> String {
    match gguf_type {
        Some(t) => format!(" {t}"),
        None => format!(
            " w{bits}{}",
            group_size.map_or(String::new(), |g| format!(" g{g}"))
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report() -> RunReport {
        let w0: Vec<f32> = (0..8).map(|k| (k % 4) as f32 - (k / 4) as f32).collect();
        let w: Vec<f32> = w0.iter().map(|x| x * 0.5).collect();
        RunReport {
            model: "m.gguf".into(),
            formats: vec!["fake-quant".into()],
            settings: SettingsRecord {
                bits: 3,
                group_size: Some(64),
                symmetric: false,
                beta: 0.95,
                beta_choices: vec![],
                gguf_type: None,
                method: ComponentRecord {
                    name: "optq-cd".into(),
                    label: "OPTQ+CD".into(),
                    parameters: json!({"sweeps": 30, "lambda": null}),
                },
                preprocessor: ComponentRecord {
                    name: "magr".into(),
                    label: "MagR".into(),
                    parameters: json!({"alpha": 1e-4}),
                },
                act_order: false,
                true_sequential: false,
                hidden_dtype: "f32".into(),
                backend: "cpu".into(),
                calibration_text: "c.txt".into(),
                nsamples: 4,
                seqlen: 32,
                seed: 0,
            },
            float: None,
            quantized: None,
            pipeline: PipelineReport {
                layers: vec![LayerRecord {
                    block: 0,
                    layer: "q_proj".into(),
                    shape: [4, 2],
                    preprocess: Some(PreprocessRecord {
                        objective_before: 1.0,
                        objective_after: 0.5,
                        output_error: 0.25,
                        iterations: 10,
                        seconds: 0.1,
                        warnings: vec!["H is zero".into()],
                    }),
                    max_abs_before: 3.0,
                    max_abs_after: 1.5,
                    magnitudes: MagnitudeHistogram::new(w0, w, 3.0),
                    layer_loss: 2.0,
                    quantize_seconds: 0.2,
                    choice: None,
                }],
                ..PipelineReport::default()
            },
            seconds_total: 1.0,
            peak_rss_bytes: Some(3 << 30),
        }
    }

    #[test]
    fn the_report_round_trips_through_json() {
        let r = report();
        let text = serde_json::to_string_pretty(&r).unwrap();
        assert_eq!(serde_json::from_str::<RunReport>(&text).unwrap(), r);
        // A renamed or missing field is an error, not a NaN.
        let mut v: Value = serde_json::from_str(&text).unwrap();
        v["pipeline"]["layers"][0]
            .as_object_mut()
            .unwrap()
            .remove("layer_loss");
        assert!(serde_json::from_value::<RunReport>(v).is_err());
    }

    #[test]
    fn settings_chosen_per_layer_are_counted_by_what_differs() {
        let mut r = report();
        assert_eq!(r.pipeline.chosen_settings(), None);
        assert!(!r.markdown().contains("chosen per layer"));
        let tried = |alphas: &[f64], losses: &[f64]| -> Vec<ChoiceScore> {
            alphas
                .iter()
                .zip(losses)
                .map(|(&a, &l)| ChoiceScore {
                    parameters: json!({"alpha": a, "iterations": 40}),
                    held_out_loss: l,
                })
                .collect()
        };
        let first = r.pipeline.layers[0].clone();
        r.pipeline.layers = vec![first.clone(), first.clone(), first];
        for (layer, chosen) in r.pipeline.layers.iter_mut().zip([1, 1, 0]) {
            layer.choice = Some(LayerChoice {
                tried: tried(&[0.0, 0.001, 0.002], &[3.0, 1.0, 2.0]),
                chosen,
                seconds: 0.5,
            });
        }
        assert_eq!(
            r.pipeline.chosen_settings().unwrap(),
            vec![
                ("alpha 0.0".to_string(), 1),
                ("alpha 0.001".to_string(), 2),
                ("alpha 0.002".to_string(), 0)
            ]
        );
        let md = r.markdown();
        assert!(
            md.contains("Settings chosen per layer by the held-out layer loss (layers): alpha 0.0: 1, alpha 0.001: 2 (1 more tried, never chosen)"),
            "{md}"
        );
        let back: RunReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn markdown_names_components_by_label_and_shows_warnings() {
        let md = report().markdown();
        assert!(md.contains("- method: OPTQ+CD (lambda default, sweeps 30), act-order false"));
        assert!(md.contains("- preprocessor: MagR (alpha 0.0001)"));
        assert!(md.contains("- block 0 q_proj: H is zero"));
        assert!(md.contains(
            "| 0 | q_proj | 4 x 2 | 3.0000 | 1.5000 | 1.0000e0 -> 5.0000e-1 | 2.0000e0 |"
        ));
        assert!(!md.contains("OptqCd"));
        assert!(md.contains("- grid: 3 bits, groups of 64, asymmetric, beta 0.95"));
        assert!(md.contains("; peak memory 3.00 GiB"), "{md}");
        assert!(!md.contains("loaders"));
        assert_eq!(report().label(), "MagR+OPTQ+CD w3 g64");
    }

    /// An evaluation against the float model shows its divergence, and round-trips.
    #[test]
    fn the_comparison_with_the_float_model_is_shown_and_round_trips() {
        let mut r = report();
        r.quantized = Some(Evaluation {
            text: "wiki.test.raw".into(),
            seqlen: 32,
            windows: 4,
            first_scored: 0,
            tokens_scored: 124,
            ppl: 30.5,
            seconds: 1.0,
            tokens_per_second: 128.0,
            reference: Some(ReferenceComparison {
                model: "m.gguf".into(),
                ppl: 20.25,
                mean_kl: 0.123456,
                top1_agreement: 0.75,
                block_error: vec![0.1, 0.2],
                layers: vec![LayerHeldOut {
                    block: 0,
                    layer: "q_proj".into(),
                    loss_per_token: 1.5,
                }],
            }),
        });
        let md = r.markdown();
        assert!(md.contains("- quantized perplexity: **30.5000**"), "{md}");
        assert!(
            md.contains("KL divergence **0.12346** nats per token, top-1 agreement 75.00%, float perplexity 20.2500"),
            "{md}"
        );
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<RunReport>(&text).unwrap(), r);
        // Without a reference the field is absent, and an older report reads.
        r.quantized.as_mut().unwrap().reference = None;
        assert!(!serde_json::to_string(&r).unwrap().contains("reference"));
    }

    /// A GGUF run names its type or preset; a per-channel GPTQ checkpoint says how
    /// GPTQModel loads it.
    #[test]
    fn markdown_names_gguf_grids_and_the_per_channel_loader_workaround() {
        let mut r = report();
        r.settings.gguf_type = Some("q4_k_m".into());
        let md = r.markdown();
        assert!(md.contains("- grid: GGUF `q4_k_m`"), "{md}");
        assert_eq!(r.label(), "MagR+OPTQ+CD q4_k_m");
        let mut r = report();
        r.settings.group_size = None;
        assert!(!r.markdown().contains("loaders"));
        r.formats.push("gptq".into());
        let md = r.markdown();
        assert!(
            !md.contains("backend=\"torch\""),
            "3 bits: no fused kernel\n{md}"
        );
        assert!(
            md.contains("vLLM (0.33) refuses `gptq/`: 3 bits, asymmetric"),
            "{md}"
        );
        r.settings.bits = 4;
        let md = r.markdown();
        assert!(
            md.contains("one group per channel (`group_size: -1`); GPTQModel"),
            "{md}"
        );
        assert!(md.contains("backend=\"torch\""), "{md}");
    }

    /// vLLM's refusals are named one by one; a checkpoint every loader runs gets no note.
    #[test]
    fn gptq_loader_notes_name_each_refusal() {
        let mut r = report();
        r.formats.push("gptq".into());
        // 3 bits, asymmetric, groups of 64 on a 4-wide layer, act-order.
        r.settings.act_order = true;
        let notes = r.gptq_loader_notes();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("3 bits, asymmetric"), "{notes:?}");
        assert!(notes[0].contains("groups of 64 do not divide the width 4"));
        assert!(notes[0].contains("act-order with groups"));
        r.settings.act_order = false;
        r.settings.symmetric = true;
        r.settings.bits = 4;
        r.pipeline.layers.iter_mut().for_each(|l| l.shape[0] = 128);
        assert!(r.gptq_loader_notes().is_empty());
        r.settings.group_size = Some(48);
        let notes = r.gptq_loader_notes();
        assert!(
            notes[0].contains("groups of 48; GPTQModel and"),
            "{notes:?}"
        );
        assert!(
            notes[1].contains("groups of 48 (it takes 32, 64 or 128)"),
            "{notes:?}"
        );
        assert!(notes[1].contains("groups of 48 do not divide the width 128"));
        // Groups the fused kernel takes, but that leave a shorter last group.
        r.settings.group_size = Some(256);
        r.pipeline.layers.iter_mut().for_each(|l| l.shape[0] = 576);
        let notes = r.gptq_loader_notes();
        assert!(
            notes[0].contains("groups of 256, which do not divide 576"),
            "{notes:?}"
        );
    }

    #[test]
    fn histogram_counts_every_weight_once() {
        let w: Vec<f32> = (0..35).map(|k| k as f32 * 0.1 - 1.0).collect();
        let h = MagnitudeHistogram::new(w.clone(), w, 2.5);
        assert_eq!(h.before.iter().sum::<u64>(), 35);
        assert_eq!(h.before, h.after);
        // A value at `upper` lands in the last bin.
        let h = MagnitudeHistogram::new([2.5f32], [2.5f32], 2.5);
        assert_eq!(h.before[MagnitudeHistogram::BINS - 1], 1);
    }
}
