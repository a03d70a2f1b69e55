"""Phi-3-Vision (3 and 3.5) on transformers 5: config, image processor, processor and model, registered natively.

`import productlens.phi3v` registers `phi3_v` with AutoConfig, AutoModel (the base Phi3VModel),
AutoModelForCausalLM, AutoModelForImageTextToText, AutoImageProcessor and AutoProcessor, so `Auto*.from_pretrained(folder)` loads the official checkpoints without
trust_remote_code (their `auto_map` entries are ignored).
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from productlens.phi3v.configuration import Phi3VConfig
from productlens.phi3v.image_processing import Phi3VImageProcessor
from productlens.phi3v.modeling import Phi3VForCausalLM, Phi3VModel
from productlens.phi3v.processing import Phi3VProcessor

AutoConfig.register(Phi3VConfig.model_type, Phi3VConfig, exist_ok=True)
AutoModel.register(Phi3VConfig, Phi3VModel, exist_ok=True)
AutoModelForCausalLM.register(Phi3VConfig, Phi3VForCausalLM, exist_ok=True)
AutoModelForImageTextToText.register(Phi3VConfig, Phi3VForCausalLM, exist_ok=True)
AutoImageProcessor.register(
    Phi3VConfig,
    image_processor_classes={"pil": Phi3VImageProcessor, "torchvision": Phi3VImageProcessor},
    exist_ok=True,
)
AutoProcessor.register(Phi3VConfig, Phi3VProcessor, exist_ok=True)

__all__ = ["Phi3VConfig", "Phi3VForCausalLM", "Phi3VImageProcessor", "Phi3VModel", "Phi3VProcessor"]
