"""Reviewing labels: suspected label errors (audit), a reviewer's verdicts on them (verdicts), and the explorer's
list of faces to look at (explorer)."""
