"""The one validator of plans and network configs (pydantic v2), with one-line, dotted-key errors.

Plans stay plain dicts (hand-editable, unknown keys kept): the models here only *check* them and are
never written back. Every error reads ``FILE: stages.organ.network.kernel_sizes[2]: must be odd``.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from autoseg import AutosegError

_KEY = "\x00"  # a validator's message "\x00sub.key\x00text" names a key below the model it checks

PosInt = Annotated[int, Field(gt=0, strict=True)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
IntTriple = Annotated[list[PosInt], Field(min_length=3, max_length=3)]
FloatTriple = Annotated[list[PosFloat], Field(min_length=3, max_length=3)]
MarginTriple = Annotated[list[NonNegFloat], Field(min_length=3, max_length=3)]
StageName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")]


def keyed(key: str, message: str) -> ValueError:
    """An error about ``key`` (dotted, relative to the model being validated)."""
    return ValueError(f"{_KEY}{key}{_KEY}{message}")


def _odd(v: list[int]) -> list[int]:
    if any(x % 2 == 0 for x in v):
        raise ValueError(f"must be odd (so 'same' padding keeps the shape), got {v}")
    return v


OddTriple = Annotated[IntTriple, AfterValidator(_odd)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)


def _per_stage(v: Any, key: str, n: int) -> None:
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return
    if not (isinstance(v, list) and len(v) == n and all(isinstance(x, int) and not isinstance(x, bool)
                                                        and x > 0 for x in v)):
        raise keyed(key, f"must be a positive integer or a list of {n} positive integers, got {v!r}")


class NetworkModel(_Model):
    """The U-shaped networks' config (UNet, EfficientSegNet, ...): one entry per resolution level."""

    class_: str = Field(alias="class", min_length=1)
    features: Annotated[list[PosInt], Field(min_length=1)]
    kernel_sizes: list[OddTriple]
    strides: list[IntTriple]
    blocks: Literal["plain", "residual"] = "plain"
    convs_per_stage: Any = 2
    blocks_per_stage: Any = None
    deep_supervision_levels: Any = None

    @model_validator(mode="after")
    def _levels(self) -> "NetworkModel":
        n = len(self.features)
        for key in ("kernel_sizes", "strides"):
            if len(getattr(self, key)) != n:
                raise keyed(key, f"must have one [z, y, x] entry per level ({n}), got {len(getattr(self, key))}")
        if self.strides[0] != [1, 1, 1]:
            raise keyed("strides[0]", f"must be [1, 1, 1] (the full-resolution skip), got {self.strides[0]}")
        _per_stage(self.convs_per_stage, "convs_per_stage", n)
        if self.blocks_per_stage is not None:
            _per_stage(self.blocks_per_stage, "blocks_per_stage", n)
        top = max(1, n - 1)
        lv = self.deep_supervision_levels
        if lv is not None and not (isinstance(lv, int) and not isinstance(lv, bool) and 1 <= lv <= top):
            raise keyed("deep_supervision_levels", f"must be an integer in [1, {top}], got {lv!r}")
        return self


class SaliencyModel(_Model):
    stage: StageName
    classes: Annotated[list[PosInt], Field(min_length=1)]


class InputModel(_Model):
    """What a stage reads: the body crop, or the box of another stage's prediction (of ``labels``, by
    default that stage's classes) grown by ``margin_mm``; plus, optionally, another stage's
    probabilities for some classes as extra input channels (``saliency``)."""

    crop: str = "body"
    labels: list[PosInt] | None = None
    margin_mm: MarginTriple = [0.0, 0.0, 0.0]
    saliency: SaliencyModel | None = None


class RefineModel(_Model):
    """Iterate a saliency stage on its own output until two rounds agree (DSC) or ``max_rounds``."""

    max_rounds: PosInt = 5
    stop_dsc: Annotated[float, Field(gt=0, le=1)] = 0.99


class StageModel(_Model):
    target_spacing: FloatTriple
    patch_size: IntTriple
    batch_size: PosInt
    classes: Any
    network: dict
    input: InputModel = InputModel()
    refine: RefineModel | None = None
    # sliding-window step at inference, a fraction of the patch (absent in older plans: 0.5)
    step_size: Annotated[float, Field(gt=0, le=1)] = 0.5

    @model_validator(mode="after")
    def _classes(self) -> "StageModel":
        c = self.classes
        if c != "foreground" and not (isinstance(c, list) and c and all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in c)):
            raise keyed("classes", f"must be 'foreground' or a non-empty list of label values, got {c!r}")
        if self.refine is not None and self.input.saliency is None:
            raise keyed("refine", "a refinement stage needs input.saliency (the stage whose probabilities it refines)")
        return self


class IntensityModel(_Model):
    scheme: Literal["ct", "zscore"]
    clip: Annotated[list[float], Field(min_length=2, max_length=2)] | None = None
    mean: float
    std: PosFloat

    @model_validator(mode="after")
    def _clip(self) -> "IntensityModel":
        if self.scheme == "ct" and (self.clip is None or not self.clip[0] < self.clip[1]):
            raise keyed("clip", f"must be [low, high] with low < high, got {self.clip!r}")
        return self


class PlansModel(_Model):
    schema_version: Literal[2]
    dataset_name: str
    labels: dict[str, Annotated[int, Field(ge=0, strict=True)]]
    intensity: IntensityModel
    stages: Annotated[dict[StageName, StageModel], Field(min_length=1)]
    transpose: list[int] = [0, 1, 2]

    @model_validator(mode="after")
    def _transpose(self) -> "PlansModel":
        if sorted(self.transpose) != [0, 1, 2]:
            raise keyed("transpose", f"must be a permutation of [0, 1, 2], got {self.transpose}")
        return self


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "class_":
            out += ".class"
        else:
            out += f".{part}" if out else str(part)
    return out


def _message(err: dict) -> tuple[tuple, str]:
    loc, msg = tuple(err.get("loc", ())), str(err.get("msg", ""))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if msg.startswith(_KEY):
        sub, _, msg = msg[1:].partition(_KEY)
        loc = loc + tuple(int(p) if p.isdigit() else p for p in sub.replace("[", ".").replace("]", "").split("."))
    if err.get("type") == "missing":
        msg = "is missing"
    elif "input" in err and err.get("type") not in ("value_error",) and _KEY not in str(err.get("msg", "")):
        got = repr(err["input"])
        msg = f"{msg[:1].lower()}{msg[1:]}, got {got if len(got) <= 80 else got[:77] + '...'}"
    return loc, msg


def check(model: type[BaseModel], data: Any, where: str, prefix: str = "") -> None:
    """Validate ``data`` with ``model``; the first problem as one line: ``where: key: what``."""
    try:
        model.model_validate(data)
    except ValidationError as e:
        loc, msg = _message(e.errors(include_url=False)[0])
        key = _dotted(loc)
        key = f"{prefix}.{key}" if prefix and key else prefix or key
        raise AutosegError(f"{where}: {key}: {msg}" if key else f"{where}: {msg}") from None


def fail(where: str, key: str, what: str) -> None:
    raise AutosegError(f"{where}: {key}: {what}")
