"""Iterative Feature Merging (IFM): data-free measurement of layer-wise feature complexity."""
from .archs import ARCHITECTURES, channel_groups, get_architecture, model_for_state_dict
from .errors import IFMError
from .groups import ChannelGroup, LayerSpaces, Member, build_groups, chain_spaces, resnet_spaces
from .merge import (IterativeMerger, MergeResult, MergeStep, check_hyperparameters, distance_matrices,
                    iterative_feature_merging)
from .metrics import count_flops, count_params
from .permute import permute_channels
from .slim import slim_model

__all__ = [
    "ARCHITECTURES", "ChannelGroup", "IFMError", "IterativeMerger", "LayerSpaces", "Member", "MergeResult",
    "MergeStep", "build_groups", "chain_spaces", "channel_groups", "check_hyperparameters", "count_flops",
    "count_params", "distance_matrices", "get_architecture", "permute_channels", "iterative_feature_merging", "model_for_state_dict", "resnet_spaces",
    "slim_model",
]
