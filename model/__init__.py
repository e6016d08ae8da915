"""The network shared by training and serving."""

from model.net import HierarchicalSignalNet, ModelConfig, sample_to_step

__all__ = ["HierarchicalSignalNet", "ModelConfig", "sample_to_step"]
