"""Detect the regions of every image in a folder and write them as a region store (no Ray).

    python examples/detect_folder.py photos/ --store stores/regions --weights butd.pth
    python examples/detect_folder.py photos/ --store /tmp/regions --random-init   # a smoke run

Image ids are the paths relative to the folder, as ``itmflow ingest --format folder`` names them,
so a caption store tokenized from the same folder joins this store. For large collections use
``itmflow extract`` (Ray, resumable, many GPUs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detectors.butd import BUTDSettings
from pipeline.collections.folder import scan_images
from pipeline.detect import DetectConfig, detect
from stores import RegionStoreWriter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--store", type=Path, required=True, help="region store directory to write")
    parser.add_argument("--weights", help="BUTD checkpoint (.pth / .pkl / HF directory)")
    parser.add_argument("--random-init", action="store_true", help="random detector weights")
    parser.add_argument("--regions", default="36", help="36 (fixed) or 10-100 (adaptive)")
    parser.add_argument("--min-size", type=int, default=600)
    parser.add_argument("--max-size", type=int, default=1000)
    parser.add_argument("--proposals", type=int, default=300)
    args = parser.parse_args(argv)

    files = scan_images(args.folder)
    settings = BUTDSettings(regions=args.regions, min_size=args.min_size, max_size=args.max_size,
                            pre_nms_topk=max(6000, args.proposals), post_nms_topk=args.proposals)
    result = detect(DetectConfig(images=[args.folder / f for f in files], weights=args.weights,
                                 random_init=args.random_init, detector=settings))
    detector = result.detector
    settings = detector.settings()
    meta = {"name": detector.name, "settings": settings,
            "weights_file": Path(detector.weights_file).name if detector.weights_file else None,
            "weights_sha256": detector.weights_sha256}
    with RegionStoreWriter(args.store, feature_dim=int(settings.get("feature_dim", 2048)),
                           region_policy=settings["region_policy"], detector=meta) as writer:
        for file, image in zip(files, result.images):
            if image.regions is None:
                print(f"{file}: skipped ({image.error})")
                continue
            writer.add({"image_id": file, "file": file, **image.regions})
            names = {detector.label(int(o)) for o in image.regions["object_ids"][:5]}
            print(f"{file}: {image.regions['num_regions']} regions, e.g. {', '.join(sorted(names))}")
    print(f"region store: {args.store} ({result.source})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
