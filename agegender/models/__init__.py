"""The models: architectures (model, dlibnet and dlib's weights converted by dlib_convert), the one preprocessing
(preprocess, with the degradations of degrade and turn), the one checkpoint loader (checkpoint) and the list of
shipped and trained ones (catalog), inference, and where it runs (runtime, distributed)."""
