"""Request and response bodies of the JSON API (pydantic models: they are the OpenAPI schema).

Per-kind job parameters are separate models so that a new job kind is one entry in
`jobs.KINDS`: (parameter model, handler).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SEED_MAX = 2**32 - 1  # A1111 seeds are 32-bit; image i uses seed + i
B64_MAX = 24 << 20  # characters of one base64 image (the body cap binds first)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable error code.")
    message: str = Field(description="One line for people.")


class GenerateParams(Strict):
    prompt: str = Field("", max_length=4000)
    negative_prompt: str = Field("", max_length=4000)
    model: str | None = Field(None, max_length=200, description="A name from /api/v1/models.")
    seed: int = Field(-1, ge=-1, le=SEED_MAX, description="-1: random.")
    steps: int = Field(20, ge=1, le=1000)
    cfg_scale: float = Field(2.0, ge=0.0, le=50.0)
    sampler: str = Field("dpmpp-2m", max_length=40, description="A name from /api/v1/samplers.")
    n: int = Field(1, ge=1, le=64, description="Images (the server caps this).")
    class_label: int | None = Field(None, ge=0, le=100_000, description="Class models only.")
    preview: bool = Field(True, description="Send a small predicted-x0 image with progress.")


class Txt2ImgParams(GenerateParams):
    width: int | None = Field(None, ge=8, le=4096, description="Default: the model's size.")
    height: int | None = Field(None, ge=8, le=4096)


class Img2ImgParams(GenerateParams):
    image: str = Field(..., min_length=1, max_length=B64_MAX, description="Base64 PNG/JPEG.")
    strength: float = Field(0.6, ge=0.0, le=1.0, description="0 keeps the image, 1 ignores it.")


class InpaintParams(GenerateParams):
    image: str = Field(..., min_length=1, max_length=B64_MAX)
    mask: str = Field(
        ..., min_length=1, max_length=B64_MAX, description="White = repaint, black = keep."
    )
    mask_blur: float | None = Field(None, ge=0.0, le=64.0)


class OutpaintParams(GenerateParams):
    image: str = Field(..., min_length=1, max_length=B64_MAX)
    left: int = Field(0, ge=0, le=1024)
    right: int = Field(0, ge=0, le=1024)
    top: int = Field(0, ge=0, le=1024)
    bottom: int = Field(0, ge=0, le=1024)


class UpscaleParams(Strict):
    image: str = Field(..., min_length=1, max_length=B64_MAX, description="Base64 PNG/JPEG.")
    scale: Literal[2, 4] = 2
    method: Literal["model", "bicubic", "lanczos"] = "model"
    model: str | None = Field(
        None, max_length=200, description="An upscaler from /api/v1/models; default: bundled."
    )
    tile: int | None = Field(None, ge=32, le=2048, description="Tile side in px (default: auto).")
    overlap: int = Field(16, ge=0, le=256)


class StyleParams(Strict):
    content: str = Field(..., min_length=1, max_length=B64_MAX, description="Base64 PNG/JPEG.")
    styles: list[str] = Field(..., min_length=1, max_length=4, description="Base64 images.")
    style_weights: list[float] | None = Field(None, max_length=4)
    size: int = Field(256, ge=16, le=4096, description="Longer side of the result in px.")
    content_weight: float = Field(1.0, ge=0.0, le=1e6)
    style_weight: float = Field(20.0, ge=0.0, le=1e6)
    tv_weight: float = Field(1e-3, ge=0.0, le=1e3)
    optimizer: Literal["adam", "lbfgs"] = "adam"
    steps: int = Field(150, ge=1, le=100_000, description="Iterations per scale.")
    scales: int = Field(0, ge=0, le=6, description="Coarse-to-fine levels (0: automatic).")
    preserve_color: Literal["luminance", "histogram"] | None = None
    features: str = Field(
        "random", pattern=r"^random(:\d{1,9})?$", description="random | random:SEED (offline)."
    )
    seed: int = Field(0, ge=0, le=SEED_MAX)
    preview: bool = True


class TextureParams(Strict):
    sample: str = Field(..., min_length=1, max_length=B64_MAX, description="Base64 PNG/JPEG.")
    mask: str | None = Field(
        None,
        max_length=B64_MAX,
        description="With a mask: fill its white part of `sample` from the rest (hole filling).",
    )
    method: Literal["quilting", "efros-leung", "neural"] = "quilting"
    size: int = Field(128, ge=16, le=4096, description="Output side in px.")
    tile: bool = Field(False, description="Make the output seamlessly tileable.")
    block: int | None = Field(None, ge=4, le=256, description="Quilting / fill block in px.")
    steps: int = Field(200, ge=1, le=100_000, description="Neural: optimisation steps.")
    features: str = Field("random", pattern=r"^random(:\d{1,9})?$")
    seed: int = Field(0, ge=0, le=SEED_MAX)
    preview: bool = True


class TrainParams(Strict):
    family: str = Field("diffusion", max_length=60, description="A name from /api/v1/families.")
    data: str = Field(
        "shapes",
        max_length=500,
        description="A dataset name, or folder:REL with REL a folder under the data root.",
    )
    size: int = Field(32, ge=8, le=512)
    preset: str = Field("tiny", max_length=40)
    cond: Literal["none", "class", "text"] | None = None
    steps: int = Field(500, ge=1, le=10_000_000)
    minutes: float | None = Field(None, gt=0, le=60 * 24 * 30)
    batch: int = Field(32, ge=1, le=4096)
    lr: float | None = Field(None, gt=0, lt=1)
    length: int | None = Field(None, ge=1, le=1_000_000, description="Items of shapes data.")
    autoencoder: str | None = Field(None, max_length=200, description="latent-diffusion only.")
    sample_every: int | None = Field(None, ge=1, le=10_000_000)
    ckpt_every: int | None = Field(None, ge=1, le=10_000_000)
    log_every: int | None = Field(None, ge=1, le=10_000_000)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    resume: str | None = Field(None, max_length=200, description="A run name to continue.")


class EstimateParams(Strict):
    model: str = Field("tiny", max_length=200, description="Preset or a name from /models.")
    task: Literal["generate", "train"] = "generate"
    size: int | None = Field(None, ge=8, le=8192)
    steps: int = Field(20, ge=1, le=1000)
    batch: int = Field(1, ge=1, le=4096)
    device: str = Field("cpu", max_length=40)
    cfg: bool = False


class EvalParams(Strict):
    model: str = Field(..., max_length=200, description="A name from /api/v1/models.")
    ref: str | None = Field(None, max_length=60, description="digits | shapes (a dataset).")
    metrics: str = Field("fid,kid", max_length=200)
    n: int = Field(256, ge=8, le=50_000)
    steps: int = Field(20, ge=1, le=1000)
    sampler: str = Field("dpmpp-2m", max_length=40)
    seed: int = Field(0, ge=0, le=SEED_MAX)


class JobRequest(Strict):
    kind: str = Field(..., max_length=40, description="A name from /api/v1/kinds.")
    params: dict[str, Any] = Field(default_factory=dict)


class JobCreated(BaseModel):
    id: str
    position: int = Field(description="Jobs ahead of this one (0: next to run).")


class JobInfo(BaseModel):
    id: str
    kind: str
    status: str = Field(description="queued | running | done | failed | cancelled | interrupted")
    progress: float
    step: int
    total: int
    eta_s: float | None = None
    position: int | None = None
    created: float
    started: float | None = None
    finished: float | None = None
    params: dict[str, Any]
    error: ErrorBody | None = None
    result: dict[str, Any] | None = None


class JobList(BaseModel):
    jobs: list[JobInfo]


class ImageInfo(BaseModel):
    id: str
    job_id: str
    url: str
    width: int | None
    height: int | None
    created: float
    params: dict[str, Any]


class ImageList(BaseModel):
    images: list[ImageInfo]
    total: int


class EstimateResponse(BaseModel):
    report: dict[str, Any]
    text: str


# ----- AUTOMATIC1111 subset (field names and defaults as in its /sdapi/v1 API) ---------------
class A1111Txt2Img(BaseModel):
    model_config = ConfigDict(extra="ignore")  # A1111 clients send many fields we do not use

    prompt: str = Field("", max_length=4000)
    negative_prompt: str = Field("", max_length=4000)
    seed: int = Field(-1, ge=-1, le=SEED_MAX)
    sampler_name: str | None = Field(None, max_length=40)
    sampler_index: str | None = Field(None, max_length=40)
    batch_size: int = Field(1, ge=1, le=64)
    n_iter: int = Field(1, ge=1, le=64)
    steps: int = Field(50, ge=1, le=1000)
    cfg_scale: float = Field(7.0, ge=0.0, le=50.0)
    width: int | None = Field(None, ge=8, le=4096, description="Default: the model's size.")
    height: int | None = Field(None, ge=8, le=4096)
    send_images: bool = True
    save_images: bool = False
    override_settings: dict[str, Any] | None = None


class A1111Img2Img(A1111Txt2Img):
    init_images: list[str] = Field(..., min_length=1, max_length=1)
    mask: str | None = Field(None, max_length=B64_MAX)
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0)
    mask_blur: int | None = Field(None, ge=0, le=64)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)


class A1111Images(BaseModel):
    images: list[str]
    parameters: dict[str, Any]
    info: str


class A1111PngInfoRequest(BaseModel):
    image: str = Field(..., min_length=1, max_length=B64_MAX)


class A1111PngInfo(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]
