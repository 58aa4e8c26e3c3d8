"""S3Tokenizer (CosyVoice's supervised semantic speech tokenizer) in pure PyTorch.

v1 50 Hz, v1 25 Hz, v2 25 Hz and v3 25 Hz; weights from the official ONNX files through a strict
importer (``onnx_import``), converted checkpoints (``checkpoint``), official names (``hub``), the
log-mel front end (``frontend``), long-audio windows (``long_audio``) and the dump-engine model
(``dump_model``). Typical use::

    from stok.models.s3 import load_s3
    tok = load_s3("speech_tokenizer_v2_25hz", device="cuda").freeze()
    codes, code_lens = tok.quantize(mels, mel_lens)
"""

from stok.models.s3.config import VERSIONS, S3Config, full_config, tiny_config
from stok.models.s3.frontend import batch_log_mel, log_mel
from stok.models.s3.hub import load_s3
from stok.models.s3.model import S3Tokenizer

__all__ = ["VERSIONS", "S3Config", "S3Tokenizer", "batch_log_mel", "full_config", "load_s3", "log_mel", "tiny_config"]
