# recipes/aishell: corpus paths and stage options. run.sh sources this file after its own defaults (so it may
# override them) and before the command line (which overrides both):
#   bash run.sh --recipe recipes/aishell --corpus_dir /corpora/aishell --ngpu 1
# Relative paths are relative to this recipe dir (run.sh and local/data.sh run from there).
# begin options
corpus_dir=downloads/aishell     # AISHELL-1 root, holding data_aishell/wav and data_aishell/transcript (openslr.org/33)
download=false                   # true: stage 0 first downloads and unpacks AISHELL-1 into download_dir (lhotse, 15 GB)
download_dir=downloads           # where download=true puts the archives and aishell/
train_set=train                  # split to learn k-means and train the SpeechTokenizer on (data/<train_set>)
dev_set=dev                      # held-out split: training validation and decoding
test_sets="test"                 # more splits to tokenize, space separated (may be empty)
prep_opts=""                     # extra options for: python -m stok.bin.prepare aishell
# end options
prepare_corpus=aishell           # stage 0 (local/data.sh): python -m stok.bin.prepare aishell (lhotse.recipes.prepare_aishell)

# Overrides of run.sh's defaults for real speech (the command line still wins):
teacher=hubert                   # a HuBERT teacher; for Mandarin, e.g. a Chinese HuBERT in Hugging Face format
teacher_opts="--checkpoint downloads/chinese-hubert-base --layer avg"  # a HF dir (config.json + weights) or a fairseq .pt
n_clusters=500                   # k-means units
km_percent=0.1                   # learn k-means on 10% of the training frames
s3_version=v2_25hz               # S3Tokenizer version of stage 5 (multilingual, Mandarin included)
s3_model=speech_tokenizer_v2_25hz  # official ONNX model (a name from the cache, or a path to the .onnx file)
