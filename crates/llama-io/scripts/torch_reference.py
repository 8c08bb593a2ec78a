"""Independent check of `llama-io`'s SmolLM2 perplexity and speed, in PyTorch.

    python3 -m pip install torch gguf regex
    python3 crates/llama-io/scripts/torch_reference.py MODEL.gguf WIKI_TEST_RAW [SEQLEN] [WINDOWS]

Nothing here comes from the Rust code: the GGUF is read and dequantized by the `gguf`
package, the text is tokenized with llama.cpp's `smollm` pre-tokenizer regexes and BPE
by merge rank, and the forward pass keeps the GGUF row order of Q and K and applies
llama.cpp's interleaved RoPE (adjacent pairs) instead of undoing the permutation.
Prints the perplexity by the papers' protocol and tokens per second (torch's default
thread count; set OMP_NUM_THREADS to compare on equal footing).
"""
import math
import sys
import time

import numpy as np
import regex
import torch
from gguf import GGUFReader
from gguf.quants import dequantize


def field(reader, key):
    f = reader.fields[key]
    if f.types[0].name == "ARRAY":
        return [bytes(f.parts[i]).decode() if f.types[-1].name == "STRING" else f.parts[i][0]
                for i in f.data]
    value = f.parts[f.data[0]]
    return bytes(value).decode() if f.types[0].name == "STRING" else value[0]


def tokenize(reader, text):
    tokens = field(reader, "tokenizer.ggml.tokens")
    ids = {t: i for i, t in enumerate(tokens)}
    ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(field(reader, "tokenizer.ggml.merges"))}
    printable = [b for b in range(256) if 0x21 <= b <= 0x7e or 0xa1 <= b <= 0xac or 0xae <= b <= 0xff]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    gpt2 = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
    cache = {}

    def bpe(piece):
        if piece in cache:
            return cache[piece]
        symbols = [chars[b] for b in piece.encode()]
        while len(symbols) > 1:
            best = min((ranks.get((symbols[i], symbols[i + 1]), math.inf), i) for i in range(len(symbols) - 1))
            if best[0] == math.inf:
                break
            i = best[1]
            symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
        cache[piece] = [ids[s] for s in symbols]
        return cache[piece]

    out = []
    for part in regex.split(r"(\p{N})", text):
        if part:
            for piece in gpt2.findall(part):
                out.extend(bpe(piece))
    return out


def main():
    path, wiki = sys.argv[1], sys.argv[2]
    seqlen = int(sys.argv[3]) if len(sys.argv) > 3 else 2048
    windows = int(sys.argv[4]) if len(sys.argv) > 4 else 40
    reader = GGUFReader(path)
    w = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        w[t.name] = torch.from_numpy(np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape))
    layers = int(field(reader, "llama.block_count"))
    heads = int(field(reader, "llama.attention.head_count"))
    kv_heads = int(field(reader, "llama.attention.head_count_kv"))
    theta = float(field(reader, "llama.rope.freq_base"))
    eps = float(field(reader, "llama.attention.layer_norm_rms_epsilon"))
    hidden = w["token_embd.weight"].shape[1]
    hd = hidden // heads

    with open(wiki, encoding="utf-8") as f:
        text = "\n\n".join(f.read().splitlines())
    ids = tokenize(reader, text)
    print(f"{len(ids)} tokens", file=sys.stderr)

    pos = torch.arange(seqlen, dtype=torch.float64)
    inv = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.outer(pos, inv)
    cos, sin = ang.cos().float(), ang.sin().float()  # [seq, hd/2]

    def rope_interleaved(x):  # x [b, h, s, hd], pairs (2i, 2i+1)
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = torch.empty_like(x)
        out[..., 0::2] = x0 * cos - x1 * sin
        out[..., 1::2] = x0 * sin + x1 * cos
        return out

    def rms(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g

    emb = w["token_embd.weight"]
    head = w.get("output.weight", emb)
    total, count = 0.0, 0
    start = time.time()
    with torch.inference_mode():
        for k in range(min(windows, len(ids) // seqlen)):
            x = emb[torch.tensor(ids[k * seqlen:(k + 1) * seqlen])][None]
            for i in range(layers):
                p = f"blk.{i}."
                a = rms(x, w[p + "attn_norm.weight"])
                q = (a @ w[p + "attn_q.weight"].T).view(1, seqlen, heads, hd).transpose(1, 2)
                kk = (a @ w[p + "attn_k.weight"].T).view(1, seqlen, kv_heads, hd).transpose(1, 2)
                v = (a @ w[p + "attn_v.weight"].T).view(1, seqlen, kv_heads, hd).transpose(1, 2)
                q, kk = rope_interleaved(q), rope_interleaved(kk)
                rep = heads // kv_heads
                kk, v = kk.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
                o = torch.nn.functional.scaled_dot_product_attention(q, kk, v, is_causal=True)
                x = x + o.transpose(1, 2).reshape(1, seqlen, hidden) @ w[p + "attn_output.weight"].T
                m = rms(x, w[p + "ffn_norm.weight"])
                g = torch.nn.functional.silu(m @ w[p + "ffn_gate.weight"].T)
                x = x + (g * (m @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
            logits = rms(x, w["output_norm.weight"])[0] @ head.T
            target = torch.tensor(ids[k * seqlen + 1:(k + 1) * seqlen])
            nll = torch.nn.functional.cross_entropy(logits[:-1].double(), target)
            total += nll.item()
            count += 1
            print(f"window {count}: {nll.item():.4f}", file=sys.stderr)
    seconds = time.time() - start
    print(f"ppl {math.exp(total / count):.4f}  windows {count}  tokens {count * seqlen}  "
          f"seconds {seconds:.1f}  tokens/s {count * seqlen / seconds:.1f}  threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
