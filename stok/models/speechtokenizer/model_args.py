"""Which SpeechTokenizer model a tool uses: :class:`STModelSettings`, shared by ``stok-dump-codes``, ``stok-decode``
and ``stok-eval``.

A model is given as the released pair: ``--model_dir`` (a dir with ``config.json`` and ``SpeechTokenizer.pt``,
e.g. ``exp/st/export`` from stage 3 or the released ``speechtokenizer_hubert_avg``), or ``--config`` and
``--ckpt`` for files named otherwise.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import List, Optional

import torch

from stok.core.errors import UserError
from stok.core.settings import Settings, SettingsError, setting
from stok.models.speechtokenizer.checkpoint import load_released
from stok.models.speechtokenizer.model import SpeechTokenizer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class STModelSettings(Settings):
    model_dir: Optional[str] = setting(
        None, help="dir with config.json + SpeechTokenizer.pt (stage 3's exp/st/export, or a released model)")
    config: Optional[str] = setting(None, help="config.json, with --ckpt (instead of --model_dir)")
    ckpt: Optional[str] = setting(None, help="SpeechTokenizer.pt state dict in the released layout, with --config")

    def validate(self) -> None:
        """The model files must be there (checked before any work); the message names them."""
        name = self.setting_name
        if self.model_dir:
            if self.config or self.ckpt:
                raise SettingsError(f"give {name('model_dir')} or {name('config')}/{name('ckpt')}, not both")
            for f in ("config.json", "SpeechTokenizer.pt"):
                if not os.path.isfile(os.path.join(self.model_dir, f)):
                    raise SettingsError(f"{os.path.join(self.model_dir, f)} not found; {name('model_dir')} must hold "
                                        "config.json and SpeechTokenizer.pt (stage 3 exports them to exp/st/export)")
        elif self.config and self.ckpt:
            for path in (self.config, self.ckpt):
                if not os.path.isfile(path):
                    raise SettingsError(f"{path} not found")
        else:
            raise SettingsError(f"name the model: {name('model_dir')} DIR, or {name('config')} config.json "
                                f"{name('ckpt')} SpeechTokenizer.pt")

    def files(self) -> List[str]:
        """The weights files (config and state dict), whose checksums identify the model."""
        if self.model_dir:
            return [os.path.join(self.model_dir, n) for n in ("config.json", "SpeechTokenizer.pt")]
        return [self.config, self.ckpt]

    def load(self, device: torch.device) -> SpeechTokenizer:
        """The model, in eval mode, on ``device``; a damaged file is a user error naming it."""
        try:
            model = load_released(self.model_dir) if self.model_dir else load_released(self.config, self.ckpt)
        except (KeyError, ValueError) as e:
            raise UserError(str(e)) from None
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:  # torch.load of a damaged file
            ckpt = self.files()[1]
            text = str(e).strip().splitlines()[0].split(". ")[0][:120] if str(e).strip() else ""
            raise UserError(f"{ckpt}: cannot be read as a SpeechTokenizer checkpoint ({type(e).__name__}: {text}); "
                            "the file is damaged or incomplete: export or download it again") from None
        return model.to(device).eval()


def check_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype != "fp32" and device.type != "cuda":
        raise UserError(f"--dtype {dtype} is for GPUs; on {device} use --dtype fp32")
    return DTYPES[dtype]
