"""Weight sync from the learner to the rollout engines: layer-aligned buckets, manifests the engines
check, and the transports (object store, or a broadcast group of the learner and the vLLM workers)."""
