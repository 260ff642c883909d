"""Figures by group, torch-free: group metrics with intervals (groups), the statistics core (stats), slices,
dataset shift, the gender threshold and band (genderband), paired checkpoint comparison (compare), headline
metrics and how tables write each figure (tables)."""
