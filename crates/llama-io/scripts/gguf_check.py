#!/usr/bin/env python3
"""Independent check of llama-io's GGUF writer with the `gguf` Python package
(llama.cpp's gguf-py; `pip install gguf`). Not run by CI.

    MAGR_GGUF_CHECK_OUT=/tmp/ggufcheck cargo test -p llama-io --release \
        --test gguf_writer -- --ignored smollm2_written_for_the_python_check
    python3 crates/llama-io/scripts/gguf_check.py SmolLM2-135M-Instruct.Q4_1.gguf \
        /tmp/ggufcheck/smollm2-written.gguf

Compares the written file with the original SmolLM2 GGUF: the `llama.*` and
`tokenizer.*` metadata, every tensor's name and shape, every F32 tensor equal to the
original's dequantization (Q and K rows included: the writer must put them back in
llama.cpp's order), and the Q8_0 tensors within Q8_0's rounding of the original.
"""

import sys

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType
from gguf.quants import dequantize


def field_value(field):
    """The value of a metadata field as Python data."""
    return field.contents()


def tensors(reader):
    out = {}
    for t in reader.tensors:
        data = dequantize(t.data, t.tensor_type)
        out[t.name] = (t.tensor_type, data.reshape([int(d) for d in reversed(t.shape)]))
    return out


def main(original_path, written_path):
    original, written = GGUFReader(original_path), GGUFReader(written_path)
    failures = []
    ok = lambda cond, msg: cond or failures.append(msg)

    version = written.fields["GGUF.version"].contents()
    ok(version == 3, f"GGUF version {version}")
    ok(written.fields["general.architecture"].contents() == "llama", "architecture")
    keys = [k for k in original.fields if k.startswith("llama.") or k.startswith("tokenizer.")]
    for key in keys:
        if key not in written.fields:
            failures.append(f"missing key {key}")
            continue
        a, b = original.fields[key], written.fields[key]
        ok(a.types == b.types, f"{key}: types {a.types} vs {b.types}")
        ok(field_value(a) == field_value(b), f"{key}: values differ")
    print(f"{len(keys)} llama.*/tokenizer.* keys compared")

    orig, new = tensors(original), tensors(written)
    ok(sorted(orig) == sorted(new), "tensor names differ")
    worst_f32, worst_q8 = 0.0, 0.0
    for name, (otype, odata) in orig.items():
        ntype, ndata = new[name]
        if odata.shape != ndata.shape:
            failures.append(f"{name}: shape {odata.shape} vs {ndata.shape}")
            continue
        diff = float(np.max(np.abs(odata.astype(np.float64) - ndata.astype(np.float64))))
        if ntype == GGMLQuantizationType.F32:
            worst_f32 = max(worst_f32, diff)
            ok(diff == 0.0, f"{name}: F32 differs from the original by {diff}")
        elif ntype == GGMLQuantizationType.Q8_0:
            # Q8_0 rounds each value to within half a step, step = max|block| / 127,
            # plus the rounding of the step itself to f16 (up to 127 * 2^-11 of a step
            # at the largest value): at most about 0.56 step. Rows out of place would
            # be off by many steps.
            blocks = np.abs(odata.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
            err = np.abs(odata.reshape(-1, 32) - ndata.reshape(-1, 32))
            ratio = float(np.max(err / np.maximum(blocks, 1e-30)))
            worst_q8 = max(worst_q8, ratio)
            ok(ratio <= 0.57, f"{name}: Q8_0 error {ratio} steps")
            print(f"{name}: Q8_0, max |diff| {diff:.3g} ({ratio:.3f} of a step)")
        else:
            failures.append(f"{name}: unexpected type {ntype.name}")
    print(f"{len(orig)} tensors compared; F32 max |diff| {worst_f32}; "
          f"Q8_0 max error {worst_q8:.3f} step")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
