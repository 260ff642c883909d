"""What a review hands on: the bias report as JSON and HTML (bias; python -m agegender.report), the model card
(modelcard), and the charts the pages and the report share (charts)."""
