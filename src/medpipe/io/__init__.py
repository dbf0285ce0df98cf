"""Reading raw medical image files (NIfTI, PNG/JPG, TIFF, DICOM series, MHA/NRRD) into arrays."""

from medpipe.io.readers import ImageMeta, ReadError, base_name, is_lazy, read_image

__all__ = ["ImageMeta", "ReadError", "base_name", "is_lazy", "read_image"]
