"""The pipeline on every native family's tiny model, through productlens's own entry points: `train` (LoRA with
generation-based evaluation and --merge; full fine-tuning with the vision tower opened at its own learning rate),
`Predictor.load` of the run folder (adapter merged on load) against the merged export, and `evaluate` with its
baselines (the nearest-neighbour one reads the family's image features)."""

import json

import pytest
import torch
from test_train import make_prepared

from productlens.config import load_config
from productlens.evaluate import evaluate
from productlens.families import get_family
from productlens.predict import Predictor
from productlens.train import ProductTrainer, load_model, train, training_arguments

NAMES = ["qwen2_5_vl", "qwen3_vl", "smolvlm", "gemma3"]
TEXTS = [
    f"What is shown in this image? Product: {size} {shape}, Category: {category}, Full Price: "
    for size in ("Small", "Medium", "Large", "Oversized")
    for shape, category in (("Bag", "BAGS"), ("Belt", "BELTS"), ("Scarf", "SCARVES"))
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("data"), sizes=(8, 4, 4))


def settings(base, data, out, *more):
    return [
        f"model.path={base}",
        f"data.path={data}",
        f"training.output_dir={out}",
        "training.report_to=none",
        "training.per_device_train_batch_size=4",
        "training.per_device_eval_batch_size=4",
        "training.disable_tqdm=true",
        "training.logging_steps=1",
        "eval.sample_size=4",
        "eval.max_new_tokens=8",
        *more,
    ]


@pytest.mark.parametrize("name", NAMES)
def test_lora_run_evaluates_merges_and_predicts(name, data, tmp_path):
    family = get_family(name)
    base = family.save_tiny(tmp_path / "base", TEXTS)
    out = tmp_path / "run"
    config = load_config(
        None,
        settings(
            base,
            data,
            out,
            "training.max_steps=2",
            "training.eval_steps=2",
            "training.save_steps=2",
            "training.metric_for_best_model=eval_category_accuracy",
            "finetune.merge=true",
        ),
    )
    result = train(config)
    assert result.adapter_dir == out / "adapter" and result.model_dir == out / "model"
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    scores = next(e for e in state["log_history"] if "eval_category_accuracy" in e)
    assert 0.0 <= scores["eval_category_accuracy"] <= 1.0 and "eval_price_median_ape" in scores
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    targets = adapter["target_modules"]
    assert family.language_module in targets
    saved = adapter["modules_to_save"]  # the projector, trained whole
    assert saved and all(any(end in name for end in family.projection_modules) for name in saved)

    from datasets import load_from_disk

    photos = [row["image"].convert("RGB") for row in load_from_disk(str(data / "dataset"))["test"]]
    on_load = Predictor.load(out, max_new_tokens=8).predict(photos)  # base + adapter, merged on load
    merged = Predictor.load(out / "model", max_new_tokens=8).predict(photos)  # the export
    assert [p.raw_text for p in on_load] == [p.raw_text for p in merged]

    metrics = evaluate(
        out, data, "test", out_dir=tmp_path / "eval", batch_size=4, max_new_tokens=8, nn_baseline=True
    )
    assert metrics["n"] == metrics["model"]["n"] == len(photos)
    assert "nearest_neighbour" in metrics["baselines"]
    assert (tmp_path / "eval" / "report.html").is_file()


