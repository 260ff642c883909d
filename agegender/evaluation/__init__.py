"""Predictions on whole sets: evaluate, the evaluation-set registry (evalset: a set's faces detected and cached)
and the results cache with the cross-dataset view (results), consistency, and calibrating age intervals
(intervals)."""
