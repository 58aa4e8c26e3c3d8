"""HuBERT weights from a Hugging Face model directory (``transformers``' ``HubertModel`` layout).

The directory holds ``config.json`` and the weights as ``pytorch_model.bin`` (a plain state dict, read with
``torch.load(weights_only=True)``) or ``model.safetensors`` (read with the ``safetensors`` package when it is
installed, otherwise with the small reader below: the format is an 8-byte header length, a JSON header of
``name -> dtype, shape, byte range``, then the raw little-endian data). Sharded weights (``*.index.json``) are
read shard by shard. ``transformers`` is not needed.

``config.json`` gives the architecture (``feat_extract_norm`` group/layer, ``conv_dim/kernel/stride``,
``conv_bias``, ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``,
``num_conv_pos_embeddings``, ``num_conv_pos_embedding_groups``, ``do_stable_layer_norm``); an optional
``preprocessor_config.json`` gives ``do_normalize`` (waveform normalisation). Names are mapped from
``HubertModel``'s (``feature_projection.*``, ``encoder.layers.N.*``; a ``hubert.`` prefix of task models such
as ``HubertForCTC`` is stripped and their heads dropped) to torchaudio's ``Wav2Vec2Model``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Dict, Mapping, Optional

import numpy as np
import torch

from stok.models.hubert.configs import ConfigError
from stok.models.hubert.file_checks import read_json

_HEADS = re.compile(r"^(lm_head|projector|classifier|layer_weights|masked_spec_embed|dropout)(\.|$)")

_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def read_safetensors(path: str) -> Dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file (the ``safetensors`` package if installed, else a built-in reader)."""
    from stok.models.hubert.file_checks import check_safetensors, read_torch_file

    check_safetensors(path)  # a cut or damaged file: one line naming it, before any tensor is read
    try:
        from safetensors.torch import load_file
    except ImportError:
        load_file = None
    if load_file is not None:
        return read_torch_file(path, lambda p: load_file(p, device="cpu"), "safetensors file")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 0 or n > 100_000_000:
            raise ConfigError(f"{path}: not a safetensors file (header length {n})")
        header = json.loads(f.read(n))
        data = bytearray(f.read())
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ConfigError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        count = int(np.prod(shape)) if shape else 1
        t = torch.frombuffer(data, dtype=dtype, count=count, offset=begin) if count else torch.empty(0, dtype=dtype)
        if count * t.element_size() != end - begin:
            raise ConfigError(f"{path}: tensor {name} byte range does not match its shape")
        out[name] = t.reshape(shape).clone()
    return out


def _read_weights(d: str) -> Dict[str, torch.Tensor]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        p = os.path.join(d, index)
        if os.path.isfile(p):
            weight_map = read_json(p, "weights index").get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ConfigError(f"{p}: no 'weight_map' naming the weight shards; restore it from the model's download")
            files = sorted(set(map(str, weight_map.values())))
            sd: Dict[str, torch.Tensor] = {}
            for name in files:
                fp = os.path.join(d, name)
                if not os.path.isfile(fp):
                    raise ConfigError(f"{fp}: weight shard listed in {p} not found; download it too")
                sd.update(read_safetensors(fp) if name.endswith(".safetensors") else _read_bin(fp))
            return sd
    st, pt = os.path.join(d, "model.safetensors"), os.path.join(d, "pytorch_model.bin")
    if os.path.isfile(st):
        return read_safetensors(st)
    if os.path.isfile(pt):
        return _read_bin(pt)
    raise ConfigError(f"{d}: no model.safetensors or pytorch_model.bin; a Hugging Face model directory holds "
                      "config.json and the weights")


def _read_bin(path: str) -> Dict[str, torch.Tensor]:
    """A ``pytorch_model.bin`` (plain state dict, ``weights_only``); a damaged file is one line naming it."""
    from stok.models.hubert.file_checks import read_torch_file

    sd = read_torch_file(path, lambda p: torch.load(p, map_location="cpu", weights_only=True))
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise ConfigError(f"{path}: not a state dict of tensors ({type(sd).__name__})")
    return sd


