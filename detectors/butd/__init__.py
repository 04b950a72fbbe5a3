"""The bottom-up-attention Faster R-CNN (ResNet-101, Visual Genome) on torchvision ops."""

from detectors.butd.model import BUTDDetector, BUTDModel, BUTDSettings, build_detector
from detectors.butd.weights import load_butd_weights

__all__ = ["BUTDDetector", "BUTDModel", "BUTDSettings", "build_detector", "load_butd_weights"]
