"""`cargo xtask check-loaders DIR...`, second step: run in the loaders' virtual environment
(`py_env.py` makes it), loads every format of each `magr quantize --out DIR` run
with the real loaders and prints one table.

Usage: check_loaders.py TEXT DIR...   (TEXT: the evaluation text, WikiText-2 test)

For each DIR:
- `fake-quant/` through transformers (`AutoModelForCausalLM`, the float path): the
  reference perplexity, and its weights are the reference weights;
- `gptq/` through transformers (its GPTQ integration, which runs GPTQModel's kernels) and
  through `GPTQModel.load`, each with the kernel GPTQModel picks by itself; where that is
  the fused CPU kernel (`_weight_int4pack_mm_cpu`, 4 bits) and it cannot run the
  checkpoint (groups per channel, or groups that do not divide a layer's width), the row
  says so and a second row loads it with `backend="torch"` (the workaround README.md
  and report.md give);
- vLLM is not run (it needs a GPU here); its row quotes `report.md`, whose loader notes
  apply the acceptance rules read in vLLM 0.33.0's GPTQ loader (`AutoGPTQConfig`).

A loaded layer's weights are read by its own forward pass on the identity matrix
(`W^T = layer(I)`, exact: every output is one weight times one), so the check sees what
the kernel computes, not what the file holds; they are compared with `fake-quant/`'s in
the dtype of the file. Perplexity: the first WINDOWS windows of SEQLEN tokens of TEXT,
every position scored, the same tokens for every loader. The tokenizer of each directory
must give the same ids as the source model's for a chat-templated prompt.

Exit status 1 when any check fails, other than the rows that name a known limitation.
"""
import contextlib
import json
import math
import os
import sys
import traceback

# GPTQModel's torch kernel asks torch.compile for a graph per layer shape: minutes on two
# cores for nothing the check needs.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch
from safetensors import safe_open

WINDOWS = 4
SEQLEN = 512
KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France? Answer in one word."},
]
DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}


def linear_layers(model):
    """`{module name: module}` of the quantized linear layers (names as in the files)."""
    return {name: m for name, m in model.named_modules()
            if name.split(".")[-1] in KINDS and "layers." in name}


def reference_weights(fake_dir):
    """The fake-quant weights (`{module name: tensor out x in}`) and their dtype."""
    weights, dtype = {}, None
    index = os.path.join(fake_dir, "model.safetensors.index.json")
    files = (sorted(set(json.load(open(index))["weight_map"].values()))
             if os.path.exists(index) else ["model.safetensors"])
    for file in files:
        with safe_open(os.path.join(fake_dir, file), "pt") as f:
            for name in f.keys():
                module = name[: -len(".weight")]
                if name.endswith(".weight") and module.split(".")[-1] in KINDS:
                    weights[module] = f.get_tensor(name)
                    dtype = weights[module].dtype
    return weights, dtype


def compare_weights(model, reference, dtype):
    """(layers whose kernel output equals the reference bit for bit, layers, max |dw|)."""
    layers = linear_layers(model)
    same, worst = 0, 0.0
    for name, module in layers.items():
        key = name[name.index("model.layers."):] if "model.layers." in name else name
        ref = reference[key]
        # Every model is loaded in the files' dtype, so the layer computes in it.
        eye = torch.eye(ref.shape[1], dtype=dtype)
        with torch.no_grad():
            out = module(eye)
        if getattr(module, "bias", None) is not None:
            out = out - module.bias
        got = out.t().to(dtype)
        same += bool(torch.equal(got, ref))
        worst = max(worst, (got.float() - ref.float()).abs().max().item())
    return same, len(layers), worst


def perplexity(model, ids):
    nll, count = 0.0, 0
    for w in range(WINDOWS):
        chunk = ids[w * SEQLEN:(w + 1) * SEQLEN].unsqueeze(0)
        with torch.no_grad():
            logits = model(chunk).logits.float()
        logp = torch.log_softmax(logits[0, :-1], dim=-1)
        nll -= logp.gather(1, chunk[0, 1:, None]).sum().item()
        count += chunk.shape[1] - 1
    return math.exp(nll / count)


def source_tokenizer(report):
    from transformers import AutoTokenizer
    model = report["model"]
    if model.endswith(".gguf"):
        return AutoTokenizer.from_pretrained(os.path.dirname(model),
                                             gguf_file=os.path.basename(model))
    return AutoTokenizer.from_pretrained(model)


def chat_ids(tokenizer):
    ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def vllm_verdict(run_dir):
    """What `report.md` says of vLLM (magr's rules from vLLM 0.33.0's source: not run)."""
    with open(os.path.join(run_dir, "report.md"), encoding="utf-8") as f:
        notes = [line for line in f if line.startswith("- loaders: vLLM")]
    return notes[0][len("- loaders: "):].strip() if notes else "accepts"


