"""Independent check of a `magr quantize --out DIR` run: dequantizes DIR/gptq the way GPTQ
loaders do (AutoGPTQ's bit layout, v1 zero points stored minus one, v2 as they are),
written here in numpy without any of magr's code, and compares every linear layer with
DIR/fake-quant bit for bit (both rounded to the fake-quant dtype).

usage: python3 scripts/gptq_check.py DIR
needs: numpy, safetensors
"""
import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file


def unpack_rows(words, bits, count):
    """Codes of little-endian bit streams stored along axis 0 of `words` (int32)."""
    words = words.astype(np.uint32).astype(np.uint64)
    out = np.zeros((count,) + words.shape[1:], dtype=np.int64)
    for k in range(count):
        bit = k * bits
        w, off = divmod(bit, 32)
        lo = words[w]
        hi = words[w + 1] if w + 1 < words.shape[0] else np.zeros_like(lo)
        both = lo | (hi << np.uint64(32))
        out[k] = ((both >> np.uint64(off)) & np.uint64((1 << bits) - 1)).astype(np.int64)
    return out


def load_dir(d):
    """Every tensor of a Hugging Face directory: `model.safetensors`, or the shards its
    `model.safetensors.index.json` lists."""
    index = os.path.join(d, "model.safetensors.index.json")
    if not os.path.exists(index):
        return load_file(os.path.join(d, "model.safetensors"))
    tensors = {}
    for shard in sorted(set(json.load(open(index))["weight_map"].values())):
        tensors.update(load_file(os.path.join(d, shard)))
    return tensors


def main(run):
    config = json.load(open(f"{run}/gptq/config.json"))
    q = config["quantization_config"]
    bits, v2 = q["bits"], q.get("checkpoint_format") == "gptq_v2"
    packed = load_dir(f"{run}/gptq")
    fake = load_dir(f"{run}/fake-quant")
    layers = sorted(n[: -len(".qweight")] for n in packed if n.endswith(".qweight"))
    mismatched = 0
    for layer in layers:
        qweight = packed[f"{layer}.qweight"]
        qzeros = packed[f"{layer}.qzeros"]
        scales = packed[f"{layer}.scales"].astype(np.float32)
        g_idx = packed[f"{layer}.g_idx"].astype(np.int64)
        inputs, outputs = g_idx.shape[0], scales.shape[1]
        codes = unpack_rows(qweight, bits, inputs)  # [in, out]
        zeros = unpack_rows(qzeros.T, bits, outputs).T  # [groups, out]
        if not v2:
            zeros = zeros + 1
        w = scales[g_idx] * (codes - zeros[g_idx]).astype(np.float32)  # [in, out], f32
        reference = fake[f"{layer}.weight"]  # [out, in]
        same = w.T.astype(reference.dtype).view(np.uint16 if reference.itemsize == 2 else np.uint32)
        ref = reference.view(same.dtype)
        bad = int((same != ref).sum())
        mismatched += bad
        if bad:
            print(f"{layer}: {bad} of {ref.size} weights differ")
    print(
        f"{len(layers)} layers, {bits} bits, group_size {q['group_size']}, desc_act {q['desc_act']}, "
        f"{q.get('checkpoint_format', 'gptq')}: {'all weights identical' if mismatched == 0 else f'{mismatched} weights differ'}"
    )
    return 0 if mismatched == 0 and layers else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
