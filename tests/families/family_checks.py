"""The checks every model family passes on its tiny model: the label mask on the real token ids of its chat
template, one HF Trainer step with LoRA (PEFT, the family's default targets) and full fine-tuning, left-padded
batched generation equal to one by one, and a saved model (and a merged LoRA export) that reloads in its own
transformers layout with identical logits.

A family's test file sets `NAME = "<family>"` and imports the `test_*` functions below (pytest runs them there,
on that family's tiny model, built once per file by the `tiny` fixture of conftest.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import Trainer, TrainingArguments

from productlens.collate import product_of
from productlens.families import IGNORE_INDEX
from productlens.families.collate import FamilyCollator, example_lengths
from productlens.task.prompts import AnswerTemplate

TEMPLATE = AnswerTemplate()
TEXTS = [
    "What is shown in this image? Product: Medium Lola Bag, Category: CROSSBODY, Full Price: 2490.0",
    "Product: Check Wool Scarf, Large, Category: SCARVES, Full Price: 650.0",
    "Product: Belt, Category: BELTS, Full Price: 390.0",
] * 4
SIZES = [(64, 40), (30, 70), (48, 48)]  # different sizes (and aspect ratios) in one batch


def photo(size: tuple[int, int], k: int) -> Image.Image:
    image = Image.new("RGB", size, (240, 240, 235))
    ImageDraw.Draw(image).ellipse((4, 4, size[0] // 2 + 4 * k, size[1] - 4), fill=(200 - 60 * k, 40 * k, 90))
    return image


def rows() -> list[dict]:
    products = [("Medium Lola Bag", "CROSSBODY", 2490.0), ("Check Wool Scarf, Large", "SCARVES", 650.0)]
    products.append(("Belt", "BELTS", 390.0))
    return [
        {"id": str(k), "image": photo(size, k), "title": t, "category": c, "price": p}
        for k, (size, (t, c, p)) in enumerate(zip(SIZES, products, strict=True))
    ]


def test_label_mask_on_real_token_ids(tiny):
    family, processor, _, _ = tiny
    check_label_mask(family, processor)
    with pytest.raises(ValueError, match="max_length"):
        FamilyCollator(family, processor, TEMPLATE, max_length=8)(rows())


def test_lora_step_through_the_trainer(fresh, tmp_path):
    check_lora_step(*fresh, tmp_path)


def test_full_step_through_the_trainer(fresh, tmp_path):
    check_full_step(*fresh, tmp_path)


def test_batched_generation_equals_one_by_one(tiny):
    check_batched_generation(*tiny[:3])


def test_save_reload_and_merged_export_give_identical_logits(fresh, tmp_path):
    family, processor, model = fresh
    check_reload(family, processor, model, tmp_path / "saved")
    check_merged_export(family, processor, model, tmp_path / "merged")


# ---- labels -----------------------------------------------------------------------------------------------


def check_label_mask(family, processor) -> None:
    """Only the completion (answer + end-of-turn) is supervised: never the prompt, image tokens or padding; the
    prompt part equals what generation feeds the model for the same photo alone."""
    data = rows()
    collator = FamilyCollator(family, processor, TEMPLATE)
    batch = collator(data)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]  # [B, L]
    assert ids.shape[0] == len(data) and ids.shape == labels.shape == mask.shape
    end_id = processor.tokenizer.convert_tokens_to_ids(family.end_of_turn)
    image_id = family.image_token_id(processor)
    lengths = []
    for i, row in enumerate(data):
        completion = collator.completion(row)
        answer = TEMPLATE.render_answer(product_of(row))
        assert answer in completion and family.end_of_turn in completion
        want = processor.tokenizer(completion, add_special_tokens=False)["input_ids"]
        alone = family.encode(processor, [collator.prompt], [row["image"]])["input_ids"][0]  # [Lp]
        n, total = len(alone), int(mask[i].sum())
        assert total == n + len(want)
        assert ids[i, :n].tolist() == alone.tolist()  # training prompt == inference prompt
        assert ids[i, n:total].tolist() == want
        assert labels[i, :n].eq(IGNORE_INDEX).all() and labels[i, total:].eq(IGNORE_INDEX).all()
        assert labels[i, n:total].tolist() == want
        assert end_id in want and not (labels[i] == image_id).any()
        assert int((alone == image_id).sum()) == family.image_tokens(processor, *row["image"].size) > 0
        lengths.append(total)
    assert len(set(lengths)) > 1 and mask.sum(1).tolist() == lengths  # ragged rows, right-padded
    dataset = datasets.Dataset.from_list(data).cast_column("image", datasets.Image())
    assert example_lengths(family, processor, TEMPLATE, dataset) == lengths  # exact, from sizes alone
    assert (ids[mask == 0] == family.pad_token_id(processor)).all()


# ---- training ---------------------------------------------------------------------------------------------


def trainer_step(model, family, processor, out: Path) -> float:
    """One optimizer step through the HF Trainer on the three rows; -> its training loss."""
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=1,
        per_device_train_batch_size=3,
        learning_rate=1e-2,
        report_to="none",
        remove_unused_columns=False,
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=1,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=rows(),
        data_collator=FamilyCollator(family, processor, TEMPLATE),
    )
    return trainer.train().training_loss


def check_lora_step(family, processor, model, out: Path) -> None:
    """PEFT LoRA on the family's default targets: adapters on the language model only; one step moves them."""
    from peft import LoraConfig, get_peft_model

    settings = LoraConfig(
        r=4, lora_alpha=8, target_modules=family.lora_target_modules(), task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, settings)
    adapted = [n for n, _ in peft_model.named_parameters() if "lora_B" in n]
    assert adapted and {family.part_of(n) for n in adapted} == {"language"}
    assert {t for t in family.lora_targets if any(f".{t}." in n for n in adapted)} == set(family.lora_targets)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_B" in n}
    loss = trainer_step(peft_model, family, processor, out)
    assert torch.isfinite(torch.tensor(loss))
    after = dict(peft_model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)


