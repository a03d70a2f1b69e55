"""`--model BASE --adapter RUN/adapter` uses the run's settings (answer template, num_crops), as the run
folder itself would: the predictor asks the question the adapter was trained on."""

import pytest
import torch
from PIL import Image

import productlens.phi3v  # noqa: F401
from productlens.config import load_config, save_config
from productlens.phi3v.tiny import save_tiny_model
from productlens.predict import Predictor
from productlens.task.prompts import AnswerTemplate
from productlens.train import load_model, load_processor, training_arguments

QUESTION = "Which product is this, and what does it cost?"
FIELDS = {"Name": "title", "Type": "category", "Cost": "price"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder as `productlens train` leaves it for LoRA: config.yaml and adapter/ (+ processor)."""
    root = tmp_path_factory.mktemp("adapter-run")
    texts = [f"{QUESTION} Name: Small Bag, Type: BAGS, Cost: {p}" for p in (10, 20, 30)] * 4
    base = save_tiny_model(root / "base", texts, vocab_size=400, image_size=56, num_crops=4)
    config = load_config(
        None,
        [
            f"model.path={base}",
            "model.num_crops=2",
            f"task.question={QUESTION}",
            f"task.fields={FIELDS}",
            f"training.output_dir={root / 'run'}",
            "training.report_to=none",
        ],
    )
    torch.manual_seed(0)
    model = load_model(config, training_arguments(config))
    with torch.no_grad():  # a trained-looking adapter: nonzero LoRA B
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    save_config(config, root / "run" / "config.yaml")
    model.save_pretrained(root / "run" / "adapter")
    load_processor(config).save_pretrained(root / "run" / "adapter")
    return root / "run", base


def test_base_plus_adapter_reads_the_runs_settings(run):
    folder, base = run
    expected = AnswerTemplate.from_dict({"question": QUESTION, "fields": FIELDS})
    whole = Predictor.load(folder, max_new_tokens=8)
    split = Predictor.load(base, adapter=folder / "adapter", max_new_tokens=8)
    for predictor in (whole, split):
        assert predictor.template == expected
        assert predictor.processor.image_processor.num_crops == 2
        assert QUESTION in predictor._prompt
    photos = [Image.new("RGB", (90, 60), (200, 40, 40)), Image.new("RGB", (60, 120), (20, 90, 200))]
    assert [p.raw_text for p in split.predict(photos)] == [p.raw_text for p in whole.predict(photos)]


def test_options_given_on_the_command_line_still_win(run):
    folder, base = run
    mine = AnswerTemplate(question="What is this?")
    predictor = Predictor.load(base, adapter=folder / "adapter", num_crops=1, template=mine, max_new_tokens=4)
    assert predictor.template == mine and predictor.processor.image_processor.num_crops == 1
