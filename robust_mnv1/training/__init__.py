"""Training and the trained-model cache: the loop (:mod:`.fit`), its compiled step, optimiser and
objectives, safetensors checkpoints, and the cache that trains each model once (:mod:`.model_cache`)."""
