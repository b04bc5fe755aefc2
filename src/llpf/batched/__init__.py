"""K independent paths of one architecture advanced as one computation.

``BatchedParams`` holds the K points as a ``[K, n]`` tensor; ``StackedStreams``
gives each path its own batch stream; ``BatchedTrainR`` runs Train_r for all
paths with one vmapped gradient per step; ``batched_m2m_iteration`` and
``batched_m2o_iteration`` are the loop bodies of Algorithms 1 and 2 over K paths.
"""
from .iterations import batched_m2m_iteration, batched_m2o_iteration
from .params import BatchedParams
from .streams import StackedStreams
from .train_r import BatchedTrainR

__all__ = ["BatchedParams", "BatchedTrainR", "StackedStreams", "batched_m2m_iteration", "batched_m2o_iteration"]
