"""Tiny random-weight HuBERTs written in the layouts users have: fairseq checkpoint, Hugging Face dir,
torchaudio state dict. The writers here use each format's own parameter names, written out independently of
the loaders under test."""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
from typing import Dict

import numpy as np
import torch

from stok.models.hubert import LoadedHubert
from stok.models.hubert.configs import build_model, tiny_config


def tiny_model(kind: str = "base", seed: int = 0, **overrides):
    """(model, config) with random weights, norms perturbed away from identity so they matter."""
    torch.manual_seed(seed)
    cfg = tiny_config(kind, **overrides)
    model = build_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model.eval(), cfg


def loaded(model, cfg, normalize=False) -> LoadedHubert:
    return LoadedHubert(model, cfg, normalize, "memory", "memory")


def _pos_gv(sd: Dict[str, torch.Tensor]):
    pre = "encoder.transformer.pos_conv_embed.conv."
    g = sd.get(pre + "parametrizations.weight.original0", sd.get(pre + "weight_g"))
    v = sd.get(pre + "parametrizations.weight.original1", sd.get(pre + "weight_v"))
    return g, v, sd[pre + "bias"]


def fairseq_state_dict(model, cfg) -> Dict[str, torch.Tensor]:
    """fairseq HubertModel parameter names (feature_extractor.conv_layers.i.0 conv, .2 GroupNorm or .2.1
    LayerNorm, layer_norm + post_extract_proj, encoder.pos_conv.0, encoder.layers.i.self_attn ...)."""
    sd = model.state_dict()
    out = {}
    layer_norm_mode = cfg["extractor_mode"] == "layer_norm"
    for i, _ in enumerate(cfg["extractor_conv_layer_config"]):
        p = f"feature_extractor.conv_layers.{i}."
        out[p + "0.weight"] = sd[p + "conv.weight"]
        if cfg["extractor_conv_bias"]:
            out[p + "0.bias"] = sd[p + "conv.bias"]
        if layer_norm_mode:
            out[p + "2.1.weight"], out[p + "2.1.bias"] = sd[p + "layer_norm.weight"], sd[p + "layer_norm.bias"]
        elif i == 0:
            out[p + "2.weight"], out[p + "2.bias"] = sd[p + "layer_norm.weight"], sd[p + "layer_norm.bias"]
    out["layer_norm.weight"] = sd["encoder.feature_projection.layer_norm.weight"]
    out["layer_norm.bias"] = sd["encoder.feature_projection.layer_norm.bias"]
    out["post_extract_proj.weight"] = sd["encoder.feature_projection.projection.weight"]
    out["post_extract_proj.bias"] = sd["encoder.feature_projection.projection.bias"]
    g, v, b = _pos_gv(sd)
    out["encoder.pos_conv.0.weight_g"], out["encoder.pos_conv.0.weight_v"], out["encoder.pos_conv.0.bias"] = g, v, b
    out["encoder.layer_norm.weight"] = sd["encoder.transformer.layer_norm.weight"]
    out["encoder.layer_norm.bias"] = sd["encoder.transformer.layer_norm.bias"]
    for i in range(cfg["encoder_num_layers"]):
        t, f = f"encoder.transformer.layers.{i}.", f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            for w in ("weight", "bias"):
                out[f + f"self_attn.{proj}.{w}"] = sd[t + f"attention.{proj}.{w}"]
        for w in ("weight", "bias"):
            out[f + f"self_attn_layer_norm.{w}"] = sd[t + f"layer_norm.{w}"]
            out[f + f"fc1.{w}"] = sd[t + f"feed_forward.intermediate_dense.{w}"]
            out[f + f"fc2.{w}"] = sd[t + f"feed_forward.output_dense.{w}"]
            out[f + f"final_layer_norm.{w}"] = sd[t + f"final_layer_norm.{w}"]
    # pretraining heads a real checkpoint carries
    d = cfg["encoder_embed_dim"]
    out["mask_emb"] = torch.rand(d)
    out["label_embs_concat"] = torch.randn(504, 16)
    out["final_proj.weight"], out["final_proj.bias"] = torch.randn(16, d), torch.randn(16)
    return out