def check_full_step(family, processor, model, out: Path) -> None:
    """Full fine-tuning with the vision tower frozen (by `part_of`): the tower stays, the rest moves."""
    for name, param in model.named_parameters():
        param.requires_grad_(family.part_of(name) != "vision")
    parts = {family.part_of(n) for n, _ in model.named_parameters()}
    assert parts == {"vision", "projection", "language"}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = trainer_step(model, family, processor, out)
    assert torch.isfinite(torch.tensor(loss))
    moved = {family.part_of(n) for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert moved == {"projection", "language"}


# ---- generation and export --------------------------------------------------------------------------------


QUESTIONS = [TEMPLATE.question, "What is it?", "Name the product, its category and its full price, please."]


def generate(family, processor, model, images, questions) -> tuple[list[list[int]], torch.Tensor]:
    """Greedy answers (new token ids, padding dropped) of one left-padded batch, and its attention mask."""
    prompts = [family.prompt(processor, q) for q in questions]
    inputs = family.encode(processor, prompts, images, padding_side="left")
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=6,
            do_sample=False,
            eos_token_id=family.stop_token_ids(processor),
            pad_token_id=family.pad_token_id(processor),
        )
    new = out[:, inputs["input_ids"].shape[1] :].tolist()
    return [[t for t in row if t != family.pad_token_id(processor)] for row in new], inputs["attention_mask"]


def check_batched_generation(family, processor, model) -> None:
    """Left-padded batched greedy answers equal one-by-one answers (photos and questions of different lengths)."""
    model.eval()
    images = [row["image"] for row in rows()]
    batched, mask = generate(family, processor, model, images, QUESTIONS)
    assert not mask.all() and mask[:, -1].all()  # the batch was padded, on the left
    single = [
        generate(family, processor, model, [im], [q])[0][0] for im, q in zip(images, QUESTIONS, strict=True)
    ]
    assert batched == single and all(batched)


def logits(family, processor, model) -> torch.Tensor:
    data = rows()
    inputs = family.encode(
        processor, [family.prompt(processor, TEMPLATE.question)] * 3, [r["image"] for r in data]
    )
    with torch.inference_mode():
        return model.eval()(**inputs).logits  # [B, L, V]


def check_reload(family, processor, model, folder: Path) -> None:
    """save_pretrained (model + processor) -> the family's loaders -> identical logits, own layout, safetensors."""
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    names = {p.name for p in folder.iterdir()}
    assert "model.safetensors" in names and not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] in family.model_types and "auto_map" not in config
    reloaded = family.load_model(folder)
    assert type(reloaded) is type(model)
    assert torch.equal(
        logits(family, family.load_processor(folder), reloaded), logits(family, processor, model)
    )


def check_merged_export(family, processor, model, folder: Path) -> None:
    """A LoRA adapter with non-zero weights, merged and saved -> reloads with the merged model's logits."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        model,
        LoraConfig(r=4, lora_alpha=8, target_modules=family.lora_target_modules(), init_lora_weights=False),
    )
    adapted = logits(family, processor, peft_model)
    merged = peft_model.merge_and_unload()
    torch.testing.assert_close(logits(family, processor, merged), adapted, rtol=1e-4, atol=1e-4)
    check_reload(family, processor, merged, folder)


# ---- predict and serve ------------------------------------------------------------------------------------


def test_predict_and_serve_answer_photos(tiny, tmp_path):
    check_predict_and_serve(tiny[0], tiny[3], tmp_path)


def check_predict_and_serve(family, folder: Path, tmp: Path) -> None:
    """`productlens predict` (batched) gives each photo the answer the Predictor gives it alone; a real server
    answers the same on /v1/predict and, through the `openai` client, on /v1/chat/completions."""
    import base64

    import httpx
    from openai import OpenAI
    from typer.testing import CliRunner

    from productlens.cli import app as cli
    from productlens.predict import Predictor
    from productlens.serve.app import create_app, serve_in_thread

    images = [row["image"] for row in rows()]
    paths = []
    for k, image in enumerate(images):
        paths.append(tmp / f"photo{k}.png")
        image.save(paths[-1])
    predictor = Predictor.load(folder, max_new_tokens=12)
    assert predictor.family is family
    alone = [predictor.predict([image])[0].raw_text for image in images]
    assert all(alone)

    out = tmp / "preds.jsonl"
    command = ["predict", *map(str, paths), "--model", str(folder), "--out", str(out), "--batch-size", "3"]
    result = CliRunner().invoke(cli, [*command, "--max-new-tokens", "12"])
    assert result.exit_code == 0, result.output
    written = {Path(r["input"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert [written[p.name]["raw_text"] for p in paths] == alone

    with serve_in_thread(create_app(predictor, model_name="tiny")) as url:
        png = paths[0].read_bytes()
        files = {"files": [("file", ("photo.png", png, "image/png"))]}
        response = httpx.post(f"{url}/v1/predict", timeout=60, **files)
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["raw_text"] == alone[0]
        client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        photo = f"data:image/png;base64,{base64.b64encode(png).decode()}"
        question = [
            {"type": "image_url", "image_url": {"url": photo}},
            {"type": "text", "text": TEMPLATE.question},
        ]
        answer = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": question}], max_tokens=12, temperature=0
        )
    assert answer.choices[0].message.content == alone[0]  # the chat prompt is the family's own prompt
    image_tokens = family.image_tokens(predictor.processor, *images[0].size)
    assert answer.usage.prompt_tokens > image_tokens > 0
