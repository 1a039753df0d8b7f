"""Build `tests/fixtures/internlm2-tiny/internlm2-tiny.gguf`: a tiny random-weight InternLM2, converted to GGUF by
llama.cpp's own converter, so the tests can run the InternLM2 architecture and its control tokens through the real
llama.cpp engine without InternLM weights, a hub or torch.

Why it is built this way:

* **The converter is llama.cpp's.**  `convert_hf_to_gguf.py` (class `InternLM2Model`, registered for
  `InternLM2ForCausalLM`) from the llama.cpp tree vendored in the llama-cpp-python source distribution the bot
  installs, so the GGUF is shaped exactly as llama.cpp writes an InternLM2 GGUF: architecture `internlm2`, the
  fused `wqkv` split into Q/K/V, the sentencepiece vocabulary, token types, the `<|im_end|>` end-of-turn swap
  and the chat template.
* **The tokenizer is a sentencepiece model trained here** (InternLM2's own `tokenizer.model` cannot be fetched
  here): BPE with byte fallback, like InternLM2's, and `add_dummy_prefix` off, which is what InternLM2's
  tokenizer does (llama.cpp PR #5184, "llama : support InternLM2", added the add-space-prefix switch for it).
* **The special tokens are InternLM2's, where a tiny vocabulary allows.**  InternLM2's `tokenizer.model` holds
  `[UNUSED_TOKEN_141]` … `[UNUSED_TOKEN_146]` at ids 92538 … 92543 (the end of its 92544-token vocabulary) and its
  `tokenizer_config.json` renames them in `added_tokens_decoder`, `"special": true`, to `<|plugin|>`,
  `<|interpreter|>`, `<|action_end|>`, `<|action_start|>`, `<|im_end|>`, `<|im_start|>`.  The same is done here:
  the six `[UNUSED_TOKEN_…]` pieces are appended at the end of the trained vocabulary, in the same order, and the
  `tokenizer_config.json` written here renames them the same way, so the converter marks them CONTROL through
  the very code path it uses for the real model.  Only their ids differ (the last six of a small vocabulary
  instead of 92538 … 92543); contents, order and token types are InternLM2's.  `<unk>`, `<s>`, `</s>` keep ids
  0, 1, 2 as in InternLM2.
* **The chat template is InternLM2-chat's own** `tokenizer_config.json` `chat_template` (with `add_bos_token`
  true): `{{ bos_token }}` then `<|im_start|>role\\ncontent<|im_end|>\\n` per message, then
  `<|im_start|>assistant\\n` — as quoted verbatim from InternLM2-chat's tokenizer_config.json in
  OpenPPL/ppl.pmx, model_zoo/internlm2/huggingface/ConvertTokenizerModel.py (commit 9eb04fe3), the
  InternLM/InternLM hub repositories' file not being reachable from here.
* **Weights are random, dimensions tiny** (hidden 64, 4 query heads over 2 KV heads — grouped-query attention
  as in InternLM2 — 2 layers; a 32k context as InternLM2.5-1.8B-Chat), so the file is well under 2 MB.  The text
  it writes is gibberish by design: the tests assert structure, never wording.

How to rebuild (torch stays out of the project's venv and of CI; the GGUF is committed):

    python3 -m venv /tmp/convvenv
    /tmp/convvenv/bin/pip install torch==2.13.0 transformers==4.57.6 sentencepiece 'protobuf>=5.29' \\
        numpy safetensors
    .venv/bin/python -m pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/lcpsrc
    tar xzf /tmp/lcpsrc/llama_cpp_python-0.3.36.tar.gz -C /tmp/lcpsrc
    /tmp/convvenv/bin/python scripts/tiny_internlm2_gguf.py \\
        --llama-cpp /tmp/lcpsrc/llama_cpp_python-0.3.36/vendor/llama.cpp

It is deterministic for a given sentencepiece, torch and converter version (fixed corpus and seed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "internlm2-tiny" / "internlm2-tiny.gguf"

# InternLM2's six protocol tokens, in the order of their real ids 92538 … 92543, with the placeholder pieces
# InternLM2's tokenizer.model holds at those ids.
SPECIALS = [
    ("[UNUSED_TOKEN_141]", "<|plugin|>"),
    ("[UNUSED_TOKEN_142]", "<|interpreter|>"),
    ("[UNUSED_TOKEN_143]", "<|action_end|>"),
    ("[UNUSED_TOKEN_144]", "<|action_start|>"),
    ("[UNUSED_TOKEN_145]", "<|im_end|>"),
    ("[UNUSED_TOKEN_146]", "<|im_start|>"),
]
# InternLM2-chat's tokenizer_config.json chat_template (source in the module docstring).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CORPUS = [
    "You are InternLM, a helpful, honest and harmless assistant developed by Shanghai AI Laboratory.",
    "The quick brown fox jumps over the lazy dog while the user asks a question about Python.",
    "Solve the equation 2x + 3 = 10 step by step, then print the answer with the interpreter.",
    "from sympy import symbols, solve\nx = symbols('x')\nprint(solve(2*x + 3 - 10, x))",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "Search arXiv for papers about large language models and summarise the abstracts.",
    "书生·浦语 是上海人工智能实验室开发的大语言模型。请用中文回答问题。",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation , . ! ? : ; ( ) [ ] { } \" ' = + - * / < > |",
]
DIMS = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def train_tokenizer(out_dir: Path, vocab_size: int) -> int:
    """Train the sentencepiece model, append the six placeholder pieces; return the vocabulary size."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    prefix = out_dir / "sp"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 50),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        split_digits=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    proto = model_pb2.ModelProto()
    proto.ParseFromString((prefix.with_suffix(".model")).read_bytes())
    for placeholder, _content in SPECIALS:
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = placeholder, 0.0, model_pb2.ModelProto.SentencePiece.USER_DEFINED
    (out_dir / "tokenizer.model").write_bytes(proto.SerializeToString())
    return len(proto.pieces)


