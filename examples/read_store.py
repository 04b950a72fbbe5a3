"""Read a region store into numpy arrays and a caption store into a pandas DataFrame.

    python examples/read_store.py stores/regions --captions stores/captions
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from stores import open_region_store
from stores.captions import read_caption_store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("regions", type=Path)
    parser.add_argument("--captions", type=Path)
    args = parser.parse_args(argv)

    store = open_region_store(args.regions)
    ids = store.ids()
    print(f"{len(ids)} images, feature_dim {store.manifest['feature_dim']}, "
          f"region policy {store.manifest['region_policy']}")
    row = store.get(ids[0])                     # one image: numpy arrays in the store's layout
    print(f"{ids[0]}: {row['width']}x{row['height']}, features {row['features'].shape} "
          f"{row['features'].dtype}, boxes {row['boxes'].shape}")
    # every image's mean region feature as one [N, D] matrix
    means = np.stack([np.asarray(r["features"], np.float32)[:int(r["num_regions"])].mean(0)
                      for r in store])
    print(f"mean region features: {means.shape}")
    if args.captions is not None:
        table, manifest = read_caption_store(args.captions)
        frame = table.to_pandas()
        print(f"{len(frame)} captions; per split: {frame['split'].value_counts().to_dict()}")
        print(frame[["caption_id", "image_id", "raw"]].head(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
