"""Fuzz targets (atheris): only typed errors (SdboxError) may come out of a parser."""
