"""Parity with the official Phi-3-Vision remote code, on the tiny reference fixture (shared/fixtures/phi3v-reference).

Everything is loaded through the normal Auto*.from_pretrained path, in fp32 with eager attention, as the fixture
was produced. Tolerances: pixel_values atol 1e-6; CLIP features, merged features, projected embeddings and
inputs_embeds atol=rtol=1e-5; last hidden state, logits, scores and losses atol=rtol=1e-4; ids, sizes, slot counts
and generated tokens exact. (Measured max abs diffs on this machine are 0 for all of them.)
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor

import productlens.phi3v  # noqa: F401  (registers phi3_v with the Auto classes)
from productlens.phi3v import Phi3VConfig, Phi3VForCausalLM, Phi3VProcessor

FIXTURE = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "phi3v-reference"
MODEL_DIR = FIXTURE / "model"
CASES = sorted(p.name for p in (FIXTURE / "cases").glob("*") if p.is_dir())
TRAIN_CASES = [c for c in CASES if (FIXTURE / "cases" / c / "train.npz").exists()]
FEATURE_TOL = {"atol": 1e-5, "rtol": 1e-5}
OUTPUT_TOL = {"atol": 1e-4, "rtol": 1e-4}


def _npz(case: str, name: str) -> dict[str, torch.Tensor]:
    with np.load(FIXTURE / "cases" / case / f"{name}.npz") as data:
        return {k: torch.from_numpy(data[k]) for k in data.files}


def _meta(case: str) -> dict:
    return json.loads((FIXTURE / "cases" / case / "meta.json").read_text())


def test_fixture_present():
    assert len(CASES) == 5 and len(TRAIN_CASES) == 2, f"reference fixture missing or changed at {FIXTURE}"


@pytest.fixture(scope="module")
def model() -> Phi3VForCausalLM:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(MODEL_DIR, attn_implementation="eager", dtype=torch.float32)


@pytest.fixture(scope="module")
def processors() -> dict[int, Phi3VProcessor]:
    return {n: AutoProcessor.from_pretrained(MODEL_DIR, num_crops=n) for n in (4, 16)}


@pytest.fixture(scope="module", params=CASES)
def run(request, model, processors) -> dict:
    """Process the case's PNG with our processor and run every stage of our model once."""
    case = request.param
    meta = _meta(case)
    processor = processors[meta["num_crops"]]
    image = Image.open(FIXTURE / "cases" / case / meta["image_files"][0])
    inputs = processor(text=meta["prompt"], images=image)
    ids_before = inputs["input_ids"].clone()
    embedding = model.model.vision_embed_tokens
    with torch.no_grad():
        pixel_values, image_sizes = inputs["pixel_values"], inputs["image_sizes"]
        out = {
            "clip_patch_features": embedding.patch_features(pixel_values.flatten(0, 1)),
            "image_features_merged": embedding.merged_features(pixel_values, image_sizes),
            "image_embeds": embedding(pixel_values, image_sizes),
            "inputs_embeds": model.model.embed_inputs(inputs["input_ids"], pixel_values, image_sizes),
        }
        forward = model(**inputs, use_cache=False, output_hidden_states=True)
        generated = model.generate(
            **inputs,
            max_new_tokens=meta["generation"]["max_new_tokens"],
            do_sample=False,
            eos_token_id=meta["generation"]["eos_token_id"],
            pad_token_id=32000,
            output_scores=True,
            return_dict_in_generate=True,
        )
    return {
        "case": case,
        "meta": meta,
        "processor": processor,
        "image": image,
        "inputs": inputs,
        "ids_before": ids_before,
        "ours": out,
        "forward": forward,
        "generated": generated,
        "ref_in": _npz(case, "inputs"),
        "ref": _npz(case, "outputs"),
    }


def test_config_loads_through_autoconfig():
    config = AutoConfig.from_pretrained(MODEL_DIR)
    assert isinstance(config, Phi3VConfig)
    assert config.rope_parameters["rope_type"] == "longrope"
    assert config.vision_config.hidden_size == 32 and config.vision_config.num_hidden_layers == 3
    assert config._attn_implementation is None  # stored flash_attention_2 dropped (flash_attn not installed)


def test_input_ids_and_slot_counts_exact(run):
    ours, ref = run["inputs"]["input_ids"], run["ref_in"]["input_ids"]
    assert torch.equal(ours, ref)
    assert int((ours < 0).sum()) == int(ref.lt(0).sum()) == run["meta"]["num_img_tokens"][0]
    assert torch.equal(run["inputs"]["attention_mask"], run["ref_in"]["attention_mask"])


def test_pixel_values_and_image_sizes(run):
    torch.testing.assert_close(
        run["inputs"]["pixel_values"], run["ref_in"]["pixel_values"], atol=1e-6, rtol=0
    )
    assert torch.equal(run["inputs"]["image_sizes"], run["ref_in"]["image_sizes"])
    counts = run["processor"].image_processor(run["image"])["num_img_tokens"]
    assert counts == run["ref_in"]["num_img_tokens"].tolist()
    assert run["processor"].num_image_tokens(*run["image"].size) == counts[0]


