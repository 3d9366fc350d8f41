"""Data layer: manifests, readers and importers, audio decoding, text/vocabulary, sampling, collators, and the
offline demo corpus. Submodules are imported on use so that light tools (synthesis workers, `lasp data info`)
do not pay for torch/transformers."""
