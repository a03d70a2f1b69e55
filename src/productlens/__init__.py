"""productlens: teach a vision-language model to read product photos (title, category, price).

Pipeline: synth/catalog -> prepare (download, splits) -> train (Phi-3-Vision + LoRA) -> evaluate -> predict -> serve.
"""

__version__ = "0.1.0"
