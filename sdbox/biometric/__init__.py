"""Biometrics: ISO/IEC 19794-2 codecs, the on-card matcher, sensors."""