def hf_to_torchaudio(sd: Mapping[str, torch.Tensor], where: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """``HubertModel`` names -> torchaudio ``Wav2Vec2Model`` names; unknown names are an error."""
    prefixed = any(k.startswith("hubert.") for k in sd)
    out, unknown = {}, []
    for key, value in sd.items():
        k = key
        if prefixed:
            if not k.startswith("hubert."):
                continue  # task head of HubertForCTC & co.
            k = k[len("hubert."):]
        if _HEADS.match(k):
            continue
        if k.startswith("feature_extractor.conv_layers."):
            out[k] = value
        elif k.startswith("feature_projection.") and k.split(".")[1] in ("layer_norm", "projection"):
            out["encoder." + k] = value
        elif k.startswith("encoder."):
            out["encoder.transformer." + k[len("encoder."):]] = value
        else:
            unknown.append(key)
    if unknown:
        raise ConfigError(f"{where}: tensors with names that are not Hugging Face HubertModel's: {unknown[:8]}")
    return out


def config_from_hf(cfg: Mapping, where: str) -> dict:
    mt = cfg.get("model_type", "hubert")
    if mt not in ("hubert", "wav2vec2"):
        raise ConfigError(f"{where}: model_type {mt!r} is not hubert")
    if cfg.get("feat_extract_norm", "group") not in ("group", "layer"):
        raise ConfigError(f"{where}: feat_extract_norm {cfg.get('feat_extract_norm')!r} is not group or layer")
    if mt == "hubert" and cfg.get("feat_proj_layer_norm", True) is False:
        raise ConfigError(f"{where}: feat_proj_layer_norm false is not a released HuBERT layout (unsupported)")
    if cfg.get("conv_pos_batch_norm"):
        raise ConfigError(f"{where}: conv_pos_batch_norm is not supported")
    for key in ("hidden_act", "feat_extract_activation"):
        if cfg.get(key, "gelu") != "gelu":
            raise ConfigError(f"{where}: {key} {cfg.get(key)!r} is not gelu")
    known = {
        "extractor_mode": f"{cfg.get('feat_extract_norm', 'group')}_norm",
        "extractor_conv_bias": cfg.get("conv_bias"),
        "encoder_embed_dim": cfg.get("hidden_size"),
        "encoder_num_layers": cfg.get("num_hidden_layers"),
        "encoder_num_heads": cfg.get("num_attention_heads"),
        "encoder_ff_interm_features": cfg.get("intermediate_size"),
        "encoder_pos_conv_kernel": cfg.get("num_conv_pos_embeddings"),
        "encoder_pos_conv_groups": cfg.get("num_conv_pos_embedding_groups"),
        "encoder_layer_norm_first": cfg.get("do_stable_layer_norm"),
    }
    if all(k in cfg for k in ("conv_dim", "conv_kernel", "conv_stride")):
        known["extractor_conv_layer_config"] = list(zip(cfg["conv_dim"], cfg["conv_kernel"], cfg["conv_stride"]))
    return {k: v for k, v in known.items() if v is not None}


def load_hf(path: str, preset: Optional[str] = None):
    """A :class:`~stok.models.hubert.LoadedHubert` from a Hugging Face model directory."""
    from stok.models.hubert import LoadedHubert
    from stok.models.hubert.configs import infer_config, load_into

    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise ConfigError(f"{path}: no config.json; a Hugging Face model directory holds config.json and the weights")
    hf_cfg = read_json(cfg_path, "model config")
    known = config_from_hf(hf_cfg, cfg_path)
    normalize = None
    pp = os.path.join(path, "preprocessor_config.json")
    if os.path.isfile(pp):
        normalize = read_json(pp, "preprocessor config").get("do_normalize")
    sd = hf_to_torchaudio(_read_weights(path), path)
    cfg = infer_config(sd, known, preset, path)
    model = load_into(cfg, sd, path)
    return LoadedHubert(model, cfg, None if normalize is None else bool(normalize), path, "hf",
                        {"architectures": hf_cfg.get("architectures")})