def fairseq_model_cfg(cfg) -> dict:
    conv = cfg["extractor_conv_layer_config"]
    spec = " + ".join(f"[({c}, {k}, {s})]" for c, k, s in conv)
    return {"_name": "hubert", "label_rate": 50.0, "extractor_mode": "layer_norm" if cfg["extractor_mode"] == "layer_norm"
            else "default", "encoder_layers": cfg["encoder_num_layers"], "encoder_embed_dim": cfg["encoder_embed_dim"],
            "encoder_ffn_embed_dim": cfg["encoder_ff_interm_features"],
            "encoder_attention_heads": cfg["encoder_num_heads"], "activation_fn": "gelu", "dropout": 0.1,
            "attention_dropout": 0.1, "conv_feature_layers": spec, "conv_bias": cfg["extractor_conv_bias"],
            "conv_pos": cfg["encoder_pos_conv_kernel"], "conv_pos_groups": cfg["encoder_pos_conv_groups"],
            "layer_norm_first": cfg["encoder_layer_norm_first"], "logit_temp": 0.1, "skip_masked": False}


class _FairseqModules:
    """Temporarily registers fake ``fairseq.data.dictionary.Dictionary`` so a pickle can name it; removed after."""

    def __enter__(self):
        self.saved = {k: sys.modules.get(k) for k in ("fairseq", "fairseq.data", "fairseq.data.dictionary")}
        fs, data, dic = (types.ModuleType(n) for n in ("fairseq", "fairseq.data", "fairseq.data.dictionary"))

        class Dictionary:
            def __init__(self):
                self.symbols, self.count, self.indices = ["<s>", "<pad>", "</s>", "<unk>", "12"], [1] * 5, {}

        Dictionary.__module__, Dictionary.__qualname__ = "fairseq.data.dictionary", "Dictionary"
        dic.Dictionary = Dictionary
        fs.data, data.dictionary = data, dic
        sys.modules.update({"fairseq": fs, "fairseq.data": data, "fairseq.data.dictionary": dic})
        self.Dictionary = Dictionary
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def save_fairseq(model, cfg, path: str, normalize: bool = False, style: str = "cfg", finetuned: bool = False,
                 extra=None) -> str:
    """A real-looking fairseq checkpoint: hydra ``cfg`` dict (or old ``args`` Namespace), ``model``,
    ``task_state`` holding a pickled fairseq Dictionary, optimizer history and numpy scalars."""
    sd = fairseq_state_dict(model, cfg)
    mcfg = fairseq_model_cfg(cfg)
    task = {"_name": "hubert_pretraining", "data": "/data", "labels": ["km"], "label_rate": 50.0,
            "sample_rate": 16000, "normalize": normalize, "max_sample_size": 250000}
    if finetuned:
        sd = {"w2v_encoder.w2v_model." + k: v for k, v in sd.items() if not k.startswith(("label_embs", "final_proj"))}
        sd["w2v_encoder.proj.weight"], sd["w2v_encoder.proj.bias"] = torch.randn(32, cfg["encoder_embed_dim"]), torch.randn(32)
        mcfg = {"_name": "hubert_ctc", "w2v_path": "/x/hubert.pt", "w2v_args": {"model": mcfg, "task": task}}
        task = {"_name": "audio_finetuning", "normalize": normalize}
    with _FairseqModules() as fm:
        ck = {"model": sd, "optimizer_history": [{"criterion_name": "HubertCriterion", "optimizer_name": "FairseqAdam",
                                                   "num_updates": 400000}],
              "extra_state": {"epoch": 3, "val_loss": np.float64(3.25), "best": np.array([1.5, 2.5])},
              "last_optimizer_state": None, "task_state": {"dictionaries": [fm.Dictionary()]}}
        if style == "cfg":
            ck["cfg"] = {"_name": None, "common": {"fp16": True, "seed": 1337}, "model": mcfg, "task": task}
            ck["args"] = None
        else:
            flat = dict(mcfg)
            flat.pop("_name", None)
            ck["args"] = argparse.Namespace(arch="hubert", task="hubert_pretraining", normalize=normalize, **flat)
        if extra:
            ck.update(extra)
        torch.save(ck, path)
    assert "fairseq" not in sys.modules
    return path


