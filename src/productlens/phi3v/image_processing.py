"""Phi3VImageProcessor: the official Phi-3-Vision HD transform, vectorised (no per-pixel Python).

In: PIL images (any size and mode, a batch may mix sizes). Out: `pixel_values` [N, num_crops+1, 3, S, S]
(slot 0 the global image, then the HD crops row-major, then zero slots), `image_sizes` [N, 2] (padded H, W) and
`num_img_tokens` (image slots per image). Loaded by `AutoImageProcessor.from_pretrained(folder)`.
"""

import math
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.processing_utils import ImagesKwargs

MERGE = 2  # 2x2 patch merge: a crop of S pixels gives (S / patch / 2)^2 tokens


class Phi3VImagesKwargs(ImagesKwargs, total=False):
    """Keyword arguments `from_pretrained(..., num_crops=4)` may override."""

    num_crops: int
    num_img_tokens: int


# Standard image-processor options this HD transform cannot honour: the crop layout fixes size and padding.
REFUSED = {
    "do_resize": "the HD transform resizes by num_crops",
    "size": "the HD transform sets the size; use num_crops",
    "resample": "the HD transform resizes bilinearly, as the official processor",
    "do_center_crop": "the HD transform pads, it never crops",
    "do_pad": "the HD transform always pads to whole crops",
    "pad_size": "the HD transform always pads to whole crops",
    "do_convert_rgb": "images are always converted to RGB, as the official processor does",
}


@lru_cache(maxsize=8)
def _normalize_table(
    mean: tuple[float, ...], std: tuple[float, ...], rescale_factor: float | None, normalize: bool
) -> np.ndarray:
    """[3, 256] float32: byte value -> (value * rescale_factor - mean) / std, rounded as ToTensor + Normalize do.

    `rescale_factor` None keeps the raw byte values; `normalize` False skips the (- mean) / std step.
    """
    byte = torch.arange(256, dtype=torch.float32)[None, :].expand(3, -1)  # [3, 256]
    if rescale_factor is not None:
        byte = byte.div(1.0 / rescale_factor)  # 1/255 -> exactly ToTensor's division by 255
    if not normalize:
        return byte.contiguous().numpy()
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None]
    return ((byte - mean_t) / std_t).numpy()


def hd_grid(width: int, height: int, num_crops: int, crop_size: int) -> tuple[int, int, int, int]:
    """Official HD_transform sizes -> (resized_w, resized_h, rows, cols); the padded size is rows*S x cols*S.

    The image is seen landscape (transposed when taller than wide), scaled to the largest `scale` with
    scale * ceil(scale / ratio) <= num_crops crops, width scale*S, height floor(width / ratio), then padded.
    """
    long_side, short_side = max(width, height), min(width, height)
    ratio = long_side / short_side
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    new_long = scale * crop_size
    new_short = max(int(new_long / ratio), 1)  # official int(); the max only guards degenerate 1-pixel images
    long_crops, short_crops = scale, math.ceil(new_short / crop_size)
    if width >= height:
        return new_long, new_short, short_crops, long_crops
    return new_short, new_long, long_crops, short_crops


