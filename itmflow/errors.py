"""One exception hierarchy for everything a user can cause.

Every message names the input (file, row, key, field) and says what to do next. The CLI catches
:class:`ItmflowError`, prints the message without a traceback and exits with status 1.
"""

from __future__ import annotations


class ItmflowError(Exception):
    """Base class of all errors a user can cause (bad input, wrong layout, missing file)."""


class ConfigError(ItmflowError):
    """A configuration file or option is invalid (unknown key, wrong type, impossible value)."""


class InputFileError(ItmflowError):
    """An input file is missing, unreadable or malformed."""


class UnsafePathError(ItmflowError):
    """A path inside a collection or store escapes its root (``../``, absolute path)."""


class CollectionError(ItmflowError):
    """A collection (Karpathy / COCO / Flickr30k / folder) is malformed or inconsistent."""


class TokenizerError(ItmflowError):
    """A tokenizer or word vocabulary cannot be loaded or applied."""


class ClusterError(ItmflowError):
    """Ray cannot be started here (an embedded local Ray), or does not run as asked."""


class StoreError(ItmflowError):
    """A region or caption store cannot be opened, written or used as asked."""


class StoreCorruptError(StoreError):
    """A committed part of a store does not match its manifest (hash, rows, schema)."""


class StoreLockedError(StoreError):
    """Another process is writing the store (it holds ``<store>/writer.lock``)."""


class DiskFullError(StoreError):
    """A write failed because the disk, the quota or the file-size limit is exhausted (ENOSPC, EDQUOT,
    EFBIG); what was committed before stays committed."""


class SchemaVersionError(StoreError):
    """A store was written with a schema version this release cannot read."""


class ImageDecodeError(ItmflowError):
    """An image file cannot be decoded (truncated, not an image, decompression bomb)."""


class CheckpointLayoutError(ItmflowError):
    """A checkpoint has an unknown layout, or missing / unexpected keys, or wrong shapes."""


class UnsafeCheckpointError(CheckpointLayoutError):
    """A pickled checkpoint asks to load an object outside the small allow-list."""


class ModelInputError(ItmflowError):
    """A batch or store does not fit a model (e.g. SGRAF needs exactly 36 regions per image)."""
