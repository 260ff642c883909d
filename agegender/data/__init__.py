"""Datasets on disk: UTKFace folders and archives, their splits and decoded-image cache (utkface), any labelled
set as records (datasets: FairFace CSV, CSV, Parquet), packing a set to carry (pack), the face template (template)."""