class Table:
    def __init__(self):
        self.rows, self.failed = [], False

    def add(self, run, fmt, loader, status, weights="", ppl="", ratio="", ok=True):
        self.rows.append((run, fmt, loader, status, weights, ppl, ratio))
        self.failed |= not ok

    def print(self):
        head = ("run", "format", "loader", "result", "layers = fake-quant (max abs dw)",
                f"ppl ({WINDOWS} x {SEQLEN})", "ppl / fake-quant")
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for row in self.rows:
            print("| " + " | ".join(str(c) for c in row) + " |")


def check_run(run_dir, text, table):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    run = os.path.basename(os.path.normpath(run_dir))
    report = json.load(open(os.path.join(run_dir, "report.json")))
    fake_dir, gptq_dir = (os.path.join(run_dir, d) for d in ("fake-quant", "gptq"))
    if not os.path.isdir(fake_dir):
        table.add(run, "-", "-", "no fake-quant/ to compare with", ok=False)
        return
    reference, dtype = reference_weights(fake_dir)

    source = chat_ids(source_tokenizer(report))
    for d in (fake_dir, gptq_dir):
        if os.path.isdir(d):
            same = chat_ids(AutoTokenizer.from_pretrained(d)) == source
            table.add(run, os.path.basename(d), "transformers tokenizer",
                      "chat template: same ids as the source" if same
                      else "chat template: ids differ from the source", ok=same)
    tokenizer = AutoTokenizer.from_pretrained(fake_dir)
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"][: WINDOWS * SEQLEN])

    fake = AutoModelForCausalLM.from_pretrained(fake_dir, dtype=dtype, device_map="cpu")
    fake_ppl = perplexity(fake, ids)
    same, n, worst = compare_weights(fake, reference, dtype)
    table.add(run, "fake-quant", "transformers", "loads", f"{same}/{n} ({worst:.1e})",
              f"{fake_ppl:.4f}", "1", ok=same == n)
    del fake
    if not os.path.isdir(gptq_dir):
        return
    config = json.load(open(os.path.join(gptq_dir, "config.json")))
    q = config["quantization_config"]

    fused_cpu_kernel = "_weight_int4pack_mm"

    def judge(loader, load, known=None):
        try:
            model = load()
            ppl = perplexity(model, ids)
            same, n, worst = compare_weights(model, reference, dtype)
            kernel = sorted({type(m).__name__ for m in linear_layers(model).values()})
            ratio = ppl / fake_ppl
            good = same == n and abs(ratio - 1) < 1e-3
            table.add(run, "gptq", loader, "loads, runs (" + ", ".join(kernel) + ")",
                      f"{same}/{n} ({worst:.1e})", f"{ppl:.4f}", f"{ratio:.6f}", ok=good)
            return True
        except Exception as e:  # a refusal is a result: the row says what was said
            message = " ".join(str(e).split())[:160].replace("|", "/")
            if known and known in str(e):
                table.add(run, "gptq", loader, f"known limitation: {message}")
            else:
                traceback.print_exc(file=sys.stderr)
                table.add(run, "gptq", loader, f"FAILED: {type(e).__name__}: {message}",
                          ok=False)
            return False

    # Both in the dtype of the files (GPTQModel would pick bf16 on a CPU by itself).
    from transformers import GPTQConfig
    if not judge("transformers", lambda: AutoModelForCausalLM.from_pretrained(
            gptq_dir, dtype=dtype, device_map="cpu"), known=fused_cpu_kernel):
        judge('transformers (GPTQConfig(backend="torch"))',
              lambda: AutoModelForCausalLM.from_pretrained(
                  gptq_dir, dtype=dtype, device_map="cpu",
                  quantization_config=GPTQConfig(bits=q["bits"], backend="torch")))
    from gptqmodel import GPTQModel
    if not judge("GPTQModel", lambda: GPTQModel.load(gptq_dir, device="cpu", dtype=dtype).model,
                 known=fused_cpu_kernel):
        judge('GPTQModel (backend="torch")',
              lambda: GPTQModel.load(gptq_dir, device="cpu", dtype=dtype,
                                     backend="torch").model)
    table.add(run, "gptq", "vLLM 0.33.0 (report.md's rules, not run)", vllm_verdict(run_dir))


def main():
    text_path, runs = sys.argv[1], sys.argv[2:]
    with open(text_path, encoding="utf-8") as f:
        text = "\n\n".join(line.strip() for line in f if line.strip())
    torch.manual_seed(0)
    table = Table()
    # The loaders print banners and logs on stdout, from Python and from their
    # extensions: file descriptor 1 points at stderr while they run, so that the table
    # alone goes to stdout.
    sys.stdout.flush()
    stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            for run in runs:
                say(f"check-loaders: {run}")
                check_run(run, text, table)
    finally:
        sys.stdout.flush()
        os.dup2(stdout, 1)
        os.close(stdout)
    table.print()
    sys.exit(1 if table.failed else 0)


main()
