"""HuBERT weights from a fairseq checkpoint (``hubert_base_ls960.pt``, ``hubert_large_ll60k.pt``, fine-tuned
``hubert_large_ll60k_finetune_ls960.pt`` ...) without fairseq.

The file is read by the restricted unpickler of :mod:`stok.models.hubert.safe_unpickle` (see its docstring:
tensors and plain data are rebuilt, every other pickled class such as fairseq's ``Dictionary`` becomes an
inert record; nothing is imported or executed). From the checkpoint dict we use:

- ``model``: the state dict, renamed from fairseq's ``HubertModel`` names to torchaudio's ``Wav2Vec2Model``
  names (:func:`fairseq_to_torchaudio`); the pretraining heads (``mask_emb``, ``label_embs_concat``,
  ``final_proj``) and a fine-tuned model's CTC projection are dropped; any other unknown tensor is an error.
- ``cfg`` (hydra-era files: a dict, or an OmegaConf container) or ``args`` (older files: an
  ``argparse.Namespace``): ``cfg.model`` / ``args`` give the architecture (``encoder_attention_heads`` and
  ``layer_norm_first`` matter: shapes cannot tell them), and ``cfg.task.normalize`` / ``args.normalize``
  whether the waveform is normalised to zero mean and unit variance before the model (fairseq's
  ``dump_hubert_feature.py`` does ``F.layer_norm(wav, wav.shape)`` then). A fine-tuned checkpoint's
  ``cfg.model.w2v_args`` holds the pretrained model's config.
"""

from __future__ import annotations

import ast
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from stok.models.hubert.configs import ConfigError
from stok.models.hubert.safe_unpickle import load_checkpoint, plain

_RULES: List[Tuple[re.Pattern, Optional[str]]] = [(re.compile(p), r) for p, r in [
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)$", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"^feature_extractor\.conv_layers\.0\.2\.(weight|bias)$", r"feature_extractor.conv_layers.0.layer_norm.\1"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)$", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"^layer_norm\.(weight|bias)$", r"encoder.feature_projection.layer_norm.\1"),
    (r"^post_extract_proj\.(weight|bias)$", r"encoder.feature_projection.projection.\1"),
    (r"^encoder\.pos_conv\.0\.(.+)$", r"encoder.transformer.pos_conv_embed.conv.\1"),
    (r"^encoder\.layer_norm\.(weight|bias)$", r"encoder.transformer.layer_norm.\1"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)$",
     r"encoder.transformer.layers.\1.attention.\2_proj.\3"),
    (r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)$", r"encoder.transformer.layers.\1.layer_norm.\2"),
    (r"^encoder\.layers\.(\d+)\.fc1\.(weight|bias)$", r"encoder.transformer.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"^encoder\.layers\.(\d+)\.fc2\.(weight|bias)$", r"encoder.transformer.layers.\1.feed_forward.output_dense.\2"),
    (r"^encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)$", r"encoder.transformer.layers.\1.final_layer_norm.\2"),
    # pretraining heads and a fine-tuned model's output layer: not part of the features
    (r"^(mask_emb|label_embs_concat|final_proj\..*|final_proj_list\..*|untie_final_proj.*|proj\.(weight|bias))$", None),
]]
_PREFIXES = ("w2v_encoder.w2v_model.", "w2v_model.", "module.")


