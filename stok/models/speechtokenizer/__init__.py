"""SpeechTokenizer (Zhang et al., ICLR 2024) in PyTorch: the released model layout, length-aware batches.

- :mod:`~stok.models.speechtokenizer.config`: :class:`SpeechTokenizerConfig` (the released ``config.json``).
- :mod:`~stok.models.speechtokenizer.conv`: weight-normed, length-aware SEANet convolutions.
- :mod:`~stok.models.speechtokenizer.seanet`: encoder and decoder with the released module indices.
- :mod:`~stok.models.speechtokenizer.rvq`: residual VQ (k-means init, EMA, dead codes; DDP-synchronised).
- :mod:`~stok.models.speechtokenizer.model`: :class:`SpeechTokenizer` (``forward``, ``encode``, ``decode``).
- :mod:`~stok.models.speechtokenizer.checkpoint`: the released ``config.json`` + ``SpeechTokenizer.pt`` pair.
- :mod:`~stok.models.speechtokenizer.long_audio`: any length in bounded memory (windowed encode, streamed decode).

Typical use::

    from stok.models.speechtokenizer import load_released
    model = load_released("speechtokenizer_hubert_avg")      # a directory holding the released pair
    codes = model.encode(wav, lengths)                        # [8, B, ceil(T / 320)]
    keep = model.frames(lengths)                              # valid frames per item
    wav_hat = model.decode(codes[:1], lengths=keep)           # RVQ-1 only (content)
"""

from stok.models.speechtokenizer.checkpoint import load_released, save_released
from stok.models.speechtokenizer.config import SpeechTokenizerConfig
from stok.models.speechtokenizer.model import SpeechTokenizer, STOutput

__all__ = ["STOutput", "SpeechTokenizer", "SpeechTokenizerConfig", "load_released", "save_released"]
