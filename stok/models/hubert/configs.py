"""HuBERT architectures (base, large, xlarge) as ``torchaudio.models.wav2vec2_model`` arguments, and the
inference of an architecture from a state dict.

A config is a plain dict of :func:`torchaudio.models.wav2vec2_model` keyword arguments (dropouts 0: the
teacher only runs in eval mode). The three presets are those of the released fairseq checkpoints
(``hubert_base_ls960.pt``, ``hubert_large_ll60k.pt``, ``hubert_xlarge_ll60k.pt``), the same values as
``torchaudio.models.hubert_base/large/xlarge``.

Most of an architecture can be read off the weights' shapes (:func:`infer_config`); two fields cannot:
the number of attention heads and whether the transformer is pre- or post-layer-norm
(``encoder_layer_norm_first``). Those come from the checkpoint's own config when it has one (fairseq
``cfg``/``args``, Hugging Face ``config.json``), otherwise from the preset named by ``--hubert_config``,
otherwise from the preset whose width matches (768 -> base, 1024 -> large, 1280 -> xlarge).
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torchaudio

from stok.core.errors import UserError

log = logging.getLogger("stok.hubert")
#: fairseq's default ``conv_feature_layers``: (channels, kernel, stride); total stride 320, receptive field 400
DEFAULT_CONV: List[Tuple[int, int, int]] = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2

_COMMON = dict(extractor_conv_layer_config=DEFAULT_CONV, extractor_conv_bias=False,
               encoder_projection_dropout=0.0, encoder_pos_conv_kernel=128, encoder_pos_conv_groups=16,
               encoder_attention_dropout=0.0, encoder_ff_interm_dropout=0.0, encoder_dropout=0.0,
               encoder_layer_drop=0.0, aux_num_out=None)

CONFIGS: Dict[str, dict] = {
    "base": dict(_COMMON, extractor_mode="group_norm", encoder_embed_dim=768, encoder_num_layers=12,
                 encoder_num_heads=12, encoder_ff_interm_features=3072, encoder_layer_norm_first=False),
    "large": dict(_COMMON, extractor_mode="layer_norm", encoder_embed_dim=1024, encoder_num_layers=24,
                  encoder_num_heads=16, encoder_ff_interm_features=4096, encoder_layer_norm_first=True),
    "xlarge": dict(_COMMON, extractor_mode="layer_norm", encoder_embed_dim=1280, encoder_num_layers=48,
                   encoder_num_heads=16, encoder_ff_interm_features=5120, encoder_layer_norm_first=True),
}
#: whether the released models of each size expect the waveform normalised to zero mean, unit variance
#: (fairseq ``task.normalize``; torchaudio bundles' ``_normalize_waveform``): large and xlarge do, base does not
NORMALIZE = {"base": False, "large": True, "xlarge": True}
CONFIG_NAMES = tuple(CONFIGS)


class ConfigError(UserError, ValueError):
    """A checkpoint that cannot be used as given (unreadable, incomplete, or not matching its config); the
    message names the file and what to do, and the tools print it as one line."""


def get_config(name: str, **overrides) -> dict:
    """A copy of a preset (``base``, ``large``, ``xlarge``) with ``overrides`` applied."""
    if name not in CONFIGS:
        raise ConfigError(f"unknown HuBERT config {name!r}; choose from {', '.join(CONFIGS)}")
    cfg = copy.deepcopy(CONFIGS[name])
    cfg.update(overrides)
    return cfg


def tiny_config(name: str = "base", **overrides) -> dict:
    """A small model with the structure of preset ``name`` (tests and demos; random weights)."""
    small = dict(extractor_conv_layer_config=[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2,
                 encoder_embed_dim=128, encoder_num_layers=3, encoder_num_heads=2, encoder_ff_interm_features=192,
                 encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4)
    small.update(overrides)
    return get_config(name, **small)


def build_model(cfg: Mapping) -> torch.nn.Module:
    """``torchaudio.models.wav2vec2_model(**cfg)`` in eval mode."""
    model = torchaudio.models.wav2vec2_model(**dict(cfg))
    return model.eval()


def describe_config(cfg: Mapping) -> str:
    return (f"{cfg['encoder_num_layers']} layers x {cfg['encoder_embed_dim']} dims, {cfg['encoder_num_heads']} heads, "
            f"{cfg['extractor_mode']} front end, {'pre' if cfg['encoder_layer_norm_first'] else 'post'}-LN")


def preset_for_width(embed_dim: int) -> Optional[str]:
    for name, cfg in CONFIGS.items():
        if cfg["encoder_embed_dim"] == embed_dim:
            return name
    return None


# ----------------------------------------------------------------------------------------------------
# state dicts in torchaudio names

TA_POS_CONV = "encoder.transformer.pos_conv_embed.conv."
POS_G_NEW, POS_V_NEW = TA_POS_CONV + "parametrizations.weight.original0", TA_POS_CONV + "parametrizations.weight.original1"
POS_G_OLD, POS_V_OLD = TA_POS_CONV + "weight_g", TA_POS_CONV + "weight_v"


def normalize_weight_norm_keys(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Positional-conv weight norm keys in the form the installed torchaudio uses (``parametrizations`` or old
    ``weight_g``/``weight_v``); a plain ``weight`` (weight norm already folded in) is split back into g and v."""
    out = dict(sd)
    probe = build_model_probe()
    want_new = POS_G_NEW in probe
    g = out.pop(POS_G_NEW, None) if POS_G_NEW in out else out.pop(POS_G_OLD, None)
    v = out.pop(POS_V_NEW, None) if POS_V_NEW in out else out.pop(POS_V_OLD, None)
    if g is None and v is None and TA_POS_CONV + "weight" in out:
        w = out.pop(TA_POS_CONV + "weight")  # weight norm over dim 2: g has shape [1, 1, K]
        g = torch.linalg.vector_norm(w, dim=(0, 1), keepdim=True)
        v = w
    if g is not None and v is not None:
        out[POS_G_NEW if want_new else POS_G_OLD] = g
        out[POS_V_NEW if want_new else POS_V_OLD] = v
    return out


