"""The predictor: any image in, score + map at original size + mask + decision out.

Pre-processing (working size, range, channel handling) and thresholds come from the checkpoint
or the exported model's metadata, never from the caller, so the deployed path cannot drift from
training. The same :class:`Predictor` runs a torch checkpoint, an ONNX file or TorchScript.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from adps.config import ModelConfig, from_dict
from adps.data.datasets import DEFAULT_MAX_PIXELS, Resize, read_image
from adps.engine.calibrate import Thresholds
from adps.engine.checkpoint import Checkpoint
from adps.engine.device import inference_batch_size, resolve_device
from adps.engine.inference import Forward, TorchForward
from adps.engine.tiling import Tiling, tiled
from adps.errors import AdpsError

if TYPE_CHECKING:
    from adps.engine.runtime import OnnxRunner, OpenVinoRunner

ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor


@dataclass
class Prediction:
    score: float
    anomaly_map: np.ndarray  # float32 (H0, W0): anomaly probability at the image's own size
    mask: np.ndarray  # bool (H0, W0): anomaly_map > pixel threshold
    is_anomalous: bool  # score >= image threshold
    path: str | None = None

    @property
    def defect_area(self) -> int:
        """Pixels of the predicted mask, at the original resolution."""
        return int(self.mask.sum())

    @property
    def decision(self) -> str:
        return "anomalous" if self.is_anomalous else "normal"

    def summary(self) -> dict[str, Any]:
        """Score (6 digits), decision and defect area: what `adps predict` writes and
        `adps serve` answers, from this one place so that the two agree digit for digit."""
        return {
            "score": round(self.score, 6),
            "decision": self.decision,
            "defect_area": self.defect_area,
        }


def to_uint8_chw(
    item: ImageInput,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[torch.Tensor, str | None]:
    """One image as a uint8 (3, H, W) tensor, plus its path when it came from a file.

    Accepts a path, a PIL image, or an array/tensor shaped (H, W), (H, W, 3) or (3, H, W);
    uint8 values are 0..255, floats must lie in [0, 1]. Grey is replicated to three channels
    like the datasets do, so a grey line camera gets the same input as in training. A file over
    ``max_pixels`` (None = no limit) is refused from its header, before it is decoded.
    """
    if isinstance(item, (str, Path)):
        return torch.from_numpy(read_image(item, max_pixels)).permute(2, 0, 1), str(item)
    if isinstance(item, Image.Image):
        array = np.array(item.convert("RGB"))
        return torch.from_numpy(array).permute(2, 0, 1), getattr(item, "filename", None) or None
    if isinstance(item, np.ndarray):  # torch cannot share a read-only array (np.asarray(PIL))
        item = np.require(item, requirements=("C_CONTIGUOUS", "WRITEABLE"))
    tensor = torch.as_tensor(item)
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0).expand(3, -1, -1)
    elif tensor.ndim == 3 and tensor.shape[-1] in (1, 3) and tensor.shape[0] not in (1, 3):
        tensor = tensor.permute(2, 0, 1)
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
        raise AdpsError(
            f"expected an image shaped (H, W), (H, W, 3) or (3, H, W), got {tuple(tensor.shape)}"
        )
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    if tensor.dtype == torch.uint8:
        return tensor.contiguous(), None
    if not tensor.is_floating_point():
        raise AdpsError(f"image arrays must be uint8 or float in [0, 1], got {tensor.dtype}")
    tensor = tensor.float()
    if tensor.numel() and (tensor.min() < 0 or tensor.max() > 1):
        raise AdpsError("float images must lie in [0, 1] (divide uint8 data by 255)")
    return (tensor * 255.0).round().to(torch.uint8).contiguous(), None


class Predictor:
    """Callable on one image (returns a :class:`Prediction`) or many (returns a list).

    A (B, 3, H, W) tensor counts as many images. Batches of ``batch_size`` go through the model
    at once; maps are resized back to every image's original size. With ``config.tiling`` each
    image is scaled by ``tile_scale`` and cut into tiles instead (batches of ``batch_size``
    tiles), whatever its size.
    """

    def __init__(
        self,
        forward: Forward,
        config: ModelConfig,
        thresholds: Thresholds,
        device: torch.device,
        batch_size: int = 32,
        metadata: dict[str, Any] | None = None,
        runtime: str = "torch",
    ):
        self.config = config
        self.tiling = Tiling.of(config)
        self.forward = tiled(forward, config, batch_size)
        self.image_size = config.image_size
        self.resize = Resize(config.image_size)
        self.thresholds = thresholds
        self.device = device
        self.batch_size = batch_size
        self.metadata = metadata or {}
        self.runtime = runtime  # what runs the model, in words

    def preprocess(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """uint8 (3, H, W) images -> uint8 (B, 3, S, S), resized exactly as the datasets do."""
        return torch.stack([self.resize.image(img) for img in images])

    def predict_tensors(
        self, images: Sequence[torch.Tensor], paths: Sequence[str | None] | None = None
    ) -> list[Prediction]:
        results: list[Prediction] = []
        paths = list(paths) if paths is not None else [None] * len(images)
        step = 1 if self.tiling else self.batch_size  # tiled: a batch is one image's tiles
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            if self.tiling:
                frame = Resize(self.tiling.frame(*chunk[0].shape[-2:])).image(chunk[0])
                maps, scores = self.forward(frame[None])
            else:
                maps, scores = self.forward(self.preprocess(chunk))
            maps, scores = maps.float().cpu(), scores.float().cpu()
            for i, img in enumerate(chunk):
                h, w = img.shape[-2:]
                one = maps[i : i + 1]
                if tuple(one.shape[-2:]) != (h, w):
                    one = F.interpolate(one, size=(h, w), mode="bilinear", align_corners=False)
                amap = one[0, 0].numpy()
                score = float(scores[i])
                results.append(
                    Prediction(
                        score,
                        amap,
                        amap > self.thresholds.pixel,
                        score >= self.thresholds.decision,
                        paths[start + i],
                    )
                )
        return results

    def __call__(self, inputs: ImageInput | Iterable[ImageInput]) -> Prediction | list[Prediction]:
        single = isinstance(inputs, (str, Path, Image.Image)) or (
            isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim in (2, 3)
        )
        items: Iterable[ImageInput]
        if single:
            items = [cast(ImageInput, inputs)]
        elif isinstance(inputs, (np.ndarray, torch.Tensor)):
            if inputs.ndim != 4:
                raise AdpsError(f"a batch must be shaped (B, 3, H, W), got {tuple(inputs.shape)}")
            items = list(inputs)
        else:
            items = cast(Iterable[ImageInput], inputs)
        converted = [to_uint8_chw(item) for item in items]
        results = self.predict_tensors([c[0] for c in converted], [c[1] for c in converted])
        return results[0] if single else results

    def iter_files(
        self,
        paths: Sequence[str | Path],
        workers: int = 4,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> Iterator[tuple[list[Prediction], list[tuple[str, str]]]]:
        """Per batch: the predictions, and (path, reason) for files that could not be read
        (or are over ``max_pixels``, None = no limit).

        Streams, so a folder of any size needs the memory of one batch; the next batch is
        decoded in a thread pool (PIL releases the GIL) while the model runs on this one.
        """

        def load(path: str) -> torch.Tensor | str:
            try:
                return to_uint8_chw(path, max_pixels)[0]
            except AdpsError as exc:
                return str(exc).removeprefix(f"{path}: ")

        chunks = [
            [str(p) for p in paths[i : i + self.batch_size]]
            for i in range(0, len(paths), self.batch_size)
        ]
        with ThreadPoolExecutor(max(1, workers)) as pool:
            pending = [pool.submit(load, p) for p in chunks[0]] if chunks else []
            for index, chunk in enumerate(chunks):
                loaded = [future.result() for future in pending]
                if index + 1 < len(chunks):
                    pending = [pool.submit(load, p) for p in chunks[index + 1]]
                good = [
                    (p, t)
                    for p, t in zip(chunk, loaded, strict=True)
                    if isinstance(t, torch.Tensor)
                ]
                failed = [(p, t) for p, t in zip(chunk, loaded, strict=True) if isinstance(t, str)]
                predictions = (
                    self.predict_tensors([t for _, t in good], [p for p, _ in good]) if good else []
                )
                yield predictions, failed

    def predict_files(
        self,
        paths: Sequence[str | Path],
        workers: int = 4,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> tuple[list[Prediction], list[tuple[str, str]]]:
        """All predictions and failures at once (keeps every map: use :meth:`iter_files` for
        large folders)."""
        predictions, failures = [], []
        for batch, failed in self.iter_files(paths, workers, max_pixels):
            predictions += batch
            failures += failed
        return predictions, failures


def _runner_predictor(
    runner: OnnxRunner | OpenVinoRunner, batch_size: int, runtime: str
) -> Predictor:
    """A predictor around an ONNX or OpenVINO runner (numpy in and out, on the host)."""

    def forward(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, scores = runner(batch.numpy())  # the runner converts to the graph's dtype
        return torch.from_numpy(maps), torch.from_numpy(scores)

    return Predictor(
        forward,
        from_dict(ModelConfig, runner.metadata["model_config"]),
        runner.thresholds,
        torch.device("cpu"),
        batch_size,
        runner.metadata,
        runtime,
    )


EXPORT_SUFFIXES = (".onnx", ".xml", ".ts", ".torchscript")  # any other file is a checkpoint


def checkpoint_predictor(
    ckpt: Checkpoint, device: str = "auto", batch_size: int | None = None
) -> Predictor:
    """A predictor that runs ``ckpt`` in torch; ``batch_size=None`` picks what runs fastest on
    the device (:func:`inference_batch_size`)."""
    dev = resolve_device(device)
    model = ckpt.model()
    return Predictor(
        TorchForward(model, dev),
        model.config,
        ckpt.thresholds,
        dev,
        inference_batch_size(dev, batch_size),
        ckpt.describe(),
        f"torch {dev}",
    )


def export_predictor(
    path: str | Path,
    device: str = "auto",
    batch_size: int | None = None,
    precision: str | None = None,
    threads: int | None = None,
) -> Predictor:
    """A predictor that runs an export on its own runtime: ONNX (``.onnx``), OpenVINO
    (``.xml``) or TorchScript (``.ts``/``.torchscript``); thresholds and pre-processing come
    from the file's metadata. ``precision``: OpenVINO's ("f32", "bf16", "auto"; None = the
    file's). ``threads``: ONNX Runtime's or OpenVINO's inference threads (None: the runtime's
    default, every core): a process that shares the machine (a Ray actor, a worker) gives its
    share, or the runtimes oversubscribe the cores. TorchScript follows torch's own setting."""
    path = Path(path)
    dev = resolve_device(device)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from adps.engine.runtime import OnnxRunner

        providers = ["CPUExecutionProvider"] if dev.type == "cpu" else None
        onnx_runner = OnnxRunner(path, providers=providers, threads=threads)
        return _runner_predictor(
            onnx_runner,
            inference_batch_size(dev, batch_size, "onnx"),
            f"onnxruntime ({onnx_runner.providers[0]})",
        )
    if suffix == ".xml":
        from adps.engine.runtime import OpenVinoRunner

        runner = OpenVinoRunner(
            path, "GPU" if dev.type == "cuda" else "CPU", precision=precision, threads=threads
        )
        return _runner_predictor(
            runner,
            inference_batch_size(dev, batch_size),
            f"openvino {runner.device} {runner.precision}",
        )
    if suffix in (".ts", ".torchscript"):
        from adps.engine.runtime import load_torchscript

        module, meta = load_torchscript(path, dev)
        forward = TorchForward(module, dev, takes_uint8=meta["input_dtype"] == "uint8")
        return Predictor(
            forward,
            from_dict(ModelConfig, meta["model_config"]),
            Thresholds.from_dict(meta.get("thresholds")),
            dev,
            inference_batch_size(dev, batch_size),
            meta,
            f"torchscript {dev}",
        )
    raise AdpsError(f"is not an export (expected one of {', '.join(EXPORT_SUFFIXES)})", path)
