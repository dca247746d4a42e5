"""Time and memory prediction for generating and training (issue 7).

    from imagesynth.estimator import estimate, quick_estimate
    report = estimate("sd15", size=512, steps=30, device="rtx4090", cfg=True)
    print(report.table())

Importing this package is cheap: torch and diffusers load only when a count is not cached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr

_LAZY = {
    "estimate": "imagesynth.estimator.predict",
    "quick_estimate": "imagesynth.estimator.predict",
    "measure": "imagesynth.estimator.predict",
    "Report": "imagesynth.estimator.predict",
    "COMPLEXITY": "imagesynth.estimator.predict",
    "calibrate": "imagesynth.estimator.devices",
    "get_device": "imagesynth.estimator.devices",
    "device_names": "imagesynth.estimator.devices",
    "Device": "imagesynth.estimator.devices",
    "get_arch": "imagesynth.estimator.arch",
}

__all__ = list(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from .arch import get_arch
    from .devices import Device, calibrate, device_names, get_device
    from .predict import COMPLEXITY, Report, estimate, measure, quick_estimate


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
