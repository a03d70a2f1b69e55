"""The real old stack the official Phi-3-Vision code runs on, as an outside judge of exports.

`install(cache)` puts transformers 4.40.2 (the model card's pin) + tokenizers 0.19.1 + huggingface_hub 0.23 into one
side folder, and transformers 4.41.2 (the first release with a native `Phi3ForCausalLM`, `su` RoPE) into another,
once per cache (pip --target, no dependencies: torch, numpy and safetensors come from this venv).
`run(paths, mode, *args)` runs this file under that stack in a subprocess and returns its JSON answer.

As a script (old stack only, never productlens): `python old_stack.py MODE EXPORT_DIR NPZ_IN NPZ_OUT`.
    tokenizer: tokenizers 0.19 ids, 4.40 tokenizer class, chat template, config and generation config as read
    clip:      4.40 CLIPVisionModel on the exported vision weights -> hidden_states[-2] patch features
    decoder:   4.41 Phi3ForCausalLM on the exported text weights, fed the given inputs_embeds -> hidden, logits, greedy
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PINS = {
    "t440": ["transformers==4.40.2", "tokenizers==0.19.1", "huggingface_hub==0.23.5"],
    "t441": ["transformers==4.41.2"],
}


def install(cache: Path) -> dict[str, Path]:
    """-> {'t440': folder, 't441': folder}, installed with pip once (a lock keeps parallel sessions apart)."""
    from filelock import FileLock

    cache.mkdir(parents=True, exist_ok=True)
    folders = {name: cache / name for name in PINS}
    with FileLock(str(cache / ".lock")):
        for name, pins in PINS.items():
            done = folders[name] / ".installed"
            if done.is_file() and done.read_text() == " ".join(pins):
                continue
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--no-deps",
                    "--target",
                    str(folders[name]),
                    *pins,
                ],
                capture_output=True,
                text=True,
            )
            if result.returncode:
                raise RuntimeError(
                    f"pip could not install {pins} (PyPI needed once): {result.stderr[-2000:]}"
                )
            done.write_text(" ".join(pins))
    return folders


def run(folders: dict[str, Path], mode: str, *args: str | os.PathLike) -> dict:
    """Run this file as `MODE ARGS...` with the old stack first on the path; -> its JSON answer."""
    order = ["t441", "t440"] if mode == "decoder" else ["t440"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(folders[n]) for n in order))
    env.pop("PYTHONSAFEPATH", None)
    result = subprocess.run(
        [sys.executable, "-s", __file__, mode, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if result.returncode:
        raise AssertionError(f"old stack {mode} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---- the script side (old transformers only) --------------------------------------------------------------------


def _tokenizer(folder: Path, texts_file: Path) -> dict:
    import tokenizers
    import transformers
    from transformers import AutoTokenizer, GenerationConfig, PretrainedConfig

    texts = json.loads(texts_file.read_text())
    raw = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok = AutoTokenizer.from_pretrained(folder)
    chat = [{"role": "user", "content": "<|image_1|>\nWhat is shown in this image?"}]
    config = PretrainedConfig.from_pretrained(folder)
    generation = GenerationConfig.from_pretrained(folder)
    return {
        "versions": [transformers.__version__, tokenizers.__version__],
        "ids": [raw.encode(t).ids for t in texts],
        "tokenizer_class": type(tok).__name__,
        "additional_special_tokens": tok.additional_special_tokens,
        "chat": tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True),
        "rope_scaling": config.rope_scaling,
        "rope_theta": config.rope_theta,
        "eos": generation.eos_token_id,
        "bos": generation.bos_token_id,
        "pad": generation.pad_token_id,
    }


def _clip(folder: Path, inputs: Path, outputs: Path) -> dict:
    import numpy as np
    import torch
    import transformers
    from safetensors.torch import load_file
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = json.loads((folder / "config.json").read_text())
    prefix = "model.vision_embed_tokens.img_processor."
    state = {}
    for path in folder.glob("*.safetensors"):
        state |= {k[len(prefix) :]: v for k, v in load_file(path).items() if k.startswith(prefix)}
    vision = CLIPVisionConfig(**config["vision_config"], attn_implementation="eager")
    model = CLIPVisionModel(vision).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    pixels = torch.from_numpy(np.load(inputs)["crops"])
    with torch.no_grad():
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states
    layer = config["img_processor"].get("layer_idx", -2)
    np.savez(outputs, features=hidden[layer][:, 1:].numpy())
    return {"versions": [transformers.__version__], "dtype": str(next(model.parameters()).dtype)}


def _decoder(folder: Path, inputs: Path, outputs: Path) -> dict:
    import numpy as np
    import torch
    import transformers
    from transformers import Phi3Config, Phi3ForCausalLM

    config = Phi3Config.from_pretrained(folder)  # the exported config.json as the old Phi3Config reads it
    model = Phi3ForCausalLM.from_pretrained(
        folder,
        config=config,
        torch_dtype=torch.float32,
        attn_implementation="eager",  # as the model card
    ).eval()
    data = np.load(inputs)
    results = {}
    for key in sorted(k for k in data.files if k.startswith("embeds_")):
        embeds = torch.from_numpy(data[key])
        mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        with torch.no_grad():
            out = model(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True)
            tokens = model.generate(
                inputs_embeds=embeds,
                attention_mask=mask,
                max_new_tokens=8,
                do_sample=False,
                eos_token_id=int(data["eos"]),
                pad_token_id=int(data["eos"]),
            )
        name = key.removeprefix("embeds_")
        results[f"hidden_{name}"] = out.hidden_states[-1].numpy()
        results[f"logits_{name}"] = out.logits[:, -16:].float().numpy()
        results[f"tokens_{name}"] = tokens[0, -8:].numpy()
    np.savez(outputs, **results)
    rope = type(model.model.layers[0].self_attn.rotary_emb).__name__
    return {"versions": [transformers.__version__], "rotary": rope}


if __name__ == "__main__":
    mode, folder, *rest = sys.argv[1:]
    steps = {"tokenizer": _tokenizer, "clip": _clip, "decoder": _decoder}
    print(json.dumps(steps[mode](Path(folder), *map(Path, rest))))
