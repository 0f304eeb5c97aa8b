"""Experiment configs: YAML in (``yaml.safe_load``), validated, canonical JSON out.

An experiment is data × model × algorithms × seeds. Example::

    name: mnist-2v7
    data: {name: mnist, classes: [2, 7], n_train: 200, n_test: 400}
    model: {name: mlp, widths: [64], init_scale: 0.05}
    loss: exponential
    seeds: [0, 1, 2]
    algorithms:
      - {algorithm: ngd, schedule: power, lr: 0.05, a: 0.5}
      - {algorithm: sign, schedule: power, lr: [0.005, 0.01], a: 0.5}
      - {algorithm: gd, schedule: loss_based, lr: 0.1}
    stop: {steps: 5000, log_loss: -1000}

Errors name the field (``algorithms.1.schedule``) and the allowed values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "AlgorithmConfig",
    "load_config",
    "RunSpec",
]


class ConfigError(ValueError):
    """An invalid experiment config; the message names the field and the allowed values."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _require_registered(
    kind: str, name: str, key: str, names: Callable[[], list[str]], hint: str = ""
) -> None:
    """Raise a ValueError listing the valid names unless ``key`` is in ``names()``, once the
    installed plug-ins have had their chance to register it (they load on the first miss)."""
    from .plugins import retry_after_plugins

    if key in names():
        return
    err = ValueError(f"unknown {kind} {name!r}; allowed: {', '.join(names())}{hint}")
    if not (retry_after_plugins(err) and key in names()):
        raise err


class DataConfig(_Strict):
    name: str
    classes: list[int] | None = None
    binarize: str | None = None
    n_train: int | None = Field(default=None, gt=0)
    n_test: int | None = Field(default=None, ge=0)
    seed: int = 0
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from .data import USER_DATA, dataset_names

        key = v.lower().replace("-", "_")
        if key != USER_DATA:
            hint = f" (or {USER_DATA!r} with steepest.train(config, data=...))"
            _require_registered("dataset", v, key, dataset_names, hint)
        return v


class ModelConfig(BaseModel):
    """``name`` plus the builder's keyword arguments (``widths``, ``activation``, ...)."""

    model_config = ConfigDict(extra="allow")
    name: str = "mlp"
    init_scale: float = Field(default=1.0, gt=0)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from .models import USER_MODEL, model_names

        if v != USER_MODEL:
            hint = f" (or {USER_MODEL!r} with steepest.train(config, model=...))"
            _require_registered("model", v, v, model_names, hint)
        return v

    def kwargs(self) -> dict[str, Any]:
        extra = dict(self.model_extra or {})
        return {"init_scale": self.init_scale, **extra}


class AlgorithmConfig(_Strict):
    """One algorithm entry; ``lr`` may be a list (one run per value)."""

    algorithm: str
    lr: float | list[float] | None = None  # every schedule but 'flow' needs it
    schedule: Literal["constant", "power", "loss_based", "norm_scaled", "flow"] = "constant"
    # flow only: the relative tolerance of the error-controlled steps (None: the default).
    tol: float | None = Field(default=None, gt=0, lt=1)
    # flow only: retry a step rolled back across a kink along the bundle direction of the
    # gradients on both sides (norms that have one: l1, i.e. coordinate descent).
    bundle: bool | None = None
    a: float | None = None  # decay exponent for power / norm_scaled
    # loss_based only: α ×= up after an accepted step, α ÷= down after a rollback (Lyu & Li:
    # up = 2^(1/5), down = 2^(1/10); then about two proposals are rolled back per accepted step).
    up: float | None = Field(default=None, ge=1)
    down: float | None = Field(default=None, gt=1)
    options: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None

    @field_validator("algorithm")
    @classmethod
    def _known(cls, v: str) -> str:
        from .algorithms import algorithm_names

        _require_registered("algorithm", v, v, algorithm_names)
        return v

    @model_validator(mode="after")
    def _check(self) -> AlgorithmConfig:
        from .algorithms import algorithm
        from .plugins import retry_after_plugins

        try:
            algo = algorithm(self.algorithm, **self.options)
        except (ValueError, TypeError) as exc:
            try:  # an option may name a plug-in's norm that has not been loaded yet
                if not retry_after_plugins(exc):
                    raise exc
                algo = algorithm(self.algorithm, **self.options)
            except (ValueError, TypeError) as again:
                raise ValueError(f"options: {again}") from None
        if self.schedule == "flow":
            if self.lr is not None:
                raise ValueError(
                    "schedule 'flow' picks its own steps: drop lr (set tol to change the accuracy)"
                )
            if self.a is not None:
                raise ValueError("schedule 'flow' takes no decay exponent a")
        elif self.tol is not None:
            raise ValueError(f"tol applies to schedule 'flow' only, not {self.schedule!r}")
        elif self.bundle is not None:
            raise ValueError(f"bundle applies to schedule 'flow' only, not {self.schedule!r}")
        elif self.lr is None:
            raise ValueError(f"schedule {self.schedule!r} needs lr")
        lrs = [1.0] if self.lr is None else self.lr if isinstance(self.lr, list) else [self.lr]
        if not lrs or any(not (x > 0) for x in lrs):
            raise ValueError(
                f"lr must be positive (or a non-empty list of positive values), got {self.lr}"
            )
        if self.schedule == "loss_based" and algo.normalized:
            raise ValueError(
                "schedule 'loss_based' (η ∝ 1/𝓛) is for unnormalized rules such as 'gd'; "
                f"{self.algorithm!r} is normalized, use 'constant' or 'power'"
            )
        if self.schedule != "loss_based" and (self.up is not None or self.down is not None):
            raise ValueError(
                f"up and down apply to schedule 'loss_based' only, not {self.schedule!r}"
            )
        if self.schedule in ("power",) and self.a is None:
            raise ValueError("schedule 'power' needs the decay exponent a (η = lr·t^-a)")
        return self

    def schedules(self):
        from .schedules import schedule

        if self.schedule == "flow":
            kw = {k: v for k, v in (("tol", self.tol), ("bundle", self.bundle)) if v is not None}
            return [schedule("flow", **kw)]
        lrs = self.lr if isinstance(self.lr, list) else [self.lr]
        kw: dict[str, float] = (
            {} if self.a is None or self.schedule in ("constant", "loss_based") else {"a": self.a}
        )
        kw.update({k: v for k, v in (("up", self.up), ("down", self.down)) if v is not None})
        return [schedule(self.schedule, lr=lr, **kw) for lr in lrs]


