"""Checks that a directory written by `llama_io::write_hf_dir` loads in Hugging Face
`transformers` and evaluates like `llama-io` (not run by CI).

    python3 -m pip install torch transformers
    python3 crates/llama-io/scripts/transformers_check.py HF_DIR WIKI_TEST_RAW [SEQLEN] [WINDOWS]

Prints the token count, the first ids and the perplexity of the first WINDOWS windows
(default 4 of 512), to compare with `llama_io::perplexity` on the same model.
"""
import math
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    path, wiki = sys.argv[1], sys.argv[2]
    seqlen = int(sys.argv[3]) if len(sys.argv) > 3 else 512
    windows = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with open(wiki, encoding="utf-8") as f:
        text = "\n\n".join(f.read().splitlines())
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    print(f"{len(ids)} tokens, first {ids[:8].tolist()}")
    nll = 0.0
    with torch.inference_mode():
        for k in range(windows):
            x = ids[k * seqlen:(k + 1) * seqlen][None]
            nll += model(x, labels=x).loss.item()
    print(f"transformers: ppl {math.exp(nll / windows):.4f} at seqlen {seqlen}, {windows} windows")


if __name__ == "__main__":
    main()
