# recipes/folder: your own audio. run.sh sources this file after its own defaults (so it may override them)
# and before the command line (which overrides both):
#   bash run.sh --recipe recipes/folder --corpus_dir /my/audio               # a directory of audio files
#   bash run.sh --recipe recipes/folder --wav_scp /my/kaldi/data/train       # an existing Kaldi dir (or a wav.scp file)
# Relative paths are relative to this recipe dir (run.sh and local/data.sh run from there): prefer absolute ones.
# begin options
corpus_dir=audio                 # a directory of audio files (wav, flac, ogg, mp3, ...), searched recursively
wav_scp=""                       # instead: a wav.scp file (segments, utt2spk, text next to it are used) or a Kaldi data dir
speaker_from=utt                 # speaker of each file: utt (unknown: each file its own), parent (its directory), first_dir
dev_fraction=0.05                # share of recordings held out as the dev split (0: none; at least one when > 0)
train_set=train                  # name of the main split (data/<train_set>)
dev_set=dev                      # name of the held-out split: training validation and decoding
test_sets=""                     # nothing else to prepare here (split names are made by this recipe)
prep_opts=""                     # extra options for: python -m stok.bin.prepare folder (e.g. --dev_by speaker --seed 1)
# end options
prepare_corpus=folder            # stage 0 (local/data.sh): python -m stok.bin.prepare folder (any audio; the splits are made here)

# For speech, a HuBERT teacher beats MFCCs; the defaults of run.sh (weight-free) are kept here so that
# the recipe runs anywhere. To use real models, uncomment and adapt:
# teacher=hubert
# teacher_opts="--checkpoint /path/to/hubert_base_ls960.pt --layer avg"
# n_clusters=500
# s3_version=v2_25hz
# s3_model=speech_tokenizer_v2_25hz
