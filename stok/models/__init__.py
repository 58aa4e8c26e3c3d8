"""Models: teachers (HuBERT, MFCC), k-means units, SpeechTokenizer, S3Tokenizer."""
