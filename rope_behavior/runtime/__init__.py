"""Where work runs: the executor protocol and the local executor, the resumable shard
store, model fingerprints, and the Ray executor (:mod:`.ray_cluster`, imported only when
asked for: Ray is an optional extra)."""
