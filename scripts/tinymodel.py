"""A tiny random-weight chat model built locally, for exercising lmdeploy without a model hub.

Llama architecture (which both lmdeploy engines support natively, no remote code), shaped like InternLM2
where it matters to the bot: ChatML-style turns (`<|im_start|>role … <|im_end|>`) in the tokenizer's own
chat template, `<|im_end|>` as an end-of-turn token, a BOS token.  The tokenizer is a byte-level BPE trained
here on a few sentences, so the model can produce any text.  Head size 128, so TurboMind's kernels accept it.

Used by `scripts/gpu_check` and `scripts/gpu_bench`; needs torch, transformers and tokenizers (lmdeploy
brings all three).  The text it writes is gibberish by design: the checks assert behaviour, never wording.
"""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "InternLM is a helpful, honest and harmless assistant.",
    "The quick brown fox jumps over the lazy dog.",
    "Discord bots answer questions in channels, threads and direct messages.",
    "书生·浦语 是上海人工智能实验室开发的大语言模型。",
    "Numbers: 0 1 2 3 4 5 6 7 8 9; punctuation: , . ! ? : ; ( ) [ ] { } \" '",
]


def build_tokenizer(vocab_size: int = 1024):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(CORPUS * 20, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build(out_dir: str | Path, *, layers: int = 2, hidden: int = 256, heads: int = 2, seed: int = 0) -> Path:
    """Write config, safetensors weights, tokenizer and generation config into `out_dir`; returns it."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(out)
    bos, eos, im_end = (tokenizer.convert_tokens_to_ids(t) for t in ("<s>", "</s>", "<|im_end|>"))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=bos,
        eos_token_id=[eos, im_end],
        pad_token_id=eos,
        tie_word_embeddings=False,
        torch_dtype="float16",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # Special tokens get zero logits, so greedy decoding (random logits, some > 0) never ends a reply early
        # and long generations (the Stop check) really are long.
        for token_id in tokenizer.all_special_ids:
            model.lm_head.weight[token_id].zero_()
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=bos, eos_token_id=[eos, im_end], pad_token_id=eos).save_pretrained(out)
    return out


if __name__ == "__main__":
    import sys

    print(build(sys.argv[1] if len(sys.argv) > 1 else "tiny-internlm2-style"))
