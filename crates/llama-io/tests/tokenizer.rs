//! Tokenizers rebuilt from GGUF metadata: a tiny vocabulary written in the test (ids
//! worked out by hand), the errors, and the real SmolLM2 tokenizer against a slow
//! reference (llama.cpp's pre-tokenizer regexes, then BPE by merge rank).

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use common::{GValue, TempDir, gguf_bytes};
use llama_io::LlamaIoError;
use llama_io::tokenizer::tokenizer_from_gguf;

/// GPT-2's byte-to-character map: printable Latin-1 bytes map to themselves, the other
/// bytes to `U+0100 + k` in byte order.
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut next = 0x100;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap()
            }
        })
        .collect()
}

/// Parses GGUF bytes written to a file.
fn content(dir: &TempDir, bytes: &[u8]) -> (Content, std::path::PathBuf) {
    let path = dir.path().join("tok.gguf");
    std::fs::write(&path, bytes).unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    (Content::read(&mut file).unwrap(), path)
}

/// The tiny vocabulary: a control token, the 256 byte characters, then one token per
/// merge, in merge order.
const MERGES: [&str; 7] = ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o", "2 0"];

fn tiny_metadata(pre: &str) -> Vec<(&'static str, GValue)> {
    let mut tokens = vec!["<|endoftext|>".to_string()];
    tokens.extend(byte_chars().iter().map(|c| c.to_string()));
    tokens.extend(MERGES.iter().map(|m| m.replace(' ', "")));
    let mut types = vec![1; tokens.len()];
    types[0] = 3;
    vec![
        ("tokenizer.ggml.model", GValue::Str("gpt2".into())),
        ("tokenizer.ggml.pre", GValue::Str(pre.into())),
        ("tokenizer.ggml.tokens", GValue::Strs(tokens)),
        ("tokenizer.ggml.token_type", GValue::I32s(types)),
        (
            "tokenizer.ggml.merges",
            GValue::Strs(MERGES.iter().map(|m| m.to_string()).collect()),
        ),
        ("tokenizer.ggml.add_bos_token", GValue::Bool(false)),
    ]
}

/// Id of a byte's character, and of merge `k`'s token.
fn byte_id(b: u8) -> u32 {
    1 + b as u32
}
fn merge_id(k: usize) -> u32 {
    257 + k as u32
}

#[test]
fn tiny_gguf_tokenizer_gives_the_hand_worked_ids() {
    let dir = TempDir::new("tok-tiny");
    let text = "hello world 2024<|endoftext|>";
    // "hello": h e -> he, l l -> ll, he ll -> hell, hell o -> hello.
    // " world": Ġ w -> Ġw, Ġw o -> Ġwo, then r, l, d.
    let mut common = vec![
        merge_id(3),
        merge_id(5),
        byte_id(b'r'),
        byte_id(b'l'),
        byte_id(b'd'),
    ];
    common.push(byte_id(b' '));
    // " 2024": smollm splits every digit (no "2 0" merge); gpt2 keeps "Ġ2024" whole and
    // merges "2 0".
    let digits_split = [b'2', b'0', b'2', b'4'].map(byte_id);
    let digits_merged = [merge_id(6), byte_id(b'2'), byte_id(b'4')];
    for (pre, digits) in [("smollm", &digits_split[..]), ("gpt2", &digits_merged[..])] {
        let (content, path) = content(&dir, &gguf_bytes(3, &tiny_metadata(pre), &[]));
        let tokenizer = tokenizer_from_gguf(&content, &path).unwrap();
        let ids = tokenizer.encode(text, true).unwrap().get_ids().to_vec();
        let mut expected = common.clone();
        expected.extend_from_slice(digits);
        expected.push(0); // the control token, whole
        assert_eq!(ids, expected, "pre-tokenizer {pre}");
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
        // Every byte round-trips, multi-byte UTF-8 included.
        let other = "naïve — 東京\t\n x";
        let ids = tokenizer.encode(other, true).unwrap().get_ids().to_vec();
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), other);
    }
}

#[test]
fn unsupported_or_malformed_tokenizers_are_named_errors() {
    let dir = TempDir::new("tok-errors");
    let with = |key: &'static str, value: GValue| {
        let mut meta = tiny_metadata("smollm");
        meta.retain(|(k, _)| *k != key);
        meta.push((key, value));
        meta
    };
    let cases = [
        (
            with("tokenizer.ggml.model", GValue::Str("llama".into())),
            "tokenizer.ggml.model",
        ),
        (
            with("tokenizer.ggml.pre", GValue::Str("llama-bpe".into())),
            "tokenizer.ggml.pre",
        ),
        (
            with(
                "tokenizer.ggml.merges",
                GValue::Strs(vec!["h e".into(), "x yz".into()]),
            ),
            "merges[1]",
        ),
        (
            with("tokenizer.ggml.merges", GValue::Strs(vec!["he".into()])),
            "merges[0]",
        ),
        (
            with("tokenizer.ggml.token_type", GValue::I32s(vec![1, 1])),
            "token_type",
        ),
        (
            with("tokenizer.ggml.add_space_prefix", GValue::Bool(true)),
            "add_space_prefix",
        ),
        (
            with("tokenizer.ggml.model", GValue::Bool(true)),
            "tokenizer.ggml.model",
        ),
    ];
    for (meta, needle) in cases {
        let (content, path) = content(&dir, &gguf_bytes(3, &meta, &[]));
        let err = tokenizer_from_gguf(&content, &path).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(
                err,
                LlamaIoError::Format { .. } | LlamaIoError::Unsupported { .. }
            ),
            "{message}"
        );
        assert!(message.contains(needle), "{message} should name {needle}");
        assert!(
            message.contains("tok.gguf"),
            "{message} should name the file"
        );
    }
}

