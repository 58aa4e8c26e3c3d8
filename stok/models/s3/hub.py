"""Official S3Tokenizer files by name: local cache, download with SHA-256 check, and ``load_s3``.

Cache directory: ``$STOK_CACHE/s3tokenizer`` when ``STOK_CACHE`` is set, else ``~/.cache/stok/s3tokenizer``.
A name resolves to ``<cache>/<name>.onnx`` (the official file, verified by SHA-256 where the checksum
is known) and, after the first load, ``<cache>/<name>.pt`` (the converted weights, fast to load).
Online users get the file downloaded from the official model repositories; with ``STOK_OFFLINE=1``
(or ``HF_HUB_OFFLINE=1``), or when no download works, the error says exactly where to put the file.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from dataclasses import dataclass
from typing import List, Optional

import torch

from stok.core.checksums import sha256_of
from stok.core.fileio import cache_dir as stok_cache_dir
from stok.models.s3.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from stok.models.s3.config import VERSIONS
from stok.models.s3.model import S3Tokenizer

log = logging.getLogger("stok.s3")


def load_onnx(*args, **kwargs) -> S3Tokenizer:
    """``stok.models.s3.onnx_import.load_onnx``, imported on first use (``onnx`` takes ~1 s to import, which
    every process loading a checkpoint would otherwise pay)."""
    from stok.models.s3.onnx_import import load_onnx as load

    return load(*args, **kwargs)


@dataclass(frozen=True)
class Official:
    version: str
    filename: str  # the file's name in its model repository
    urls: tuple
    sha256: Optional[str]  # None: no published checksum known; the downloaded file's checksum is logged


_MS = "https://www.modelscope.cn/models"
_HF = "https://huggingface.co"
MODELS = {
    "speech_tokenizer_v1_50hz": Official(
        "v1_50hz", "speech_tokenizer_v1.onnx",
        (f"{_MS}/iic/CosyVoice-300M/resolve/master/speech_tokenizer_v1.onnx",
         f"{_HF}/FunAudioLLM/CosyVoice-300M/resolve/main/speech_tokenizer_v1.onnx"),
        "23b5a723ed9143aebfd9ffda14ac4c21231f31c35ef837b6a13bb9e5488abb1e"),
    "speech_tokenizer_v1_25hz": Official(
        "v1_25hz", "speech_tokenizer_v1.onnx",
        (f"{_MS}/iic/CosyVoice-300M-25Hz/resolve/master/speech_tokenizer_v1.onnx",
         f"{_HF}/FunAudioLLM/CosyVoice-300M-25Hz/resolve/main/speech_tokenizer_v1.onnx"),
        "56285ddd4a83e883ee0cb9f8d69c1089b53a94b1f78ff7e4a0224a27eb4cb486"),
    "speech_tokenizer_v2_25hz": Official(
        "v2_25hz", "speech_tokenizer_v2.onnx",
        (f"{_MS}/iic/CosyVoice2-0.5B/resolve/master/speech_tokenizer_v2.onnx",
         f"{_HF}/FunAudioLLM/CosyVoice2-0.5B/resolve/main/speech_tokenizer_v2.onnx"),
        "d43342aa12163a80bf07bffb94c9de2e120a8df2f9917cd2f642e7f4219c6f71"),
    "speech_tokenizer_v3_25hz": Official(
        "v3_25hz", "speech_tokenizer_v3.onnx",
        (f"{_MS}/FunAudioLLM/Fun-CosyVoice3-0.5B-2512/resolve/master/speech_tokenizer_v3.onnx",
         f"{_HF}/FunAudioLLM/Fun-CosyVoice3-0.5B-2512/resolve/main/speech_tokenizer_v3.onnx"),
        None),
}
ALIASES = {"speech_tokenizer_v1": "speech_tokenizer_v1_50hz", "speech_tokenizer_v2": "speech_tokenizer_v2_25hz",
           "speech_tokenizer_v3": "speech_tokenizer_v3_25hz"}


class ModelNotFound(FileNotFoundError):
    pass


def canonical_name(name: str) -> Optional[str]:
    name = ALIASES.get(name, name)
    return name if name in MODELS else None


def _official(name: str):
    """(canonical name, its official model entry); an unknown name is an error listing the known ones."""
    canon = canonical_name(name)
    if not canon:
        raise ModelNotFound(f"unknown S3Tokenizer model name {name!r}; known: {', '.join(sorted(MODELS))}")
    return canon, MODELS[canon]


def cache_dir() -> str:
    return stok_cache_dir("s3tokenizer")


def offline() -> bool:
    return any(os.environ.get(k, "") not in ("", "0") for k in ("STOK_OFFLINE", "HF_HUB_OFFLINE"))


def _download(url: str, target: str, sha256: Optional[str], timeout: float = 60.0) -> None:
    tmp = f"{target}.part{os.getpid()}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as src, open(tmp, "wb") as out:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
        got = sha256_of(tmp)
        if sha256 and got != sha256:
            raise ValueError(f"SHA-256 mismatch for {url}: got {got}, expected {sha256}")
        if not sha256:
            log.warning("%s has no pinned checksum in stok; downloaded file SHA-256 %s", url, got)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fetch(name: str) -> str:
    """Path of the official ONNX file of ``name`` in the cache, downloading it if needed and allowed."""
    canon, off = _official(name)
    target = os.path.join(cache_dir(), f"{canon}.onnx")
    if os.path.isfile(target):
        if off.sha256:
            got = sha256_of(target)
            if got != off.sha256:
                raise ModelNotFound(f"{target} is not the official {off.filename} of {canon}: SHA-256 {got}, "
                                    f"expected {off.sha256}; replace it with the file from {off.urls[0]}")
        return target
    where = (f"download {off.filename} from {' or '.join(off.urls)} and put it at {target} "
             f"(cache dir: $STOK_CACHE/s3tokenizer or ~/.cache/stok/s3tokenizer), "
             f"or pass --model /path/to/{off.filename} --version {off.version}")
    if offline():
        raise ModelNotFound(f"S3Tokenizer {canon} is not in the cache and downloads are off (STOK_OFFLINE/HF_HUB_OFFLINE): "
                            f"{where}")
    os.makedirs(cache_dir(), exist_ok=True)
    errors: List[str] = []
    for url in off.urls:
        try:
            log.info("downloading %s -> %s", url, target)
            _download(url, target, off.sha256)
            return target
        except Exception as e:  # network down, HTTP error, checksum mismatch: try the next mirror
            errors.append(f"{url}: {type(e).__name__}: {e}")
    raise ModelNotFound(f"S3Tokenizer {canon} is not in the cache and could not be downloaded "
                        f"({'; '.join(errors)}): {where}")


def load_official(name: str, window_batch: int = 8) -> S3Tokenizer:
    """Load an official model by name: the converted checkpoint when present, else the ONNX file (then
    the conversion is cached next to it)."""
    canon, off = _official(name)
    converted = os.path.join(cache_dir(), f"{canon}.pt")
    if os.path.isfile(converted):
        try:
            meta = read_metadata(converted)
            if off.sha256 is None or meta.get("source_sha256") == off.sha256:
                return load_checkpoint(converted, off.version, window_batch)
            log.warning("%s was converted from another file (SHA-256 %s); converting again", converted,
                        meta.get("source_sha256"))
        except (CheckpointError, RuntimeError, KeyError) as e:
            log.warning("ignoring unreadable %s (%s); converting again", converted, e)
    path = fetch(canon)
    model = load_onnx(path, off.version, window_batch=window_batch)
    try:
        save_checkpoint(model, converted)
    except OSError as e:
        log.warning("could not cache the converted weights at %s: %s", converted, e)
    return model


def load_s3(spec: str, version: Optional[str] = None, device="cpu", dtype: torch.dtype = torch.float32,
            window_batch: int = 8) -> S3Tokenizer:
    """An ``S3Tokenizer`` from an official name, an ONNX file or a stok checkpoint, on ``device`` in ``dtype``.

    The version comes from ``version``, the name's registry entry, or the file's own metadata (stok
    checkpoints, the demo ONNX); an official ONNX file needs ``version``. It is never read from a file name.
    """
    if version is not None and version not in VERSIONS:
        raise ValueError(f"unknown S3Tokenizer version {version!r}; choose one of {', '.join(VERSIONS)}")
    canon = canonical_name(spec)
    if canon and not os.path.exists(spec):
        if version and version != MODELS[canon].version:
            raise ValueError(f"model {canon} is an S3Tokenizer {MODELS[canon].version}, not {version}")
        model = load_official(canon, window_batch)
    elif os.path.isfile(spec):
        if spec.endswith(".onnx"):
            model = load_onnx(spec, version, window_batch=window_batch)
        else:
            model = load_checkpoint(spec, version, window_batch)
    else:
        raise ModelNotFound(f"--model {spec}: no such file, and not an official model name "
                            f"({', '.join(sorted(MODELS))})")
    model.to(device)
    model.set_dtype(dtype)
    return model.freeze()
