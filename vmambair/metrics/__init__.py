"""Metrics. basicsr's METRIC_REGISTRY already provides calculate_psnr / calculate_ssim (with
``test_y_channel`` and ``crop_border``), which the deraining recipe uses unchanged; this package
is where vmambair-specific metrics register themselves."""
import vmambair.compat  # noqa: F401  (before basicsr)
import basicsr.metrics  # noqa: F401  (fills METRIC_REGISTRY)
from . import lpips_metric  # noqa: F401,E402  (calculate_lpips, calculate_niqe_score)
