"""Where Ray runs things: Ray Train jobs (``ray_train``) and the sharding job (``sharding``)."""
