//! Seed inputs of the fuzz targets, made from generated models: a GGUF without and with
//! tokenizer metadata, Hugging Face directories with a word-level and a byte-level BPE
//! tokenizer, their `tokenizer.json`, and a run checkpoint after the first block.

#[path = "../../../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;

use fuzz_targets::{CHECKPOINT_FILES, CHECKPOINT_FINGERPRINT, HF_FILES, join};
use magr::llama_io::tokenizer::tokenizer_from_json;
use magr::llama_io::{GgufLinears, GgufOptions, LinearKind, Model, WeightDtype};
use magr::quantizers::{GridSpec, QuantizedLinear};
use magr::run::{RunEvents, RunObserver};
use magr::{
    PipelineError, PipelineObserver, PipelineSettings, PipelineState, Progress, RunCheckpoint,
    quantize_model,
};

/// No progress to show while the seeds are made.
struct Silent;

impl RunEvents for Silent {
    fn progress(&mut self, _progress: Progress) {}
    fn warning(&mut self, _block: usize, _kind: LinearKind, _warning: &str) {}
}

/// A run's own observer (formats fed, checkpoint saved), stopped after block 0.
struct FirstBlock<'a>(RunObserver<'a>);

impl PipelineObserver for FirstBlock<'_> {
    fn layer_quantized(
        &mut self,
        block: usize,
        kind: LinearKind,
        quantized: &QuantizedLinear,
    ) -> Result<(), PipelineError> {
        self.0.layer_quantized(block, kind, quantized)
    }

    fn block_finished(
        &mut self,
        model: &mut Model,
        state: &PipelineState,
    ) -> Result<(), PipelineError> {
        self.0.block_finished(model, state)?;
        Err(PipelineError::Output(
            "the seed checkpoint is written".into(),
        ))
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The seeds of every target, by target name.
pub fn all() -> BTreeMap<&'static str, Vec<Vec<u8>>> {
    let dir = std::env::temp_dir().join(format!("magr-fuzz-seeds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut seeds: BTreeMap<&'static str, Vec<Vec<u8>>> = BTreeMap::new();

    // Hugging Face directories: word-level, then byte-level BPE.
    let word = dir.join("word");
    common::write_tiny_model_dir(&word, 3);
    let bpe_json = dir.join("bpe-tokenizer.json");
    std::fs::write(&bpe_json, common::bpe_tokenizer_json()).unwrap();
    let mut model = Model::load(&word).unwrap();
    model.set_tokenizer(Some(tokenizer_from_json(&bpe_json).unwrap()));
    let bpe = dir.join("bpe");
    magr::llama_io::write_hf_dir(&model, &bpe, WeightDtype::F16, false).unwrap();
    for d in [&word, &bpe] {
        let files: Vec<Vec<u8>> = HF_FILES
            .iter()
            .map(|f| std::fs::read(d.join(f)).unwrap_or_default())
            .collect();
        let parts: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
        seeds.entry("hf_dir").or_default().push(join(&parts));
        seeds
            .entry("tokenizer_json")
            .or_default()
            .push(read(&d.join("tokenizer.json")));
    }

    // GGUF files: without a tokenizer, and with the BPE one as metadata.
    let plain = dir.join("plain.gguf");
    let mut untokenized = model.clone();
    untokenized.set_tokenizer(None);
    magr::llama_io::write_gguf(
        &untokenized,
        &plain,
        &GgufOptions::default(),
        &GgufLinears::new(),
    )
    .unwrap();
    let tokenized = dir.join("tokenized.gguf");
    let options = GgufOptions {
        tokenizer_pre: Some("smollm".into()),
        ..GgufOptions::default()
    };
    magr::llama_io::write_gguf(&model, &tokenized, &options, &GgufLinears::new()).unwrap();
    seeds.insert("gguf", vec![read(&plain), read(&tokenized)]);

    // A run checkpoint after block 0 of the generated model, with the formats that the
    // target restores.
    let mut model = common::tiny_model(4);
    assert_eq!(model.config(), &fuzz_targets::checkpoint_config());
    let ckpt_dir = dir.join("checkpoint");
    let checkpoint = RunCheckpoint::new(&ckpt_dir, CHECKPOINT_FINGERPRINT.into());
    let settings = PipelineSettings::new(GridSpec::reference(4, Some(32)).unwrap(), faer::Par::Seq);
    let mut formats = fuzz_targets::checkpoint_formats();
    let mut observer = FirstBlock(RunObserver {
        events: &mut Silent,
        formats: &mut formats,
        checkpoint: Some(&checkpoint),
    });
    let stopped = quantize_model(
        &mut model,
        &common::windows(2, 16, 5),
        &settings,
        &mut observer,
    );
    assert!(stopped.is_err());
    let files: Vec<Vec<u8>> = CHECKPOINT_FILES
        .iter()
        .map(|f| read(&ckpt_dir.join(f)))
        .collect();
    let parts: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
    seeds.insert("checkpoint", vec![join(&parts)]);

    std::fs::remove_dir_all(&dir).unwrap();
    seeds
}
