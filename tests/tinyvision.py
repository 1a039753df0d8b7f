"""A tiny random-weight InternVL projector GGUF (mmproj), built locally, for the llama.cpp vision tests.

No InternVL weights exist here, so the tests pair the bundled SmolLM2-135M GGUF (embedding width 576) with a
projector written in the layout llama.cpp's `libmtmd` loads for projector type `internvl` — as
tools/mtmd/clip.cpp, clip-impl.h and models/internvl.cpp of the llama.cpp vendored in llama-cpp-python 0.3.36
read it, and as its converter (conversion/internvl.py, `InternVisionModel`) writes it for InternVL2.5/3:

* keys `clip.projector_type = internvl`, `clip.has_vision_encoder`, `clip.use_gelu`, `clip.vision.image_size`,
  `patch_size`, `embedding_length`, `feed_forward_length`, `block_count`, `attention.head_count`,
  `attention.layer_norm_epsilon`, `projection_dim` (the LLM's width), `image_mean`/`image_std`,
  `projector.scale_factor` (1 / downsample_ratio = 2) and `preproc_min_tiles`/`preproc_max_tiles`;
* tensors `v.patch_embd.{weight,bias}`, `v.class_embd`, `v.position_embd.weight`, per block
  `v.blk.N.{attn_q,attn_k,attn_v,attn_out,ln1,ln2,ffn_up,ffn_down}.{weight,bias}` and `ls1`/`ls2` (layer scale),
  and the projector MLP `mm.model.mlp.{0,1,3}.{weight,bias}` (LayerNorm, Linear, GELU, Linear).

It is small (56-pixel tiles, one 32-wide block, one tile per image: four image tokens), so an image costs
milliseconds; what it shows the model is noise by design — the tests assert behaviour, never wording.
Written with the `gguf` package (llama.cpp's gguf-py on PyPI).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SMOLLM2_EMBD = 576  # n_embd of SmolLM2-135M, the bundled model


def build_internvl_mmproj(
    path: Path,
    *,
    llm_embd: int = SMOLLM2_EMBD,
    n_embd: int = 32,
    n_ff: int = 64,
    n_head: int = 2,
    n_layer: int = 1,
    image_size: int = 56,
    patch: int = 14,
    scale: int = 2,
    seed: int = 0,
) -> Path:
    import gguf

    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch="clip")
    writer.add_string("general.name", "tiny-internvl-mmproj")
    writer.add_string("clip.projector_type", "internvl")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.use_gelu", True)
    for key, value in {
        "image_size": image_size,
        "patch_size": patch,
        "embedding_length": n_embd,
        "feed_forward_length": n_ff,
        "block_count": n_layer,
        "attention.head_count": n_head,
        "projection_dim": llm_embd,
        "projector.scale_factor": scale,
        "preproc_min_tiles": 1,
        "preproc_max_tiles": 1,
    }.items():
        writer.add_uint32(f"clip.vision.{key}", value)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    writer.add_array("clip.vision.image_mean", [0.485, 0.456, 0.406])  # InternVL's (ImageNet) normalisation
    writer.add_array("clip.vision.image_std", [0.229, 0.224, 0.225])

    def random(name: str, *shape: int, half: bool = False) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float16 if half else np.float32))

    def norm(name: str, width: int) -> None:
        writer.add_tensor(f"{name}.weight", np.ones(width, np.float32))
        writer.add_tensor(f"{name}.bias", np.zeros(width, np.float32))

    random("v.patch_embd.weight", n_embd, 3, patch, patch, half=True)
    random("v.patch_embd.bias", n_embd)
    random("v.class_embd", n_embd)
    random("v.position_embd.weight", (image_size // patch) ** 2 + 1, n_embd)  # the patches and the class token
    for i in range(n_layer):
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            random(f"v.blk.{i}.{name}.weight", n_embd, n_embd, half=True)
            random(f"v.blk.{i}.{name}.bias", n_embd)
        norm(f"v.blk.{i}.ln1", n_embd)
        norm(f"v.blk.{i}.ln2", n_embd)
        random(f"v.blk.{i}.ls1.weight", n_embd)
        random(f"v.blk.{i}.ls2.weight", n_embd)
        random(f"v.blk.{i}.ffn_up.weight", n_ff, n_embd, half=True)
        random(f"v.blk.{i}.ffn_up.bias", n_ff)
        random(f"v.blk.{i}.ffn_down.weight", n_embd, n_ff, half=True)
        random(f"v.blk.{i}.ffn_down.bias", n_embd)
    merged = n_embd * scale * scale  # pixel shuffle folds scale² patches into one token
    norm("mm.model.mlp.0", merged)
    random("mm.model.mlp.1.weight", llm_embd, merged, half=True)
    random("mm.model.mlp.1.bias", llm_embd)
    random("mm.model.mlp.3.weight", llm_embd, llm_embd, half=True)
    random("mm.model.mlp.3.bias", llm_embd)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
