"""Stage 0 from code and YAML: the typed settings (``stok.data.prepare.settings``) run through a corpus recipe give
the same data dirs as ``stok-prepare``, and a mistake names the setting as it was written (``prepare.splits``)."""

from __future__ import annotations

import os

import pytest
import yaml

from stok.bin.prepare import main
from stok.core.errors import UserError
from stok.data.prepare import CORPORA, recipe_of
from stok.data.prepare.settings import CorpusSettings, FolderSettings
from tests.prepare_helpers import check_kaldi_dir
from tests.user_error_helpers import snapshot

KALDI = ("wav.scp", "utt2spk", "spk2utt", "utt2dur", "text")


def files(d):
    return {name: open(os.path.join(d, name), "rb").read() for name in KALDI}


def test_code_yaml_and_cli_build_the_same(tmp_path):
    """The shipped demo corpus, one split: the command line, CorpusSettings(...) and a YAML section agree."""
    cli, code, conf = tmp_path / "cli", tmp_path / "code", tmp_path / "yaml"
    assert main(["demo", "--output_dir", str(cli), "--splits", "dev-clean-demo"]) == 0
    summaries = recipe_of("demo").run(CorpusSettings(output_dir=str(code), splits=["dev-clean-demo"]))
    assert [s.split for s in summaries] == ["dev-clean-demo"] and summaries[0].num_utts == 10
    section = yaml.safe_load(f"prepare:\n  output_dir: {conf}\n  splits: dev-clean-demo dev-clean-demo\n")["prepare"]
    settings = CorpusSettings.from_dict(section, prefix="prepare")
    assert settings.splits == ["dev-clean-demo"]  # words of a string, each once
    recipe_of("demo").run(settings)
    check_kaldi_dir(cli / "dev-clean-demo", segments=False, text=True, n_utts=10)
    assert files(cli / "dev-clean-demo") == files(code / "dev-clean-demo") == files(conf / "dev-clean-demo")
    assert sorted(os.listdir(code / "manifests")) == sorted(os.listdir(cli / "manifests"))


def test_every_corpus_has_a_preparer():
    for name in CORPORA:
        recipe = recipe_of(name)
        assert recipe.name == name and set(recipe.options) <= set(recipe.settings_class._fields())
    with pytest.raises(ValueError, match="unknown corpus"):
        recipe_of("timit")


def errors_of(tmp_path, run) -> str:
    """``run()`` raises a user error, and nothing under ``tmp_path`` changed."""
    before = snapshot(tmp_path)
    with pytest.raises(UserError) as e:
        run()
    assert snapshot(tmp_path) == before
    return str(e.value)


def test_yaml_mistakes_name_the_key(tmp_path):
    out = str(tmp_path / "data")
    msg = errors_of(tmp_path, lambda: CorpusSettings.from_dict({"num_jobs": 0, "output_dir": out}, prefix="prepare"))
    assert "prepare.num_jobs must be >= 1" in msg
    msg = errors_of(tmp_path, lambda: CorpusSettings.from_dict({"combine": ["all"]}, prefix="prepare"))
    assert "prepare.combine 'all': expected NAME=PART1,PART2" in msg
    msg = errors_of(tmp_path, lambda: CorpusSettings.from_dict({"split": ["a"]}, prefix="prepare"))
    assert "prepare: unknown key(s) ['split']" in msg
    s = CorpusSettings.from_dict({"output_dir": out}, prefix="prepare")
    msg = errors_of(tmp_path, lambda: recipe_of("librispeech").run(s))
    assert "librispeech: prepare.corpus_dir is required (or prepare.download)" in msg and "openslr.org/12" in msg
    s = CorpusSettings.from_dict({"output_dir": out, "librittsr": True, "num_jobs": 2}, prefix="prepare")
    msg = errors_of(tmp_path, lambda: recipe_of("librispeech").run(s))
    assert "librispeech: prepare.librittsr does not apply to librispeech" in msg
    demo = str(recipe_of("demo").default_corpus_dir())
    s = CorpusSettings.from_dict({"output_dir": out, "corpus_dir": demo, "splits": ["dev-clean-demo"],
                                  "combine": ["both=dev-clean-demo,x"]}, prefix="prepare")
    msg = errors_of(tmp_path, lambda: recipe_of("librispeech").run(s))
    assert "prepare.combine both=...: parts ['x'] are neither among the splits" in msg and "prepare.splits" in msg
    msg = errors_of(tmp_path, lambda: FolderSettings.from_dict({"output_dir": out}, prefix="prepare"))
    assert "folder: give exactly one of prepare.audio_dir, prepare.wav_scp, prepare.data_dir" in msg
    msg = errors_of(tmp_path, lambda: FolderSettings.from_dict({"audio_dir": str(tmp_path), "dev_fraction": "1.5"},
                                                              prefix="prepare"))
    assert "prepare.dev_fraction must be in [0, 1) and prepare.dev_count >= 0" in msg


def test_code_mistakes_name_the_option_and_settings_must_fit(tmp_path):
    """Settings built in code are named as the command line names them; a corpus takes only its own kind."""
    out = str(tmp_path / "data")
    msg = errors_of(tmp_path, lambda: recipe_of("libritts").run(CorpusSettings(output_dir=out, normalize_text="lower")))
    assert "libritts: --normalize_text does not apply to libritts" in msg
    msg = errors_of(tmp_path, lambda: recipe_of("folder").run(FolderSettings(output_dir=out)))
    assert "give exactly one of --audio_dir (or --corpus_dir), --wav_scp, --data_dir" in msg
    (tmp_path / "a_file").write_text("x")
    msg = errors_of(tmp_path, lambda: recipe_of("demo").run(CorpusSettings(output_dir=str(tmp_path / "a_file"))))
    assert "--output_dir" in msg and "exists and is not a directory" in msg
    with pytest.raises(TypeError, match="folder takes FolderSettings"):
        recipe_of("folder").run(CorpusSettings(output_dir=out))
