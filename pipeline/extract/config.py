"""The settings of one extraction run (what ``itmflow extract`` and workflow files fill in)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from detectors.butd.settings import BUTDSettings
from itmflow.errors import ConfigError
from itmflow.regions import FEATURE_DTYPES, STORAGES, RegionPolicy

#: The region policies ``itmflow extract`` offers (``--regions``): fixed 36, or adaptive 10-100.
REGION_CHOICES = ("36", "10-100")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class ExtractConfig:
    """Everything that decides what an extraction run does.

    ``detector`` holds every setting that changes the detector's output (``--regions``,
    ``--min-size``, ``--max-size``, ``--proposals``, ``--precision``); the actors build their
    model from it and the decode tasks run its preprocessing.

    ``batch_size`` images go to a detector actor at once; a store part holds ``part_batches``
    batches (parts always end on a batch boundary, which is what makes a resumed run produce the
    same bytes as an uninterrupted one: every batch is cut from the collection order the same way).
    """

    collection: Path
    out: Path
    storage: str = "parquet"
    weights: str | None = None
    random_init: bool = False
    seed: int = 0
    vocab: str | None = None
    detector: BUTDSettings = field(default_factory=BUTDSettings)
    splits: list[str] = field(default_factory=list)
    workers: int | None = None
    batch_size: int = 2
    device: str = "auto"
    feature_dtype: str = "float16"
    images_root: Path | None = None
    address: str | None = None
    part_size: int = 512
    retry_failed: bool = False
    num_cpus: int | None = None
    in_flight: int = 2
    connect_timeout: float = 15.0

    def validate(self) -> "ExtractConfig":
        """Refuse impossible combinations with messages that name the option."""
        if self.weights is None and not self.random_init:
            raise ConfigError("give detector weights with --weights PATH, or --random-init for a "
                              "seeded random detector (its features are meaningless)")
        if self.weights is not None and self.random_init:
            raise ConfigError("--weights and --random-init exclude each other; pick one")
        if self.storage not in STORAGES:
            raise ConfigError(f"--storage {self.storage!r}: expected one of {list(STORAGES)}")
        if self.detector.regions not in REGION_CHOICES:
            raise ConfigError(f"--regions {self.detector.regions!r}: expected one of {list(REGION_CHOICES)}")
        self.detector.validate()
        if self.feature_dtype not in FEATURE_DTYPES:
            raise ConfigError(f"--feature-dtype {self.feature_dtype!r}: expected one of {list(FEATURE_DTYPES)}")
        if self.device not in DEVICES:
            raise ConfigError(f"--device {self.device!r}: expected one of {list(DEVICES)}")
        for name in ("batch_size", "part_size", "in_flight"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if not self.connect_timeout > 0:
            raise ConfigError(f"--connect-timeout must be positive, got {self.connect_timeout}")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is an existing file, not a store directory; give a new "
                              "directory or an existing region store")
        return self

    @property
    def part_batches(self) -> int:
        """Batches per committed part (at least one)."""
        return max(1, self.part_size // self.batch_size)

    def region_policy(self) -> RegionPolicy:
        """The store's region policy (the detector's)."""
        return self.detector.policy()