_PROBE_KEYS: Optional[set] = None


def build_model_probe() -> set:
    """State-dict key names of the installed torchaudio's Wav2Vec2Model (cached; built once, tiny)."""
    global _PROBE_KEYS
    if _PROBE_KEYS is None:
        _PROBE_KEYS = set(build_model(tiny_config("base", encoder_num_layers=1)).state_dict())
    return _PROBE_KEYS


def _count(sd: Mapping, pattern: str) -> int:
    rx = re.compile(pattern)
    idx = {int(m.group(1)) for k in sd for m in [rx.match(k)] if m}
    if idx and idx != set(range(max(idx) + 1)):
        raise ConfigError(f"state dict has a gap in {pattern}: {sorted(idx)}")
    return len(idx)


_LAYER_KEY = re.compile(r"^encoder\.transformer\.layers\.(\d+)\.")


def _layer_indices(sd: Mapping) -> set:
    return {int(m.group(1)) for k in sd for m in [_LAYER_KEY.match(k)] if m}


def _check_layers(sd: Mapping, present: set, expected: Optional[int], source: str, where: str,
                  wrapped_hint: bool = False) -> None:
    """Raise :class:`ConfigError` naming the missing (or extra) transformer-layer tensors: a file missing its
    last layer must not load as a shallower model."""
    want = set(range(expected)) if expected is not None else set(range(max(present) + 1))
    missing, extra = sorted(want - present), sorted(present - want)
    hint = (" (a model that really has other layers needs its config saved with it: "
            "torch.save({'config': <wav2vec2_model kwargs>, 'state_dict': ...}))") if wrapped_hint else ""
    if missing:
        ref = f"encoder.transformer.layers.{min(present)}."
        template = sorted(k[len(ref):] for k in sd if k.startswith(ref))
        keys = [f"encoder.transformer.layers.{i}.{t}" for i in missing for t in template]
        says = f"{source} has {expected} layers" if expected is not None else f"layer {max(present)} is there"
        raise ConfigError(f"{where}: transformer layer(s) {', '.join(map(str, missing))} (0-based) missing, {says}: "
                          f"{len(keys)} tensors such as {', '.join(keys[:3])} (torchaudio names); the file is "
                          f"incomplete or badly converted: get it again{hint}")
    if extra:
        keys = sorted(k for k in sd if _LAYER_KEY.match(k) and int(_LAYER_KEY.match(k).group(1)) in extra)
        raise ConfigError(f"{where}: transformer layer(s) {', '.join(map(str, extra))} (0-based) beyond the "
                          f"{expected} {source} has: unexpected tensors such as {', '.join(keys[:3])}; "
                          f"the weights do not belong to this config{hint}")


