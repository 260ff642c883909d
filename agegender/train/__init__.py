"""Training: the loop (loop), its options (config), the run's state for resume (runstate), bias mitigation
(balance, chippose), a labelled set scored during training (external), and weight soups (soup)."""
