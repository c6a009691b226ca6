"""A tiny randomly initialised Llama with a real (small) BPE tokenizer and a ChatML chat template.

Tests and examples use it to exercise the whole pipeline in well under a second per step. It is built
locally (no download): the tokenizer is trained on a few sentences, so its vocabulary stays at a few
hundred tokens (a 49k vocabulary would make each step 10-20x slower, shared/FINDINGS.md).
"""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CORPUS = [
    "Is the following SMS message spam or ham (not spam)? Answer with one word: spam or ham.",
    "Free entry in a weekly competition to win cup final tickets. Text WIN to 87121 now!",
    "Are you coming home for dinner tonight? I will cook pasta.",
    "Congratulations, you have won a prize. Call 0800 to claim your cash reward.",
    "The quick brown fox jumps over the lazy dog. What is the capital of France? Paris.",
    "user assistant system hello thanks ok yes no please sure sorry later meeting today tomorrow",
]


def build_tiny_model(path: str | Path, hidden_size: int = 64, layers: int = 2, vocab_size: int = 384, seed: int = 0) -> Path:
    """Write a tiny Llama + tokenizer as a Hugging Face model directory at `path` and return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
    tokenizer.chat_template = CHATML_TEMPLATE

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        # With the default 0.02 init and a 64-wide RMS-normed hidden state, the tied output layer can only
        # produce near-uniform logits, so a LoRA could never fit anything; a wider init leaves room to learn.
        initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
