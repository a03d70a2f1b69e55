"""transformers' own common tests (ModelTesterMixin, ConfigTester) run against productlens.phi3v on a tiny config.

The mixins come from transformers' sdist for the installed version (see transformers_suite.py; first run
downloads it from PyPI, ~20 s). Skipped mixin tests each say why they do not apply to this architecture.
"""

import unittest

import pytest
import torch

import productlens.phi3v  # noqa: F401  (registers phi3_v)
from productlens.phi3v import Phi3VConfig, Phi3VForCausalLM
from productlens.phi3v.modeling import Phi3VModel
from productlens.phi3v.tiny import tiny_config

try:
    import transformers_suite

    common = transformers_suite.load("test_modeling_common")
    config_common = transformers_suite.load("test_configuration_common")
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

    def get_config(self) -> Phi3VConfig:
        return tiny_config(
            VOCAB,
            image_size=CROP,
            pad_token_id=0,
            eos_token_id=2,
            image_token_id=IMAGE_TOKEN,
            hidden_size=32,
            initializer_range=0.02,
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

    def setUp(self):
        self.model_tester = Phi3VModelTester(self)
        self.config_tester = config_common.ConfigTester(
            self, config_class=Phi3VConfig, has_text_modality=False
        )

    def test_config(self):
        self.config_tester.run_common_tests()
