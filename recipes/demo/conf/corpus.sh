# recipes/demo: corpus paths and stage options. run.sh sources this file after its own defaults (so it may
# override them) and before the command line (which overrides both): bash run.sh --recipe recipes/demo --nj 1
# Relative paths are relative to this recipe dir (run.sh and local/data.sh run from there).
# begin options
corpus_dir=corpus                # the shipped espeak-ng corpus, LibriSpeech layout (local/make_corpus.py made it)
train_set=train-clean-demo       # split to learn k-means and train the SpeechTokenizer on (data/<train_set>)
dev_set=dev-clean-demo           # held-out split: training validation and decoding
test_sets=""                     # more splits to tokenize, space separated (none in the demo)
prep_opts=""                     # extra options for: python -m stok.bin.prepare demo
# end options
prepare_corpus=demo              # stage 0 (local/data.sh): python -m stok.bin.prepare demo (the shipped corpus, prepared as LibriSpeech is)
# The demo keeps run.sh's weight-free defaults: MFCC teacher, 100 k-means clusters, a random-weight S3 model.
