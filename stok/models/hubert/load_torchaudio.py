"""HuBERT weights as torchaudio state dicts, and torchaudio's pipeline bundles by name.

- A **state dict** file (``torch.save(model.state_dict())`` of a ``torchaudio.models.Wav2Vec2Model``, or of a
  ``HuBERTPretrainModel`` whose keys start with ``wav2vec2.``), read with ``torch.load(weights_only=True)``
  semantics. A dict ``{"config": <wav2vec2_model kwargs>, "state_dict": ...}`` is accepted too. The
  architecture is inferred from the shapes; heads and pre/post layer norm come from ``--hubert_config``
  or the preset of the same width (see :mod:`stok.models.hubert.configs`).
- A **bundle** (``HUBERT_BASE``, ``HUBERT_LARGE``, ``HUBERT_XLARGE``, ``HUBERT_ASR_LARGE`` ...): the weights are
  downloaded by torchaudio on first use (needs network; cached by ``torch.hub``), waveform normalisation
  follows the bundle.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from stok.models.hubert.configs import ConfigError

_DROP = ("mask_generator.", "logit_generator.", "aux.")


def unwrap_state_dict(obj: Any, where: str) -> Tuple[Dict[str, torch.Tensor], Optional[dict]]:
    """(state dict, optional config) from what a weights file holds."""
    cfg = None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        cfg = obj.get("config") if isinstance(obj.get("config"), Mapping) else None
        obj = obj["state_dict"]
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping) and not any(
            torch.is_tensor(v) for v in obj.values()):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise ConfigError(f"{where}: not a state dict of tensors (nor a fairseq checkpoint)")
    return dict(obj), (dict(cfg) if cfg else None)


def torchaudio_names(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if k.startswith("wav2vec2."):
            k = k[len("wav2vec2."):]
        elif k.startswith(_DROP):
            continue
        if k.startswith(_DROP):
            continue
        out[k] = v
    return out


def from_state_dict(sd: Mapping[str, torch.Tensor], where: str, preset: Optional[str] = None,
                    config: Optional[Mapping] = None):
    from stok.models.hubert import LoadedHubert
    from stok.models.hubert.configs import infer_config, load_into

    ta = torchaudio_names(sd)
    known = None
    if config:
        known = {k: v for k, v in config.items() if k.startswith(("extractor_", "encoder_"))}
    cfg = infer_config(ta, known, preset, where)
    return LoadedHubert(load_into(cfg, ta, where), cfg, None, where, "torchaudio")


def load_torchaudio(path: str, preset: Optional[str] = None):
    from stok.models.hubert.file_checks import read_torch_file

    obj = read_torch_file(path, lambda p: torch.load(p, map_location="cpu", weights_only=True))
    sd, cfg = unwrap_state_dict(obj, path)
    return from_state_dict(sd, path, preset, cfg)


def load_bundle(name: str, dl_kwargs: Optional[dict] = None):
    """A torchaudio pipeline bundle by name (``HUBERT_BASE`` ...); downloads the weights on first use."""
    import torchaudio
    from stok.models.hubert import LoadedHubert
    from stok.models.hubert.configs import infer_config

    bundle = getattr(torchaudio.pipelines, name.upper(), None)
    if bundle is None or not hasattr(bundle, "get_model") or not hasattr(bundle, "_normalize_waveform"):
        names = [n for n in dir(torchaudio.pipelines) if n.startswith(("HUBERT", "WAV2VEC2"))]
        raise ConfigError(f"{name!r} is neither a file nor a torchaudio wav2vec2/HuBERT bundle ({', '.join(names)})")
    model = bundle.get_model(dl_kwargs=dl_kwargs)
    inner = getattr(model, "model", model)  # bundles that normalise the waveform wrap the model
    if not isinstance(inner, torchaudio.models.Wav2Vec2Model):
        raise ConfigError(f"bundle {name}: unexpected model type {type(inner).__name__}")
    cfg = infer_config(inner.state_dict(), getattr(bundle, "_params", None), None, f"bundle {name}")
    inner.aux = None  # an ASR bundle's CTC head is not part of the features
    return LoadedHubert(inner.eval(), cfg, bool(bundle._normalize_waveform), f"torchaudio bundle {name.upper()}",
                        "bundle")
