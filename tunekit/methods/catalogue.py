"""What `tunekit methods` prints: one line per method, and each method's options (no torch, no peft import)."""

from __future__ import annotations

import json
import typing

from tunekit.errors import UserError, did_you_mean
from tunekit.methods import peft_schema
from tunekit.methods.schema import ALL_METHODS, HANDWRITTEN, LORA_VARIANTS, method_name

# One line per peft tuner (peft's docstrings mostly start with boilerplate); unknown new tuners fall back to it.
PEFT_LINES = {
    "adalora": "AdaLoRA: SVD-form LoRA whose rank budget is reallocated to important matrices during training",
    "boft": "BOFT: orthogonal fine-tuning with butterfly-factorised orthogonal matrices",
    "c3a": "C3A: block-circulant (circular convolution) weight updates",
    "deft": "DEFT: decompositional efficient fine-tuning (not the seed papers' DEFT)",
    "delora": "DeLoRA: LoRA with normalised, norm-bounded updates (decoupled angle and strength)",
    "fourierft": "FourierFT: learns a sparse set of spectral (Fourier) coefficients of each weight update",
    "glora": "GLoRA: generalised LoRA, learned scaling and shifts of weights and activations",
    "gralora": "GraLoRA: granular LoRA, the weight split into blocks each with its own low-rank adapter",
    "hira": "HiRA: Hadamard high-rank adaptation (update = W0 ⊙ low-rank product)",
    "hra": "HRA: Householder reflection adaptation (orthogonal update by a chain of reflections)",
    "ia3": "(IA)^3: learned scaling vectors on keys, values and feed-forward activations",
    "lily": "Lily: low-rank adapters whose up-projections are shared experts across layers",
    "ln_tuning": "LN tuning: only the LayerNorm/RMSNorm weights train",
    "loha": "LoHa: low-rank Hadamard-product update (LyCORIS)",
    "lokr": "LoKr: low-rank Kronecker-product update (LyCORIS)",
    "miss": "MiSS (formerly Bone): block-shared matrix update, one small shard broadcast over the weight",
    "oft": "OFT: orthogonal fine-tuning, block-diagonal orthogonal transform of each weight",
    "p_tuning": "P-tuning: virtual tokens produced by a small prompt encoder (MLP or LSTM)",
    "prefix_tuning": "Prefix tuning: trainable key/value prefixes at every layer",
    "prompt_tuning": "Prompt tuning: trainable virtual-token embeddings prepended to the input",
    "pvera": "PVeRA: probabilistic VeRA (shared random matrices with sampled scaling)",
    "randlora": "RandLoRA: full-rank update from learned combinations of fixed random low-rank bases",
    "road": "RoAd: 2D rotations of output-feature pairs (tiny, batched-adapter friendly)",
    "shira": "SHiRA: sparse high-rank adapter, a fixed sparse subset of each weight trains",
    "trainable_tokens": "Trainable tokens: only the embedding rows of chosen token ids train",
    "vblora": "VB-LoRA: low-rank factors composed from a shared bank of vectors",
    "vera": "VeRA: frozen shared random matrices with trained per-layer scaling vectors",
    "waveft": "WaveFT: sparse weight updates learned in the wavelet domain",
}


def one_line(name: str) -> str:
    for model in HANDWRITTEN:
        if method_name(model) == name:
            return (model.__doc__ or "").strip().splitlines()[0]
    info = peft_schema.snapshot()["tuners"][name]
    doc = info["doc"]
    if name in PEFT_LINES:
        return PEFT_LINES[name] + f" (peft {info['config_class']})"
    if doc.startswith("This is the configuration class") or not doc:
        doc = f"peft tuner {name}"
    return doc.rstrip(".") + f" (peft {info['config_class']})"


def method_rows() -> list[tuple[str, str, str]]:
    """(name, source, line) for every method, hand-written first; excluded peft tuners say why."""
    rows = []
    for model in ALL_METHODS:
        name = method_name(model)
        if name in peft_schema.EXCLUDED:
            rows.append((name, "peft", f"EXCLUDED: {peft_schema.EXCLUDED[name]}"))
        else:
            src = "peft" if name in ("lora", "qlora", *LORA_VARIANTS) or peft_schema.is_peft_tuner(name) else "tunekit"
            rows.append((name, src, one_line(name)))
    return rows


def _type_text(tp: typing.Any) -> str:
    text = str(tp).replace("typing.", "").replace("NoneType", "None")
    return tp.__name__ if isinstance(tp, type) else text


def show(name: str) -> str:
    models = {method_name(m): m for m in ALL_METHODS}
    if name not in models:
        raise UserError(f"no method `{name}`.{did_you_mean(name, models)} `tunekit methods` lists them.")
    lines = [f"{name}: {one_line(name) if name not in peft_schema.EXCLUDED else 'not supported by tunekit'}"]
    if name in peft_schema.EXCLUDED:
        lines.append(f"excluded: {peft_schema.EXCLUDED[name]}")
        return "\n".join(lines) + "\n"
    lines.append("options (type, default):")
    for field, info in models[name].model_fields.items():
        if field == "name":
            continue
        if info.is_required():
            lines.append(f"  {field}: {_type_text(info.annotation)} (required)")
        else:
            default = info.get_default(call_default_factory=True)
            lines.append(f"  {field}: {_type_text(info.annotation)} = {json.dumps(default)}")
        lines.append(f"      {info.description}")
    return "\n".join(lines) + "\n"
