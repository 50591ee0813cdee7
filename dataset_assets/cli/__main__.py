"""`python -m dataset_assets.cli` runs the `dataset-assets` console script."""
import sys

from dataset_assets.cli import main

sys.exit(main())