def fairseq_to_torchaudio(sd: Mapping[str, torch.Tensor], where: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """fairseq ``HubertModel`` names -> torchaudio ``Wav2Vec2Model`` names; unknown names are an error."""
    out, unknown = {}, []
    for key, value in sd.items():
        k = key
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        if k.startswith("w2v_encoder."):  # fine-tuning head (w2v_encoder.proj)
            continue
        for rx, rep in _RULES:
            if rx.match(k):
                if rep is not None:
                    out[rx.sub(rep, k)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ConfigError(f"{where}: tensors with names that are not fairseq HuBERT's: {unknown[:8]}"
                          f"{' ...' if len(unknown) > 8 else ''}")
    return out


def parse_conv_layers(spec: Any) -> Optional[List[Tuple[int, int, int]]]:
    """fairseq's ``conv_feature_layers`` string, e.g. ``"[(512,10,5)] + [(512,3,2)] * 4"``, without ``eval``."""
    if spec is None:
        return None
    if isinstance(spec, (list, tuple)):
        return [tuple(int(x) for x in t) for t in spec]

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            vals = [ev(e) for e in node.elts]
            return vals if isinstance(node, ast.List) else tuple(vals)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            a, b = ev(node.left), ev(node.right)
            return a + b if isinstance(node.op, ast.Add) else a * b
        raise ConfigError(f"conv_feature_layers: unsupported expression {ast.dump(node)[:80]}")

    value = ev(ast.parse(str(spec), mode="eval"))
    return [tuple(int(x) for x in t) for t in value]


def config_from_fairseq(ck: Mapping) -> Tuple[dict, Optional[bool], dict]:
    """(known wav2vec2_model fields, waveform normalisation or None, the plain model config) of a checkpoint."""
    model_cfg: Dict[str, Any] = {}
    task_cfg: Dict[str, Any] = {}
    cfg = plain(ck.get("cfg")) if ck.get("cfg") is not None else None
    args = plain(ck.get("args")) if ck.get("args") is not None else None
    if isinstance(cfg, dict):
        model_cfg = dict(cfg.get("model") or {})
        task_cfg = dict(cfg.get("task") or {})
    elif isinstance(args, dict):
        model_cfg, task_cfg = dict(args), dict(args)
    w2v = model_cfg.get("w2v_args")  # fine-tuned: the pretrained model's own config
    if isinstance(w2v, dict) and w2v:
        model_cfg = dict(w2v.get("model") or w2v)
        task_cfg = dict(w2v.get("task") or task_cfg)

    def get(*names):
        for n in names:
            if model_cfg.get(n) is not None:
                return model_cfg[n]
        return None

    mode = get("extractor_mode")
    known = {
        "extractor_mode": {"default": "group_norm", "group_norm": "group_norm", "layer_norm": "layer_norm"}.get(mode)
        if mode is not None else None,
        "extractor_conv_layer_config": parse_conv_layers(get("conv_feature_layers")),
        "extractor_conv_bias": get("conv_bias"),
        "encoder_embed_dim": get("encoder_embed_dim"),
        "encoder_num_layers": get("encoder_layers"),
        "encoder_num_heads": get("encoder_attention_heads"),
        "encoder_ff_interm_features": get("encoder_ffn_embed_dim"),
        "encoder_pos_conv_kernel": get("conv_pos"),
        "encoder_pos_conv_groups": get("conv_pos_groups"),
        "encoder_layer_norm_first": get("layer_norm_first"),
    }
    if mode is not None and known["extractor_mode"] is None:
        raise ConfigError(f"unknown fairseq extractor_mode {mode!r}")
    normalize = task_cfg.get("normalize")
    return {k: v for k, v in known.items() if v is not None}, (bool(normalize) if normalize is not None else None), model_cfg


def load_fairseq(path: str, preset: Optional[str] = None):
    """A :class:`~stok.models.hubert.LoadedHubert` from a fairseq checkpoint file."""
    ck, stubbed = load_checkpoint(path)
    return from_fairseq_dict(ck, path, preset, stubbed)


def is_fairseq_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping) and ("cfg" in obj or "args" in obj)


def from_fairseq_dict(ck: Mapping, where: str, preset: Optional[str] = None, stubbed=()):
    from stok.models.hubert import LoadedHubert
    from stok.models.hubert.configs import infer_config, load_into

    if not is_fairseq_dict(ck):
        raise ConfigError(f"{where}: not a fairseq checkpoint (expected a dict with 'model' and 'cfg' or 'args')")
    name = None
    cfg_obj = plain(ck.get("cfg")) if ck.get("cfg") is not None else plain(ck.get("args"))
    if isinstance(cfg_obj, dict):
        name = (cfg_obj.get("model") or {}).get("_name") if isinstance(cfg_obj.get("model"), dict) else cfg_obj.get("arch")
    known, normalize, _ = config_from_fairseq(ck)
    sd = fairseq_to_torchaudio(ck["model"], where)
    cfg = infer_config(sd, known, preset, where)
    model = load_into(cfg, sd, where)
    notes = {"fairseq_model": name, "stubbed_globals": sorted(stubbed)}
    return LoadedHubert(model, cfg, normalize, source=where, fmt="fairseq", notes=notes)
