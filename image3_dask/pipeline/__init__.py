"""Pipeline layer: step parameters, step order, products."""