def infer_config(sd: Mapping[str, torch.Tensor], known: Optional[Mapping] = None,
                 preset: Optional[str] = None, where: str = "checkpoint") -> dict:
    """The full config of a state dict in torchaudio names.

    ``known``: fields from the checkpoint's own config (they win for what shapes cannot tell and are checked
    against the shapes for the rest); ``preset``: ``--hubert_config`` (base/large/xlarge) for the fields
    neither gives. Raises :class:`ConfigError` on contradictions.
    """
    known = dict(known or {})
    n_conv = _count(sd, r"feature_extractor\.conv_layers\.(\d+)\.conv\.weight$")
    if not n_conv or "encoder.feature_projection.projection.weight" not in sd:
        raise ConfigError(f"{where}: no HuBERT weights found (no feature_extractor.conv_layers / feature projection)")
    shapes = [tuple(sd[f"feature_extractor.conv_layers.{i}.conv.weight"].shape) for i in range(n_conv)]
    conv_bias = "feature_extractor.conv_layers.0.conv.bias" in sd
    if "feature_extractor.conv_layers.1.layer_norm.weight" in sd:
        mode = "layer_norm"
    elif "feature_extractor.conv_layers.0.layer_norm.weight" in sd:
        mode = "group_norm"
    else:
        raise ConfigError(f"{where}: the conv front end has no normalisation weights; not a HuBERT/wav2vec2 model")
    embed, in_feat = sd["encoder.feature_projection.projection.weight"].shape
    layers = _layer_indices(sd)
    if not layers:
        raise ConfigError(f"{where}: no transformer layers found")
    v = sd.get(POS_V_NEW, sd.get(POS_V_OLD, sd.get(TA_POS_CONV + "weight")))
    if v is None:
        raise ConfigError(f"{where}: no positional convolution weights found")
    pos_groups, pos_kernel = embed // v.shape[1], v.shape[2]

    name = preset or preset_for_width(int(embed))
    base = CONFIGS.get(name) if name else None
    if preset and base["encoder_embed_dim"] != embed:
        raise ConfigError(f"{where}: --hubert_config {preset} is {base['encoder_embed_dim']} wide, "
                          f"but the weights are {embed} wide; use --hubert_config {preset_for_width(int(embed)) or 'auto'}")

    if known.get("encoder_num_layers") is not None:
        _check_layers(sd, layers, int(known["encoder_num_layers"]), "its own config", where)
    elif base is not None:
        _check_layers(sd, layers, base["encoder_num_layers"], f"HuBERT {name} (the preset {embed} wide)", where,
                      wrapped_hint=True)
    else:
        _check_layers(sd, layers, None, "", where)
    n_layers = max(layers) + 1
    ffn_key = f"encoder.transformer.layers.{min(layers)}.feed_forward.intermediate_dense.weight"
    if ffn_key not in sd:
        raise ConfigError(f"{where}: tensor {ffn_key} (torchaudio name) is missing; the file is incomplete or badly "
                          "converted: get it again")
    ffn = sd[ffn_key].shape[0]

    # conv strides cannot be read from shapes: the checkpoint's config, else fairseq's default if kernels match
    conv = known.get("extractor_conv_layer_config")
    if conv is None:
        if len(shapes) == len(DEFAULT_CONV) and all(s[2] == d[1] for s, d in zip(shapes, DEFAULT_CONV)):
            conv = [(s[0], d[1], d[2]) for s, d in zip(shapes, DEFAULT_CONV)]
        else:
            raise ConfigError(f"{where}: non-standard conv front end {shapes} and no config giving its strides")
    conv = [tuple(int(x) for x in c) for c in conv]
    if [(c[0], c[1]) for c in conv] != [(s[0], s[2]) for s in shapes]:
        raise ConfigError(f"{where}: config conv layers {conv} do not match the weights {shapes}")

    # heads and pre/post-LN: the checkpoint's config, else the preset, else HuBERT/wav2vec2's conventions
    # (64-dim heads; a layer-norm front end goes with a pre-LN transformer, a group-norm one with post-LN)
    guessed = []
    if known.get("encoder_num_heads") is not None:
        heads = int(known["encoder_num_heads"])
    elif base is not None:
        heads = base["encoder_num_heads"]
    else:
        heads = max(1, int(embed) // 64)
        guessed.append(f"{heads} heads")
    if embed % heads:
        raise ConfigError(f"{where}: {heads} heads do not divide width {embed}")
    if known.get("encoder_layer_norm_first") is not None:
        layer_norm_first = bool(known["encoder_layer_norm_first"])
    elif base is not None:
        layer_norm_first = base["encoder_layer_norm_first"]
    else:
        layer_norm_first = mode == "layer_norm"
        guessed.append("pre-LN" if layer_norm_first else "post-LN")
    if guessed:
        log.warning("%s: a %d-wide model matches no preset and does not give its architecture; assuming %s "
                    "(HuBERT conventions)", where, int(embed), " and ".join(guessed))
    cfg = dict(_COMMON, extractor_mode=mode, extractor_conv_layer_config=conv, extractor_conv_bias=conv_bias,
               encoder_embed_dim=int(embed), encoder_num_layers=n_layers, encoder_num_heads=heads,
               encoder_ff_interm_features=int(ffn), encoder_pos_conv_kernel=int(pos_kernel),
               encoder_pos_conv_groups=int(pos_groups), encoder_layer_norm_first=bool(layer_norm_first))
    # shape-derived fields must agree with a config given by the checkpoint
    for key in ("extractor_mode", "extractor_conv_bias", "encoder_embed_dim", "encoder_num_layers",
                "encoder_ff_interm_features", "encoder_pos_conv_kernel", "encoder_pos_conv_groups"):
        if known.get(key) is not None and known[key] != cfg[key]:
            raise ConfigError(f"{where}: its config says {key}={known[key]!r} but the weights give {cfg[key]!r}")
    return cfg


def default_normalize(cfg: Mapping) -> bool:
    """Waveform normalisation when the checkpoint does not say: large-style models (layer-norm front end) expect it."""
    return cfg["extractor_mode"] == "layer_norm"


def load_into(cfg: Mapping, sd: Dict[str, torch.Tensor], where: str = "checkpoint") -> torch.nn.Module:
    """Build ``cfg`` and load ``sd`` (torchaudio names) strictly: a missing or unexpected tensor is an error."""
    model = build_model(cfg)
    sd = normalize_weight_norm_keys(sd)
    want = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (the model wants {tuple(want[k].shape)})" for k, v in sd.items()
             if k in want and tuple(v.shape) != tuple(want[k].shape)]
    if wrong:
        raise ConfigError(f"{where}: tensors of the wrong shape for the model ({describe_config(cfg)}): "
                          f"{'; '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''}")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{where}: weights do not fit the model ({describe_config(cfg)}): "
                          f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                          f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    return model.eval()
