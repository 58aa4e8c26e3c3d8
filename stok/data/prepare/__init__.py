"""Stage 0: corpus -> lhotse manifests (``data/manifests/*.jsonl.gz``) + one Kaldi data dir per split (``data/<split>/``).

One module per corpus, each exposing ``add_arguments(parser)`` and ``run(args) -> List[SplitSummary]``:

- :mod:`.librispeech`, :mod:`.aishell`, :mod:`.libritts`: lhotse's own recipes on a local corpus directory
  (downloading is optional and off by default);
- :mod:`.demo`: the small espeak-ng corpus shipped in ``recipes/demo/corpus`` (LibriSpeech layout);
- :mod:`.folder`: any directory of audio files, or an existing ``wav.scp`` (+ ``segments``/``utt2spk``/``text``).

:mod:`.manifests` holds what they share: writing sorted manifests and cuts, and turning recordings +
supervisions into a Kaldi data dir with stok's own writer (plain paths in ``wav.scp``, ``segments`` only
when utterances are parts of recordings). The command line is ``python -m stok.bin.prepare``.
"""

CORPORA = ("demo", "librispeech", "aishell", "libritts", "folder")