class Phi3VImageProcessor(BaseImageProcessor):
    r"""The Phi-3-Vision image processor (official `image_processing_phi3_v.py`, step for step).

    num_crops (`int`, defaults to 16): maximum number of HD crops (3V ships 16; 4 is the 3.5V recommendation).
    num_img_tokens (`int`, defaults to 144): tokens per crop after the 2x2 merge, (crop_size / patch / 2)^2.
    crop_size (`int`, defaults to 336): crop side in pixels = the CLIP tower's `image_size`.
    image_mean / image_std: OpenAI CLIP normalisation.
    do_rescale / rescale_factor (defaults True, 1/255) and do_normalize (default True): honoured, at init or per
    call. The size options (`do_resize`, `size`, `do_center_crop`, `do_pad`, ...) are refused with the reason:
    the HD transform fixes them.
    """

    model_input_names: ClassVar[list[str]] = ["pixel_values", "image_sizes"]
    # per-call options of `preprocess` besides the refused size options
    CALL_OPTIONS = (
        "num_crops",
        "do_rescale",
        "rescale_factor",
        "do_normalize",
        "image_mean",
        "image_std",
        *REFUSED,
    )
    valid_kwargs = Phi3VImagesKwargs

    def __init__(
        self,
        num_crops: int = 16,
        num_img_tokens: int = 144,
        crop_size: int = 336,
        image_mean: list[float] | tuple[float, ...] = OPENAI_CLIP_MEAN,
        image_std: list[float] | tuple[float, ...] = OPENAI_CLIP_STD,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        **kwargs: Any,
    ):
        kwargs.pop(
            "auto_map", None
        )  # the official file points at remote code; this class is registered natively
        self._refuse(kwargs)
        super().__init__(**kwargs)
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)
        self.num_crops = int(num_crops)
        self.num_img_tokens = int(num_img_tokens)
        self.crop_size = int(crop_size)
        self.image_mean = [float(x) for x in image_mean]
        self.image_std = [float(x) for x in image_std]
        self._check()

    @staticmethod
    def _refuse(kwargs: dict[str, Any]) -> None:
        """Raise on standard options this processor cannot honour (values that change nothing pass)."""
        harmless = {"do_convert_rgb": (None, True)}
        refused = [k for k, v in kwargs.items() if k in REFUSED and v not in harmless.get(k, (None, False))]
        if refused:
            reasons = "; ".join(f"{k}: {REFUSED[k]}" for k in refused)
            raise ValueError(f"Phi3VImageProcessor cannot honour {reasons}.")

    def _check(self) -> None:
        grid = math.isqrt(self.num_img_tokens)
        if self.num_crops < 1:
            raise ValueError(f"num_crops must be >= 1, got {self.num_crops}.")
        if grid * grid != self.num_img_tokens:
            raise ValueError(f"num_img_tokens (tokens per crop) must be a square, got {self.num_img_tokens}.")
        if self.crop_size % (grid * MERGE):
            raise ValueError(f"crop_size {self.crop_size} does not split into {grid}x{grid} merged patches.")

    @classmethod
    def for_model(cls, config, num_crops: int = 16, **kwargs: Any) -> "Phi3VImageProcessor":
        """The processor matching a Phi3VConfig's vision tower (crop size and tokens per crop from CLIP)."""
        return cls(
            num_crops=num_crops, num_img_tokens=config.tokens_per_crop, crop_size=config.crop_size, **kwargs
        )

    @property
    def crop_grid(self) -> int:
        """Side of one crop's merged token grid (12 for 336-pixel crops)."""
        return math.isqrt(self.num_img_tokens)

    def num_image_tokens(self, width: int, height: int, num_crops: int | None = None) -> int:
        """Image slots for an image of this size, without resizing: (h*w + 1)*g^2 + 1 + (h + 1)*g."""
        _, _, rows, cols = hd_grid(width, height, num_crops or self.num_crops, self.crop_size)
        return self._tokens(rows, cols)

    def _tokens(self, rows: int, cols: int) -> int:
        g = self.crop_grid
        return (rows * cols + 1) * g * g + 1 + (rows + 1) * g

    def hd_canvas(self, image: Image.Image, num_crops: int | None = None) -> np.ndarray:
        """One image -> resized, white-padded HD canvas [rows*S, cols*S, 3] uint8 (official HD_transform)."""
        image = (
            image.convert("RGB") if image.mode != "RGB" else image
        )  # plain convert: alpha dropped, as in 4.x
        width, height = image.size
        transposed = width < height
        if transposed:  # the official code resizes the transposed image; PIL rounding differs otherwise
            image = image.transpose(Image.Transpose.TRANSPOSE)
        new_w, new_h, _, _ = hd_grid(image.width, image.height, num_crops or self.num_crops, self.crop_size)
        resized = np.asarray(image.resize((new_w, new_h), Image.Resampling.BILINEAR))  # [new_h, new_w, 3]
        pad_h = math.ceil(new_h / self.crop_size) * self.crop_size
        top = (pad_h - new_h) // 2
        canvas = np.full((pad_h, new_w, 3), 255, dtype=np.uint8)  # white bars top and bottom
        canvas[top : top + new_h] = resized
        return canvas.transpose(1, 0, 2) if transposed else canvas

    def preprocess(
        self,
        images: Image.Image | np.ndarray | list[Image.Image | np.ndarray],
        num_crops: int | None = None,
        return_tensors: str | None = "pt",
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Images -> BatchFeature(pixel_values [N, C+1, 3, S, S], image_sizes [N, 2], num_img_tokens list[int]).

        Options left None take this processor's values.
        """
        self._refuse(kwargs)
        unknown = sorted(k for k, v in kwargs.items() if k not in REFUSED and v is not None)
        if unknown:
            raise TypeError(
                f"unexpected arguments {unknown}; Phi3VImageProcessor takes num_crops, return_tensors, do_rescale, "
                "rescale_factor, do_normalize, image_mean and image_std."
            )
        do_rescale = self.do_rescale if do_rescale is None else do_rescale
        rescale_factor = self.rescale_factor if rescale_factor is None else rescale_factor
        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        mean = tuple(float(x) for x in (self.image_mean if image_mean is None else image_mean))
        std = tuple(float(x) for x in (self.image_std if image_std is None else image_std))
        num_crops = int(num_crops or self.num_crops)
        images = [
            self._to_pil(image) for image in (images if isinstance(images, (list, tuple)) else [images])
        ]
        if not images:
            raise ValueError("no images given.")
        size = self.crop_size
        table = _normalize_table(mean, std, rescale_factor if do_rescale else None, do_normalize)  # [3, 256]
        pixel_values = torch.empty(len(images), num_crops + 1, 3, size, size)
        image_sizes, num_img_tokens = [], []
        for i, image in enumerate(images):
            canvas = self.hd_canvas(image, num_crops)  # [H, W, 3] uint8
            height, width = canvas.shape[:2]
            rows, cols = height // size, width // size
            hd = np.empty(
                (3, height, width), dtype=np.float32
            )  # normalised canvas, one table lookup per pixel
            for c in range(3):
                np.take(table[c], canvas[..., c], out=hd[c])
            hd = torch.from_numpy(hd)
            # crops: [3, rows*S, cols*S] -> [rows, cols, 3, S, S], row-major into slots 1..rows*cols
            crops = hd.view(3, rows, size, cols, size).permute(1, 3, 0, 2, 4)
            pixel_values[i, 1 : 1 + rows * cols].view(rows, cols, 3, size, size).copy_(crops)
            pixel_values[i, 1 + rows * cols :].zero_()  # unused slots: zeros, as in the official processor
            # global image: bicubic (no antialias) of the normalised padded canvas, aspect ratio squashed
            pixel_values[i, 0] = F.interpolate(
                hd[None], size=(size, size), mode="bicubic", align_corners=False
            )[0]
            image_sizes.append([height, width])
            num_img_tokens.append(self._tokens(rows, cols))
        data = {
            "pixel_values": pixel_values,
            "image_sizes": torch.tensor(image_sizes, dtype=torch.long),
            "num_img_tokens": num_img_tokens,
        }
        if return_tensors == "np":
            data = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in data.items()}
        elif return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}.")
        return BatchFeature(data=data)

    def __call__(self, images, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    @staticmethod
    def _to_pil(image: Any) -> Image.Image:
        if isinstance(image, Image.Image):
            return image
        if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim in (2, 3):
            return Image.fromarray(image)
        raise TypeError(
            f"expected a PIL image (or a uint8 HxW[xC] numpy array), got {type(image).__name__}; "
            "open files with PIL.Image.open(path)."
        )

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("_valid_kwargs_names", None)
        out["processor_class"] = (
            "Phi3VProcessor"  # as in the official file: AutoProcessor finds the processor
        )
        return out


__all__ = ["Phi3VImageProcessor", "hd_grid"]