def hf_state_dict(model, cfg, new_weight_norm: bool = False) -> Dict[str, torch.Tensor]:
    """transformers HubertModel names."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("feature_extractor."):
            out[k] = v
        elif k.startswith("encoder.feature_projection."):
            out[k[len("encoder."):]] = v
        elif k.startswith("encoder.transformer.pos_conv_embed."):
            continue
        elif k.startswith("encoder.transformer."):
            out["encoder." + k[len("encoder.transformer."):]] = v
        else:
            raise AssertionError(k)
    g, v, b = _pos_gv(model.state_dict())
    if new_weight_norm:
        out["encoder.pos_conv_embed.conv.parametrizations.weight.original0"] = g
        out["encoder.pos_conv_embed.conv.parametrizations.weight.original1"] = v
    else:
        out["encoder.pos_conv_embed.conv.weight_g"], out["encoder.pos_conv_embed.conv.weight_v"] = g, v
    out["encoder.pos_conv_embed.conv.bias"] = b
    out["masked_spec_embed"] = torch.rand(cfg["encoder_embed_dim"])
    return out


def hf_config(cfg) -> dict:
    conv = cfg["extractor_conv_layer_config"]
    return {"architectures": ["HubertModel"], "model_type": "hubert", "conv_dim": [c for c, _, _ in conv],
            "conv_kernel": [k for _, k, _ in conv], "conv_stride": [s for _, _, s in conv],
            "conv_bias": cfg["extractor_conv_bias"], "feat_extract_norm": cfg["extractor_mode"].split("_")[0],
            "feat_extract_activation": "gelu", "feat_proj_layer_norm": True, "hidden_act": "gelu",
            "hidden_size": cfg["encoder_embed_dim"], "intermediate_size": cfg["encoder_ff_interm_features"],
            "num_attention_heads": cfg["encoder_num_heads"], "num_hidden_layers": cfg["encoder_num_layers"],
            "num_conv_pos_embeddings": cfg["encoder_pos_conv_kernel"],
            "num_conv_pos_embedding_groups": cfg["encoder_pos_conv_groups"],
            "do_stable_layer_norm": cfg["encoder_layer_norm_first"], "layer_norm_eps": 1e-5,
            "torch_dtype": "float32", "transformers_version": "4.40.0"}


def write_safetensors(sd: Dict[str, torch.Tensor], path: str) -> None:
    """Minimal safetensors writer (8-byte header length, JSON header, raw little-endian data)."""
    names = {torch.float32: "F32", torch.float16: "F16", torch.int64: "I64"}
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for k, v in sd.items():
        b = v.contiguous().cpu().numpy().tobytes()
        header[k] = {"dtype": names[v.dtype], "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))


def save_hf(model, cfg, d: str, safetensors: bool = False, new_weight_norm: bool = False, prefix: str = "",
            do_normalize=None) -> str:
    os.makedirs(d, exist_ok=True)
    sd = {prefix + k: v for k, v in hf_state_dict(model, cfg, new_weight_norm).items()}
    if prefix:
        sd["lm_head.weight"], sd["lm_head.bias"] = torch.randn(32, cfg["encoder_embed_dim"]), torch.randn(32)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(hf_config(cfg), f)
    if do_normalize is not None:
        with open(os.path.join(d, "preprocessor_config.json"), "w") as f:
            json.dump({"do_normalize": do_normalize, "sampling_rate": 16000, "feature_size": 1}, f)
    if safetensors:
        write_safetensors(sd, os.path.join(d, "model.safetensors"))
    else:
        torch.save(sd, os.path.join(d, "pytorch_model.bin"))
    return d


def save_torchaudio(model, path: str) -> str:
    torch.save(model.state_dict(), path)
    return path
