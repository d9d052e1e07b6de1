"""Where the preprocessing (class names included) of the artifact that will run comes from: a place a hash covers.

manifest.json is a text file anyone can edit, and a reordered `class_names` would silently swap every label. So
`trusted_preprocessing` takes the metadata embedded in the artifact itself (ONNX metadata_props, the TorchScript
archive's extra file, the AOTInductor package's metadata, the OpenVINO IR's rt_info in its .xml), whose bytes
the manifest's sha256 covers; a format that carries none (a TensorRT plan) takes the manifest's own field only
when it matches the `preprocessing_sha256` recorded in the artifact's entry. Torch-free: archives are read as
zip files, ONNX in protobuf's wire format, the IR as XML.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

from fuse_export.contract import Preprocessing
from fuse_export.errors import IntegrityError, UserError
from fuse_export.exporters.manifest import MANIFEST, preprocessing_sha256
from fuse_export.exporters.manifest_read import NO_VERIFY

_PT2_METADATA_KEY = "fuse_export"  # fuse_export.exporters.to_pt2.METADATA_KEY (that module imports torch)


def embedded_metadata(path: str | os.PathLike, fmt: str) -> dict[str, Any] | None:
    """The fuse-export metadata inside an artifact file, read cheaply; None when its format carries none here, or
    the file cannot be read (the runner's own load then reports what is wrong with it)."""
    path = Path(path)
    try:
        if fmt == "onnx":
            from fuse_export.exporters.metadata import read_onnx_metadata

            return read_onnx_metadata(path)
        if fmt == "openvino":
            from fuse_export.exporters.to_openvino import read_openvino_metadata

            return read_openvino_metadata(path) or None
        if fmt in ("torchscript", "pt2") and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                if fmt == "torchscript":  # torch.jit.save's _extra_files land in ARCHIVE/extra/
                    extra = [n for n in z.namelist() if n.endswith("/extra/fuse_export.json")]
                    return json.loads(z.read(extra[0])) if extra else None
                for name in z.namelist():  # AOTInductor writes aot_inductor.metadata to *_metadata.json
                    if name.endswith("_metadata.json"):
                        raw = json.loads(z.read(name)).get(_PT2_METADATA_KEY)
                        if isinstance(raw, str):
                            return json.loads(raw)
    except (OSError, ValueError, KeyError, AttributeError, zipfile.BadZipFile, UserError):
        return None
    return None


def trusted_preprocessing(folder: str | os.PathLike, artifact: dict[str, Any], manifest: dict[str, Any],
                          verify: bool = True) -> Preprocessing:
    """The preprocessing to run `artifact` (an entry of `manifest`, already checked against its sha256 when
    `verify`) with: the one embedded in its file, else the manifest's if its recorded digest matches.

    An embedded preprocessing that does not parse is an IntegrityError (the file is not what export wrote). With
    `verify` off, or for entries written before digests were recorded, the manifest's field is taken as it is.
    """
    folder = Path(folder)
    path = folder / artifact["file"]
    meta = embedded_metadata(path, artifact.get("format", ""))
    if meta is not None and "preprocessing" in meta:
        try:
            return Preprocessing.from_dict(meta["preprocessing"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise IntegrityError(f"{path}: its embedded preprocessing is malformed ({exc}); re-export it") from None
    pre = Preprocessing.from_dict(manifest["preprocessing"])  # read_manifest checked that it parses
    recorded = artifact.get("preprocessing_sha256")
    if verify and recorded is not None and recorded != preprocessing_sha256(pre):
        raise IntegrityError(f"{folder / MANIFEST}: field 'preprocessing' (class names, size, normalization) is not "
                             f"the one {artifact['file']} was exported with (it differs from the entry's "
                             f"preprocessing_sha256): edited after export; re-export, or pass {NO_VERIFY} to use the "
                             "manifest's fields anyway")
    return pre
