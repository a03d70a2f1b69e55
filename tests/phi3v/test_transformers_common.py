"""transformers' own common tests (ModelTesterMixin, ConfigTester) run against productlens.phi3v on a tiny config.

The mixins come from transformers' sdist for the installed version (see transformers_suite.py; first run
downloads it from PyPI, ~20 s). Skipped mixin tests each say why they do not apply to this architecture.
"""

import unittest
from unittest import mock

import pytest
import torch

import productlens.phi3v  # noqa: F401  (registers phi3_v)
from productlens.phi3v import Phi3VConfig, Phi3VForCausalLM, Phi3VImageProcessor, Phi3VProcessor
from productlens.phi3v.modeling import Phi3VModel
from productlens.phi3v.tiny import build_tokenizer, tiny_config

try:
    import transformers_suite

    common = transformers_suite.load("test_modeling_common")
    config_common = transformers_suite.load("test_configuration_common")
    processing_common = transformers_suite.load("test_processing_common")
except transformers_suite.Unavailable as error:  # offline without a cached copy
    pytest.skip(str(error), allow_module_level=True)

VOCAB = 99
IMAGE_TOKEN = 98  # config.image_token_id: the in-vocabulary placeholder for image slots
CROP = 56  # crop side: 4x4 patches -> 2x2 merged tokens per crop


class Phi3VModelTester:
    """Tiny Phi-3-V inputs: one 56x56 image per row (13 image slots) inside 7 text tokens."""

    def __init__(self, parent, batch_size: int = 2, text_length: int = 7):
        self.parent = parent
        self.batch_size = batch_size
        config = self.get_config()
        self.num_image_tokens = 13  # (1*1 + 1) * 4 + 1 + (1 + 1) * 2
        self.seq_length = text_length + self.num_image_tokens
        self.is_training = True
        self.vocab_size = VOCAB
        self.hidden_size = config.hidden_size
        self.num_hidden_layers = config.num_hidden_layers
        self.num_attention_heads = config.num_attention_heads
        self.image_size = CROP
        self.patch_size = config.vision_config.patch_size
        self.vision_config = {"num_hidden_layers": config.vision_config.num_hidden_layers}

    def get_config(self) -> Phi3VConfig:
        return tiny_config(
            VOCAB,
            image_size=CROP,
            pad_token_id=0,
            eos_token_id=2,
            image_token_id=IMAGE_TOKEN,
            hidden_size=32,
            initializer_range=0.02,
            max_position_embeddings=64,  # rope tests build tables of this size
            original_max_position_embeddings=32,
            vision_config={"num_hidden_layers": 2},
        )

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        b, n = self.batch_size, self.num_image_tokens
        input_ids = (
            common.ids_tensor([b, self.seq_length], VOCAB - 3) + 2
        )  # text ids 2..97, never the image id
        input_ids[:, 2 : 2 + n] = IMAGE_TOKEN
        inputs = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values": common.floats_tensor([b, 2, 3, CROP, CROP]),
            "image_sizes": torch.tensor([[CROP, CROP]] * b),
        }
        return config, inputs


class Phi3VModelTest(common.ModelTesterMixin, unittest.TestCase):
    all_model_classes = (Phi3VModel, Phi3VForCausalLM)
    _is_composite = True
    # CLIP's last layer and post_layernorm never reach the output (features come from layer -2, as officially)
    test_all_params_have_gradient = False

    def setUp(self):
        # transformers' tests find base models and task heads in its own name tables: list phi3_v there, as it
        # would be as a native model (so the base model is not trained without a loss, the LM gets labels)
        for table, name in (
            (common.MODEL_MAPPING_NAMES, "Phi3VModel"),
            (common.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "Phi3VForCausalLM"),
            (common.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, "Phi3VForCausalLM"),
        ):
            patcher = mock.patch.dict(table, {"phi3_v": name})
            patcher.start()
            self.addCleanup(patcher.stop)
        self.model_tester = Phi3VModelTester(self)
        self.config_tester = config_common.ConfigTester(
            self, config_class=Phi3VConfig, has_text_modality=False
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(
        "generation is tested in test_conventions.py: transformers' sdist ships no GenerationTesterMixin"
    )
    def test_generation_tester_mixin_inheritance(self):
        pass

    @unittest.skip("CLIP runs per HD crop (a variable number per image): last_hidden_state is [crops, ...]")
    def test_get_image_features_output_0(self):
        pass

    @unittest.skip("CLIP runs per HD crop (a variable number per image): last_hidden_state is [crops, ...]")
    def test_get_image_features_output_2(self):
        pass


class Phi3VProcessorTest(processing_common.ProcessorTesterMixin, unittest.TestCase):
    processor_class = Phi3VProcessor
    image_token = "<|image_1|>"  # the official prompt tag: one image per prompt in these tests

    @classmethod
    def _setup_tokenizer(cls):
        return build_tokenizer(["lower newer", "hello world", "a product photo"] * 5, vocab_size=400)

    @classmethod
    def _setup_image_processor(cls):
        return Phi3VImageProcessor(num_crops=1, num_img_tokens=4, crop_size=56)

    @unittest.skip(
        "the official Phi-3-V chat template takes string contents with <|image_k|> tags, not image dicts"
    )
    def test_apply_chat_template_image_0(self):
        pass

    @unittest.skip(
        "the official Phi-3-V chat template takes string contents with <|image_k|> tags, not image dicts"
    )
    def test_apply_chat_template_image_1(self):
        pass

    @unittest.skip(
        "the official Phi-3-V chat template takes string contents with <|image_k|> tags, not image dicts"
    )
    def test_processor_text_has_no_visual(self):
        pass

    @unittest.skip(
        "offsets mappings are not supported: Phi3VProcessor tokenises the chunks between images apart"
    )
    def test_apply_chat_template_assistant_mask(self):
        pass
