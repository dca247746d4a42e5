"""Samplers built on diffusers' schedulers, and classifier-free guidance as a model wrapper."""

from __future__ import annotations

from .samplers import (
    CFG_SCHEDULES,
    PREDICTION_TYPES,
    SAMPLERS,
    CFGModelFn,
    ModelFn,
    SamplerInfo,
    StepInfo,
    alpha_bar_at,
    cfg_model_fn,
    cfg_schedule,
    make_scheduler,
    predict_x0,
    resolve_sampler,
    sample,
    sampler_names,
)

__all__ = [
    "CFG_SCHEDULES",
    "PREDICTION_TYPES",
    "SAMPLERS",
    "CFGModelFn",
    "ModelFn",
    "SamplerInfo",
    "StepInfo",
    "alpha_bar_at",
    "cfg_model_fn",
    "cfg_schedule",
    "make_scheduler",
    "predict_x0",
    "resolve_sampler",
    "sample",
    "sampler_names",
]
