//! Where data and the model are looked for, and the errors when they are absent. One
//! test function: it sets environment variables, which other threads must not see
//! change under them.

mod common;

use common::TempDir;
use llama_io::data;

#[test]
fn data_and_model_paths_follow_the_environment() {
    let dir = TempDir::new("data-env");
    let text_dir = dir.path().join("texts");
    std::fs::create_dir_all(text_dir.join("wikitext-2-raw")).unwrap();
    std::fs::write(
        text_dir.join(data::WIKITEXT2_TEST),
        "first line\n = Title = \nlast\n",
    )
    .unwrap();
    let cache = dir.path().join("cache");
    // SAFETY: this test binary has no other test running, and nothing else reads the
    // environment concurrently.
    unsafe {
        std::env::set_var("MAGR_DATA_DIR", &text_dir);
        std::env::set_var("MAGR_CACHE_DIR", &cache);
        std::env::remove_var("MAGR_MODEL");
    }

    // The papers' protocol: the lines joined with a blank line.
    assert_eq!(
        data::read_wikitext2_test().unwrap(),
        "first line\n\n = Title = \n\nlast"
    );
    assert_eq!(data::data_dirs(), vec![text_dir.clone()]);

    // A missing text names itself, where it was looked for, and the variable to set.
    let err = data::data_file(data::ENWIKI_CALIBRATION)
        .unwrap_err()
        .to_string();
    assert!(err.contains(data::ENWIKI_CALIBRATION), "{err}");
    assert!(err.contains(&text_dir.display().to_string()), "{err}");
    assert!(err.contains("MAGR_DATA_DIR"), "{err}");

    // No model in the cache: the error says how to fetch it.
    assert_eq!(data::cache_dir().unwrap(), cache);
    let err = data::default_model_path().unwrap_err().to_string();
    assert!(
        err.contains("cargo xtask fetch") && err.contains(data::DEFAULT_MODEL_FILE),
        "{err}"
    );
    // Once the file is there, it is the default.
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join(data::DEFAULT_MODEL_FILE), b"").unwrap();
    assert_eq!(
        data::default_model_path().unwrap(),
        cache.join(data::DEFAULT_MODEL_FILE)
    );

    // MAGR_MODEL wins, and a wrong one is named.
    let missing = dir.path().join("no-such-model.gguf");
    unsafe { std::env::set_var("MAGR_MODEL", &missing) };
    let err = data::default_model_path().unwrap_err().to_string();
    assert!(
        err.contains("MAGR_MODEL") && err.contains("no-such-model.gguf"),
        "{err}"
    );
}