@pytest.mark.parametrize("name", NAMES)
def test_full_fine_tuning_opens_the_vision_tower_at_its_own_rate(name, data, tmp_path):
    family = get_family(name)
    base = family.save_tiny(tmp_path / "base", TEXTS)
    config = load_config(
        None,
        settings(
            base,
            data,
            tmp_path / "run",
            "finetune.method=full",
            "finetune.freeze_vision=false",
            "finetune.vision_learning_rate=1e-5",
            "finetune.projection_learning_rate=3e-4",
            "training.max_steps=1",
            "training.eval_strategy=no",
        ),
    )
    args = training_arguments(config)
    model = load_model(config, args)
    trainer = ProductTrainer(model=model, args=args, finetune=config.finetune)
    optimizer = trainer.create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    rates = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            rates.setdefault(family.part_of(names[id(param)]), set()).add(group["lr"])
    assert rates == {"vision": {1e-5}, "projection": {3e-4}, "language": {args.learning_rate}}
    assert all(p.requires_grad for p in model.parameters())
    assert not any(torch.isnan(p).any() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_bf16_lora_trains_float32_master_weights(name, data, tmp_path):
    """model.dtype bfloat16 + training.bf16: the adapters and the projector's trainable copy are float32 (updates
    at small learning rates are kept), frozen weights stay bfloat16."""
    family = get_family(name)
    base = family.save_tiny(tmp_path / "base", TEXTS)
    extra = [
        "model.dtype=bfloat16",
        "training.bf16=true",
        "training.use_cpu=true",
        "training.eval_strategy=no",
    ]
    config = load_config(None, settings(base, data, tmp_path / "run", *extra))
    model = load_model(config, training_arguments(config))
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.dtype for n, p in model.named_parameters() if not p.requires_grad}
    assert any("lora_" in n for n in trainable) and any("modules_to_save" in n for n in trainable)
    assert set(trainable.values()) == {torch.float32}
    assert set(frozen.values()) == {torch.bfloat16}


def test_a_checkpoint_of_no_known_family_asks_for_family(tmp_path):
    """A config.json whose model_type no family serves: `predict` stops with exit 2 and says to pass --family."""
    from typer.testing import CliRunner

    from productlens.cli import app

    folder = get_family("smolvlm").save_tiny(tmp_path / "tiny", TEXTS)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "my_vlm"}))
    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 40, 40)).save(photo)
    result = CliRunner().invoke(app, ["predict", str(photo), "--model", str(folder)])
    assert result.exit_code == 2 and "my_vlm" in result.output and "--family" in result.output


@pytest.mark.parametrize("name", NAMES)
def test_constrained_decoding_holds_on_every_tokenizer(name, tmp_path):
    """Constrained decoding on the family's own tokenizer: even a random model answers in the template, with a
    category from the allowed list and a numeric price, and in JSON that a schema asks for; streamed chunks add up
    to the answer."""
    from family_checks import rows

    folder = get_family(name).save_tiny(tmp_path / "tiny", TEXTS)
    predictor = Predictor.load(
        folder, max_new_tokens=60, constrain_categories=["BAGS", "BELTS"], constrain_price=True
    )
    for prediction in predictor.predict([row["image"] for row in rows()]):
        assert prediction.failures == () and prediction.category in ("BAGS", "BELTS") and prediction.price > 0

    # the OpenAI endpoint's JSON schema (response_format), through the family's chat prompt
    from productlens.chat import ChatJob

    family = predictor.family
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string", "maxLength": 20}, "price": {"type": "number"}},
        "required": ["title", "price"],
    }
    prompt = family.chat_prompt(predictor.processor, [("user", ["Describe it as JSON"], 1)])
    job = ChatJob(prompt=prompt, images=[rows()[0]["image"]], max_new_tokens=80, json_schema=schema)
    (result,) = predictor.chat([job])
    answer = json.loads(result.text)
    assert result.finish_reason == "stop" and isinstance(answer["title"], str)
    assert isinstance(answer["price"], int | float)

    # streaming: the chunks add up to the answer, even where sampled byte tokens spell characters piece by piece
    torch.manual_seed(0)
    for k in range(3):
        chunks = []
        job = ChatJob(prompt=prompt, images=[rows()[k]["image"]], max_new_tokens=40, temperature=1.5)
        job.on_text = chunks.append
        (result,) = predictor.chat([job])
        assert "".join(chunks) == result.text and len(chunks) > 1
