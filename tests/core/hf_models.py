"""Tiny transformers models and tokenizers written to folders the way their users save them (save_pretrained).

The models are randomly initialised from transformers' own classes (code we did not write); the tokenizer is a
word-level `tokenizers.Tokenizer` over WORDS, so every word is one token and counts can be checked by hand.
"""
from pathlib import Path

import torch

WORDS = [f"w{i}" for i in range(40)] + ["the", "cat", "sat", "on", "mat", "."]
SPECIALS = ["[PAD]", "[UNK]", "[EOS]", "[CLS]", "[SEP]"]


def word_tokenizer():
    """A PreTrainedTokenizerFast: whitespace split, one id per word of WORDS, [PAD] = 0, no special tokens added."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")


def vocab_size() -> int:
    return len(SPECIALS) + len(WORDS)


def save_gpt2(folder: Path, seed: int = 0):
    """A 2-layer GPT-2 LM (n_embd 64, 2 heads) and the word tokenizer saved into `folder`; returns the model."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=64, vocab_size=vocab_size(),
                        bos_token_id=2, eos_token_id=2)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    word_tokenizer().save_pretrained(folder)
    return model


def save_bert(folder: Path, classes: int | None = None, seed: int = 0):
    """A 2-layer BERT (hidden 32): a sequence classifier with `classes` labels, else the bare encoder."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=classes or 2)
    model = (BertForSequenceClassification(config) if classes else BertModel(config)).eval()
    model.save_pretrained(folder, safe_serialization=True)
    word_tokenizer().save_pretrained(folder)
    return model
