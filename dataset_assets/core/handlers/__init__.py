"""Raw-artifact handlers: per-dataset knowledge of downloadable artifacts and how to read them.

`base` is the interface, `registry` the named handlers, `fetch` gets artifacts once (sha256
verified, through `core.transfer`), `records` converts them offline into WebDataset shards.
"""
