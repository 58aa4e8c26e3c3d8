# recipes/librispeech: corpus paths and stage options. run.sh sources this file after its own defaults (so it may
# override them) and before the command line (which overrides both):
#   bash run.sh --recipe recipes/librispeech --corpus_dir /corpora/LibriSpeech --ngpu 1
# Relative paths are relative to this recipe dir (run.sh and local/data.sh run from there).
# begin options
corpus_dir=downloads/LibriSpeech # LibriSpeech root, holding train-clean-100/, dev-clean/, ... (openslr.org/12)
download=false                   # true: stage 0 first downloads the splits it needs into download_dir (lhotse)
download_dir=downloads           # where download=true puts the archives and LibriSpeech/
train_set=train-clean-100        # split to learn k-means and train the SpeechTokenizer on (data/<train_set>)
dev_set=dev-clean                # held-out split: training validation and decoding
test_sets=""                     # more splits to tokenize, space separated, e.g. "test-clean test-other"
combine=""                       # NAME=PART,PART: also make split NAME from parts, e.g. train-960=train-clean-100,train-clean-360,train-other-500 (then train_set=train-960)
prep_opts="--num_jobs 4"         # extra options for: python -m stok.bin.prepare librispeech
# end options
prepare_corpus=librispeech       # stage 0 (local/data.sh): python -m stok.bin.prepare librispeech (lhotse.recipes.prepare_librispeech)

# Overrides of run.sh's defaults for real speech (the command line still wins):
teacher=hubert                   # HuBERT base features as the teacher (needs its weights, see README.md)
teacher_opts="--checkpoint downloads/hubert/hubert_base_ls960.pt --layer avg"  # avg of all layers: the released SpeechTokenizer's teacher
n_clusters=500                   # k-means units (the SpeechTokenizer authors' units: layer 9, 500 clusters)
km_percent=0.1                   # learn k-means on 10% of the training frames
s3_version=v2_25hz               # S3Tokenizer version of stage 5
s3_model=speech_tokenizer_v2_25hz  # official ONNX model (a name from the cache, or a path to the .onnx file)