def token_entry(content: str) -> dict[str, object]:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }


def write_configs(out_dir: Path, n_vocab: int) -> None:
    """config.json and tokenizer_config.json shaped like InternLM2-chat's (tiny dimensions, tiny-vocab ids)."""
    first = n_vocab - len(SPECIALS)
    decoder = {"0": token_entry("<unk>"), "1": token_entry("<s>"), "2": token_entry("</s>")}
    decoder |= {str(first + i): token_entry(content) for i, (_p, content) in enumerate(SPECIALS)}
    tokenizer_config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": [
            "<|im_start|>",
            "<|im_end|>",
            "<|action_start|>",
            "<|action_end|>",
            "<|interpreter|>",
            "<|plugin|>",
        ],
        "auto_map": {
            "AutoTokenizer": [
                "tokenization_internlm2.InternLM2Tokenizer",
                "tokenization_internlm2_fast.InternLM2TokenizerFast",
            ]
        },
        "bos_token": "<s>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "decode_with_prefix_space": False,
        "eos_token": "</s>",
        "pad_token": "</s>",
        "tokenizer_class": "InternLM2Tokenizer",
        "unk_token": "<unk>",
    }
    config = {
        "architectures": ["InternLM2ForCausalLM"],
        "model_type": "internlm2",
        "auto_map": {
            "AutoConfig": "configuration_internlm2.InternLM2Config",
            "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
        },
        **DIMS,
        "vocab_size": n_vocab,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "bias": False,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))


def write_weights(out_dir: Path, n_vocab: int, seed: int) -> None:
    """Random weights under InternLM2's Hugging Face tensor names (fused `wqkv`, `w1`/`w2`/`w3`)."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    hidden, inter = DIMS["hidden_size"], DIMS["intermediate_size"]
    head_dim = hidden // DIMS["num_attention_heads"]
    qkv_rows = (DIMS["num_attention_heads"] + 2 * DIMS["num_key_value_heads"]) * head_dim

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * 0.02).to(torch.float16)

    tensors = {
        "model.tok_embeddings.weight": rand(n_vocab, hidden),
        "output.weight": rand(n_vocab, hidden),
        "model.norm.weight": torch.ones(hidden, dtype=torch.float16),
    }
    for i in range(DIMS["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors |= {
            p + "attention_norm.weight": torch.ones(hidden, dtype=torch.float16),
            p + "ffn_norm.weight": torch.ones(hidden, dtype=torch.float16),
            p + "attention.wqkv.weight": rand(qkv_rows, hidden),
            p + "attention.wo.weight": rand(hidden, hidden),
            p + "feed_forward.w1.weight": rand(inter, hidden),
            p + "feed_forward.w3.weight": rand(inter, hidden),
            p + "feed_forward.w2.weight": rand(hidden, inter),
        }
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})


def build(llama_cpp: Path, out: Path, *, vocab_size: int = 600, seed: int = 0) -> Path:
    converter = llama_cpp / "convert_hf_to_gguf.py"
    if not converter.is_file():
        raise SystemExit(f"no convert_hf_to_gguf.py in {llama_cpp} (the llama-cpp-python sdist's vendor/llama.cpp)")
    with tempfile.TemporaryDirectory(prefix="internlm2-tiny-") as tmp:
        hf = Path(tmp) / "internlm2-tiny"
        hf.mkdir()
        n_vocab = train_tokenizer(hf, vocab_size)
        write_configs(hf, n_vocab)
        write_weights(hf, n_vocab, seed)
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                str(converter),
                str(hf),
                "--outfile",
                str(out),
                "--outtype",
                "f16",
                "--model-name",
                "InternLM2 tiny (random weights, test fixture)",
            ],
            check=True,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", type=Path, required=True, help="llama.cpp source tree (with its converter)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    path = build(args.llama_cpp, args.out)
    print(f"{path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
