"""Evaluation suite: FID, KID, IS, precision / recall, class accuracy, SSIM, MS-SSIM, PSNR,
LPIPS, and synthetic training data (CAS). Every score is stored with its protocol.

Importing this package is cheap: the modules (and torch) load on first attribute use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr

_LAZY = {
    "METRICS": "imagesynth.metrics.protocol",
    "parse_metrics": "imagesynth.metrics.protocol",
    "format_scores": "imagesynth.metrics.protocol",
    "comparable": "imagesynth.metrics.protocol",
    "fid": "imagesynth.metrics.stats",
    "kid": "imagesynth.metrics.stats",
    "inception_score": "imagesynth.metrics.stats",
    "precision_recall": "imagesynth.metrics.stats",
    "Extractor": "imagesynth.metrics.extractors",
    "load_extractor": "imagesynth.metrics.extractors",
    "train_domain_extractor": "imagesynth.metrics.extractors",
    "evaluate_samples": "imagesynth.metrics.evaluate",
    "evaluate_model": "imagesynth.metrics.evaluate",
    "evaluate_folder": "imagesynth.metrics.evaluate",
    "evaluate_pairs": "imagesynth.metrics.paired",
    "ssim": "imagesynth.metrics.paired",
    "ms_ssim": "imagesynth.metrics.paired",
    "psnr": "imagesynth.metrics.paired",
    "TrainingEvaluator": "imagesynth.metrics.training",
    "plot_metrics": "imagesynth.metrics.training",
    "synth_dataset": "imagesynth.metrics.synth",
    "cas_study": "imagesynth.metrics.synth",
}

__all__ = list(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from .evaluate import evaluate_folder, evaluate_model, evaluate_samples
    from .extractors import Extractor, load_extractor, train_domain_extractor
    from .paired import evaluate_pairs, ms_ssim, psnr, ssim
    from .protocol import METRICS, comparable, format_scores, parse_metrics
    from .stats import fid, inception_score, kid, precision_recall
    from .synth import cas_study, synth_dataset
    from .training import TrainingEvaluator, plot_metrics

__getattr__ = lazy_getattr(__name__, _LAZY, globals())