@pytest.mark.parametrize(
    "name", ["clip_patch_features", "image_features_merged", "image_embeds", "inputs_embeds"]
)
def test_image_feature_stages(run, name):
    torch.testing.assert_close(run["ours"][name], run["ref"][name], **FEATURE_TOL)


def test_inputs_embeds_hold_image_embeds_at_slots(run):
    slots = run["inputs"]["input_ids"][0] < 0
    assert torch.equal(run["ours"]["inputs_embeds"][0, slots], run["ours"]["image_embeds"])


def test_last_hidden_state_and_logits(run):
    forward, ref = run["forward"], run["ref"]
    torch.testing.assert_close(forward.hidden_states[-1], ref["last_hidden_state"], **OUTPUT_TOL)
    logits = forward.logits[:, ref["logits_last16_positions"]]
    torch.testing.assert_close(logits, ref["logits_last16"], **OUTPUT_TOL)


def test_greedy_generation(run):
    generated, ref = run["generated"], run["ref"]
    prompt_len = run["inputs"]["input_ids"].shape[1]
    assert generated.sequences[0, prompt_len:].tolist() == ref["gen_new_tokens"].tolist()
    # step scores: the official top-8 ids carry the same logits here
    scores = torch.stack(generated.scores)[:, 0]  # [steps, vocab]
    torch.testing.assert_close(scores.gather(1, ref["gen_topk_ids"]), ref["gen_topk_values"], **OUTPUT_TOL)
    # the official code clamps image slots to 0 in the returned sequence; ours keeps the caller's ids
    assert torch.equal(generated.sequences.clamp(min=0), ref["gen_sequences"])


def test_caller_input_ids_not_modified(run):
    # the official embedding clamps input_ids in place (fixture: input_ids_after_forward); ours must not
    assert torch.equal(run["inputs"]["input_ids"], run["ids_before"])
    assert not torch.equal(run["ids_before"], run["ref"]["input_ids_after_forward"])


@pytest.fixture(scope="module", params=TRAIN_CASES)
def train_case(request, processors) -> dict:
    case = request.param
    meta = _meta(case)
    processor = processors[meta["num_crops"]]
    image = Image.open(FIXTURE / "cases" / case / meta["image_files"][0])
    return {"meta": meta, "processor": processor, "image": image, "train": _npz(case, "train")}


def test_training_loss_and_per_token_loss(train_case, model):
    train = train_case["train"]
    images = train_case["processor"].image_processor(train_case["image"])
    with torch.no_grad():
        out = model(
            input_ids=train["input_ids"],
            attention_mask=train["attention_mask"],
            pixel_values=images["pixel_values"],
            image_sizes=images["image_sizes"],
            labels=train["labels"],
            use_cache=False,
        )
    torch.testing.assert_close(out.loss, train["loss"], **OUTPUT_TOL)
    supervised = (train["labels"][0, 1:] != -100).nonzero().squeeze(1)  # positions predicting an answer token
    logits = out.logits[0, supervised]  # logits at L-1 ... L+26
    torch.testing.assert_close(logits[None], train["logits_answer_positions"], **OUTPUT_TOL)
    per_token = F.cross_entropy(logits.float(), train["labels"][0, 1:][supervised], reduction="none")
    torch.testing.assert_close(per_token, train["per_token_loss"], **OUTPUT_TOL)


def test_training_batch_reproduces_fixture_labels(train_case):
    train = train_case["train"]
    answer = train_case["meta"]["train"]["answer"].removesuffix("<|end|>")
    batch = train_case["processor"].training_batch(
        [train_case["meta"]["prompt"]], [answer], [train_case["image"]], answer_suffix="<|end|>"
    )
    assert torch.equal(batch["input_ids"], train["input_ids"])
    assert torch.equal(batch["labels"], train["labels"])
    assert torch.equal(batch["attention_mask"], train["attention_mask"])


def test_sdpa_matches_eager_on_fixture(processors, model):
    sdpa = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)  # sdpa is the default
    assert sdpa.config._attn_implementation == "sdpa"
    assert sdpa.config.vision_config._attn_implementation == "sdpa"
    case = "b_portrait_600x900_nc4"
    meta = _meta(case)
    inputs = processors[4](text=meta["prompt"], images=Image.open(FIXTURE / "cases" / case / "image.png"))
    with torch.no_grad():
        eager_out = model(**inputs, output_hidden_states=True)
        sdpa_out = sdpa(**inputs, output_hidden_states=True)
    torch.testing.assert_close(sdpa_out.hidden_states[-1], eager_out.hidden_states[-1], **OUTPUT_TOL)
    torch.testing.assert_close(sdpa_out.logits, eager_out.logits, **OUTPUT_TOL)
