"""The ground layer: errors, typed configs, storage I/O, pixel constants, the forwarded job environment."""