/// llama.cpp's pre-tokenizer for `smollm`: every `\p{N}` on its own, then the GPT-2
/// regex, each applied to the pieces the previous one left.
fn reference_pre_tokenize(text: &str) -> Vec<String> {
    let digits = fancy_regex::Regex::new(r"\p{N}").unwrap();
    let gpt2 = fancy_regex::Regex::new(
        r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    )
    .unwrap();
    // Splits `piece` into the matches of `re` and the text between them.
    let split = |re: &fancy_regex::Regex, piece: &str| -> Vec<String> {
        let mut out = Vec::new();
        let mut at = 0;
        for m in re.find_iter(piece) {
            let m = m.unwrap();
            if m.start() > at {
                out.push(piece[at..m.start()].to_string());
            }
            out.push(m.as_str().to_string());
            at = m.end();
        }
        if at < piece.len() {
            out.push(piece[at..].to_string());
        }
        out
    };
    split(&digits, text)
        .iter()
        .flat_map(|p| split(&gpt2, p))
        .collect()
}

/// BPE by the book: the piece's bytes as characters, then repeatedly merge the adjacent
/// pair of lowest rank (leftmost on ties) until no pair is a merge.
fn reference_bpe(
    piece: &str,
    ranks: &HashMap<(String, String), usize>,
    chars: &[char],
) -> Vec<String> {
    let mut symbols: Vec<String> = piece
        .bytes()
        .map(|b| chars[b as usize].to_string())
        .collect();
    loop {
        let best = (0..symbols.len().saturating_sub(1))
            .filter_map(|i| {
                ranks
                    .get(&(symbols[i].clone(), symbols[i + 1].clone()))
                    .map(|&r| (r, i))
            })
            .min();
        let Some((_, i)) = best else { return symbols };
        let merged = format!("{}{}", symbols[i], symbols[i + 1]);
        symbols.splice(i..i + 2, [merged]);
    }
}

#[test]
#[ignore = "needs the SmolLM2 GGUF: run `cargo xtask fetch` (CI runs it)"]
fn smollm2_tokenizer_matches_the_reference_on_wikitext2() {
    let path = llama_io::data::default_model_path().unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = Content::read(&mut file).unwrap();
    let tokenizer = tokenizer_from_gguf(&content, Path::new(&path)).unwrap();
    let strings = |key: &str| -> Vec<String> {
        content.metadata[key]
            .to_vec()
            .unwrap()
            .iter()
            .map(|v| v.to_string().unwrap().clone())
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens");
    assert_eq!(
        (tokens.len(), tokenizer.get_vocab_size(true)),
        (49152, 49152)
    );
    let ids: HashMap<&str, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i as u32))
        .collect();
    let ranks: HashMap<(String, String), usize> = strings("tokenizer.ggml.merges")
        .iter()
        .enumerate()
        .map(|(r, m)| {
            let (a, b) = m.split_once(' ').unwrap();
            ((a.to_string(), b.to_string()), r)
        })
        .collect();
    assert_eq!(ranks.len(), 48900);

    // No BOS; control tokens whole.
    let chat = tokenizer
        .encode("<|im_start|>user\nHi<|im_end|>", true)
        .unwrap();
    assert_eq!(chat.get_ids()[0], 1);
    assert_eq!(*chat.get_ids().last().unwrap(), 2);

    let text = llama_io::data::read_wikitext2_test().unwrap();
    let chars = byte_chars();
    let expected: Vec<u32> = reference_pre_tokenize(&text)
        .iter()
        .flat_map(|piece| reference_bpe(piece, &ranks, &chars))
        .map(|symbol| ids[symbol.as_str()])
        .collect();
    let got = tokenizer
        .encode(text.as_str(), true)
        .unwrap()
        .get_ids()
        .to_vec();
    if let Some(first) = (0..got.len().min(expected.len())).find(|&i| got[i] != expected[i]) {
        panic!(
            "first difference at token {first}: got {:?}, expected {:?}",
            &got[first..(first + 8).min(got.len())],
            &expected[first..(first + 8).min(expected.len())]
        );
    }
    assert_eq!(got.len(), expected.len());
    println!(
        "WikiText-2 test: {} tokens, identical to the reference",
        got.len()
    );
    assert_eq!(tokenizer.decode(&got, false).unwrap(), text);
}
