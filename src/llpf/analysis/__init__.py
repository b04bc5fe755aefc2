"""Analysis of the low-loss space (paper §5 and Appendix A): one job per module.

- ``pca``            per-layer 2-D PCA of many paths, streamed (Figures 4, 7)
- ``dimension``      the dimensionality of the low-loss space: SVD of one-iteration moves
- ``units``          units that never activate, and the parameters they freeze
- ``variance``       layer-variance consistency across endpoints (Figure 6, Eq. 4)
- ``barriers``       loss on straight lines and on the segments of a path
- ``layerwise``      layer-wise linear connectivity: groups interpolated alone, cumulatively, in pairs
- ``coupling``       its numbers: layer-wise barriers, the coupling between groups, the carriers of the barrier
- ``layerwise_output`` its CSV, JSON and figures
- ``generalisation`` test metrics against the variance ratio along M2O (Figure 5)
- ``report``         an offline HTML page with every figure and table that applies
- ``runs``           finding run directories and loading what they hold
"""
