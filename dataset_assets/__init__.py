"""dataset_assets: verified, versioned, PyTorch-ready WebDataset shards as Dagster assets."""
