"""Smart card access: APDUs, BER-TLV, PC/SC transport, the PIV + BIO SSO session.

This package is a pure library: only :mod:`sdbox.smartcard.pcsc` imports
pyscard and only :mod:`sdbox.smartcard.pkcs11` imports python-pkcs11.
"""