#: Bounds that keep a typo from becoming a run that can never end or a table that cannot fit.
MAX_STEPS = 10**10
MAX_PER_DECADE = 1000


class StopConfig(_Strict):
    steps: int = Field(default=1000, gt=0, le=MAX_STEPS)
    log_loss: float | None = None
    wall_time: float | None = Field(default=None, gt=0)


class LoggingConfig(_Strict):
    per_decade: int = Field(default=20, gt=0, le=MAX_PER_DECADE)
    checkpoint_every: int | None = Field(default=None, gt=0)
    progress: bool | None = None  # None: a bar only when stderr is a terminal
    # Norms measured besides l1, l2, linf, spectral and each run's own: e.g. ["l1.5", "l3"].
    extra_norms: list[str] = Field(default_factory=list)

    @field_validator("extra_norms")
    @classmethod
    def _known_norms(cls, v: list[str]) -> list[str]:
        from .norms import get_norm
        from .plugins import retry_after_plugins

        for name in v:
            try:
                get_norm(name)  # raises ValueError listing the valid names
            except ValueError as exc:
                if not retry_after_plugins(exc):
                    raise
                get_norm(name)  # named by a plug-in that had not been loaded yet
        return v


class WarmStartConfig(_Strict):
    """Reach a common separated state with one algorithm, then start every run from it."""

    algorithm: str = "ngd"
    lr: float = Field(default=0.05, gt=0)
    schedule: Literal["constant", "power"] = "constant"
    a: float | None = None
    until_log_loss: float = -2.0
    max_steps: int = Field(default=5000, gt=0, le=MAX_STEPS)


class ExperimentConfig(_Strict):
    name: str = Field(min_length=1)
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: Literal["exponential", "logistic", "cross_entropy"] = "exponential"
    dtype: Literal["float64", "float32"] = "float64"
    #: auto | cpu | cuda | cuda:N (``steepest.devices``); not part of the config hash, so a
    #: batch interrupted on one machine can be resumed on another.
    device: str = "auto"
    batch_size: int | None = Field(default=None, gt=0)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    algorithms: list[AlgorithmConfig] = Field(min_length=1)
    stop: StopConfig = Field(default_factory=StopConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    warm_start: WarmStartConfig | None = None

    @field_validator("device")
    @classmethod
    def _device_spelling(cls, v: str) -> str:
        from .devices import check_device_name

        return check_device_name(v)

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        for sched in ("loss_based", "flow"):  # both compare the loss before and after a step
            if self.batch_size is not None and any(a.schedule == sched for a in self.algorithms):
                raise ValueError(f"schedule {sched!r} needs full-batch steps (batch_size: null)")
        return self

    def canonical(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())

    def config_hash(self) -> str:
        """Hash of everything that defines the runs' mathematics (the device does not)."""
        canon = {k: v for k, v in self.canonical().items() if k != "device"}
        # Fields added later with a None default leave the hash of configs that do not use
        # them unchanged, so batches started before they existed still resume.
        later = ("tol", "bundle")
        canon["algorithms"] = [
            {k: v for k, v in a.items() if not (k in later and v is None)}
            for a in canon["algorithms"]
        ]
        blob = json.dumps(canon, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def run_specs(self) -> list[RunSpec]:
        """Expand to one RunSpec per (algorithm entry, lr, seed): the K runs."""
        specs = []
        for i, entry in enumerate(self.algorithms):
            for sched in entry.schedules():
                for seed in self.seeds:
                    label = entry.label or entry.algorithm
                    specs.append(
                        RunSpec(
                            index=len(specs),
                            entry=i,
                            label=label,
                            algorithm=entry.algorithm,
                            options=dict(entry.options),
                            schedule=sched.to_dict(),
                            seed=seed,
                        )
                    )
        return specs


class RunSpec(BaseModel):
    index: int
    entry: int
    label: str
    algorithm: str
    options: dict[str, Any]
    schedule: dict[str, Any]
    seed: int


def _format_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(config)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "literal_error":
            msg = f"{msg} (got {err.get('input')!r})"
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{loc}: {msg}")
    return "invalid experiment config: " + "; ".join(lines)


def read_config_mapping(source: str | Path | dict[str, Any] | ExperimentConfig) -> dict[str, Any]:
    """The config as a plain mapping, not validated (an ExperimentConfig: its canonical form)."""
    if isinstance(source, ExperimentConfig):
        return source.canonical()
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config must be a YAML mapping, got {type(data).__name__}")
    elif isinstance(source, dict):
        data = source
    else:
        raise ConfigError(
            f"a config must be a path, a dict or an ExperimentConfig, got {type(source).__name__}"
        )
    return data


def load_config(source: str | Path | dict[str, Any] | ExperimentConfig) -> ExperimentConfig:
    """Validate a config from a YAML path, a dict, or pass an ExperimentConfig through."""
    if isinstance(source, ExperimentConfig):
        return source
    data = read_config_mapping(source)
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None
