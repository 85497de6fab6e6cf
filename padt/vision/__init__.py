"""padt.vision: where an image meets the model. Loading rules, the one image geometry (original, resized and merged
grids), the VRT id space of a batch, and the vision context (prototypes, decoder memory) the model builds from it."""
