"""Benchmark the Phi-3-Vision pieces: image processor vs a naive per-image baseline, tiny-model forward/generate.

In: nothing (random photos, a random tiny model). Out: images/s and tokens/s with ratios against the baselines,
measured in the same run. Run: `.venv/bin/python bench/bench_phi3v.py` (about 30 s on 2 CPU cores).
"""

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from productlens.phi3v import Phi3VForCausalLM, Phi3VImageProcessor, Phi3VProcessor
from productlens.phi3v.image_processing import hd_grid
from productlens.phi3v.tiny import build_tokenizer, tiny_config

PHOTO_SIZES = [(800, 800), (1920, 1080), (600, 900), (1200, 400)]  # (width, height)


def naive_preprocess(
    images: list[Image.Image], num_crops: int, processor: Phi3VImageProcessor
) -> torch.Tensor:
    """Baseline: the official steps written plainly, one image at a time (ToTensor, Normalize, cat, pad, stack)."""
    size = processor.crop_size
    mean = torch.tensor(processor.image_mean)[:, None, None]
    std = torch.tensor(processor.image_std)[:, None, None]
    out = []
    for image in images:
        image = image.convert("RGB")
        transposed = image.width < image.height
        if transposed:
            image = image.transpose(Image.Transpose.TRANSPOSE)
        new_w, new_h, _, _ = hd_grid(image.width, image.height, num_crops, size)
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
        pad = math.ceil(new_h / size) * size - new_h
        canvas = Image.new("RGB", (new_w, new_h + pad), (255, 255, 255))
        canvas.paste(image, (0, pad // 2))
        if transposed:
            canvas = canvas.transpose(Image.Transpose.TRANSPOSE)
        hd = torch.from_numpy(np.array(canvas)).permute(2, 0, 1).float().div(255)  # ToTensor
        hd = (hd - mean) / std  # Normalize
        h, w = hd.shape[1] // size, hd.shape[2] // size
        glb = F.interpolate(hd[None], size=(size, size), mode="bicubic", align_corners=False)
        crops = hd.reshape(1, 3, h, size, w, size).permute(0, 2, 4, 1, 3, 5).reshape(-1, 3, size, size)
        slots = torch.cat([glb, crops])
        slots = torch.cat([slots, torch.zeros(num_crops + 1 - len(slots), 3, size, size)])
        out.append(slots)
    return torch.stack(out)


def best_of(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_image_processor() -> None:
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in PHOTO_SIZES]
    print(f"image processor, {len(photos)} photos {PHOTO_SIZES}, best of 5")
    for num_crops in (4, 16):
        processor = Phi3VImageProcessor(num_crops=num_crops)
        ours = processor(photos)["pixel_values"]
        assert torch.equal(ours, naive_preprocess(photos, num_crops, processor)), "baseline disagrees"
        t_ours = best_of(lambda p=processor, n=num_crops: p(photos, num_crops=n))
        t_naive = best_of(lambda p=processor, n=num_crops: naive_preprocess(photos, n, p))
        print(
            f"  num_crops {num_crops:2d}: ours {len(photos) / t_ours:6.1f} img/s, naive {len(photos) / t_naive:6.1f} "
            f"img/s, ratio {t_naive / t_ours:.2f}x"
        )


def bench_tiny_model() -> None:
    texts = [
        "Product: Medium Lola Bag, Category: CROSSBODY, Full Price: 2490.0",
        "What is shown in this image?",
    ]
    tokenizer = build_tokenizer(texts * 50, vocab_size=1000)
    stop = [tokenizer.convert_tokens_to_ids("<|end|>"), tokenizer.eos_token_id]
    config = tiny_config(len(tokenizer), 112, pad_token_id=tokenizer.pad_token_id, eos_token_id=stop)
    torch.manual_seed(0)
    model = Phi3VForCausalLM(config).eval()
    processor = Phi3VProcessor(Phi3VImageProcessor.for_model(config, num_crops=4), tokenizer)
    rng = np.random.default_rng(1)
    photos = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in PHOTO_SIZES]
    prompts = [processor.chat_prompt("What is shown in this image?")] * len(photos)
    batch = processor(text=prompts, images=photos)
    singles = [processor(text=p, images=i) for p, i in zip(prompts, photos, strict=True)]
    new_tokens = 32
    settings = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    with torch.inference_mode():
        t_forward = best_of(lambda: model(**batch))
        t_batch = best_of(lambda: model.generate(**batch, **settings), repeats=2)
        t_single = best_of(lambda: [model.generate(**s, **settings) for s in singles], repeats=2)
    prompt_tokens = int(batch["attention_mask"].sum())
    generated = new_tokens * len(photos)
    print(
        f"tiny model (image 112, num_crops 4), batch of {len(photos)} prompts, {prompt_tokens} prompt tokens"
    )
    print(f"  forward (prefill incl. CLIP): {prompt_tokens / t_forward:8.0f} prompt tokens/s")
    print(
        f"  generate {new_tokens} tokens: batched {generated / t_batch:6.0f} tokens/s, one prompt at a time "
        f"{generated / t_single:6.0f} tokens/s, ratio {t_single / t_batch:.2f}x"
    )


if __name__ == "__main__":
    torch.set_num_threads(min(2, torch.get_num_threads()))
    bench_image_processor()
    bench_tiny_model()
