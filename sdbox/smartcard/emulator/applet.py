"""The emulated card's PIV + BIO SSO applet: command APDU in, response APDU out.

It follows docs/card-profile.md: access rules, status words, chaining and
extended length. Volatile security status (verified PIN/finger, management
key) lives here and is cleared on power-off or reset; persistent state is in
:class:`~sdbox.smartcard.emulator.state.CardState`, saved after every change.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from sdbox.smartcard import tlv
from sdbox.smartcard.apdu import (
    CLA_CHAINING,
    EXTENDED_MAX_LE,
    SHORT_MAX_LE,
    Apdu,
    Ins,
    Sw,
    decode_command,
)
from sdbox.smartcard.emulator.state import CardState, Counter, deterministic_key
from sdbox.smartcard.errors import CardProtocolError, TlvError
from sdbox.smartcard.piv import (
    P1_RESET_VERIFICATION,
    TAG_EC_POINT,
    TAG_GENERATE_ALGORITHM,
    TAG_GENERATE_TEMPLATE,
    TAG_PUBLIC_KEY,
)
from sdbox.smartcard.profile import (
    FINGER_REFERENCE_OBJECT,
    FINGERS,
    MANAGEMENT_CHALLENGE_LENGTH,
    PIN_LENGTH,
    PIV_AID,
    PIV_PIX,
    RETIRED_SLOTS,
    TAG_ALLOCATION_AUTHORITY,
    TAG_APP_LABEL,
    TAG_APT,
    TAG_AUTH_CHALLENGE,
    TAG_AUTH_EXPONENTIATION,
    TAG_AUTH_RESPONSE,
    TAG_AUTH_WITNESS,
    TAG_DATA_OBJECT,
    TAG_DYNAMIC_AUTH,
    TAG_OBJECT_ID,
    Algorithm,
    KeyRef,
    ObjectTag,
    Slot,
    parse_bit_group,
)

_log = logging.getLogger(__name__)

Matcher = Callable[[bytes, bytes], bool]
MINUTIA_BYTES = 3
_DEFAULT_MIN_MINUTIAE = 1
_DEFAULT_MAX_MINUTIAE = 60
_UNWRAPPED = frozenset({ObjectTag.DISCOVERY, ObjectTag.BIT_GROUP})
_HOLDER_SLOTS = frozenset(
    {Slot.AUTHENTICATION, Slot.SIGNATURE, Slot.KEY_MANAGEMENT, *RETIRED_SLOTS}
)
_EC_ALGORITHMS: dict[int, ec.EllipticCurve] = {
    Algorithm.ECCP256: ec.SECP256R1(),
    Algorithm.ECCP384: ec.SECP384R1(),
}


class _Refusal(Exception):
    """Internal: end the command with a status word."""

    def __init__(self, sw: int) -> None:
        super().__init__(f"{sw:04X}")
        self.sw = sw


@dataclass
class _Chain:
    ins: int
    p1: int
    p2: int
    data: bytearray


def default_matcher(probe: bytes, reference: bytes) -> bool:
    """The biometric matcher of :mod:`sdbox.biometric.matcher`."""
    from sdbox.biometric import matcher  # noqa: PLC0415  (the smartcard layer stays importable alone)

    return matcher.score(probe, reference) >= matcher.THRESHOLD


def response(data: bytes, sw: int) -> bytes:
    """A response APDU."""
    return data + sw.to_bytes(2, "big")


class PivApplet:
    """Processes command APDUs against a :class:`CardState`."""

    def __init__(self, state: CardState, matcher: Matcher | None = None) -> None:
        self.state = state
        self.matcher = matcher or default_matcher
        self.power_cycle()

    # -- volatile state -------------------------------------------------------

    def power_cycle(self) -> None:
        """Power-off, power-on or reset: the security status starts afresh."""
        self.selected = False
        self.verified: set[int] = set()
        self.management_ok = False
        self._witness: bytes | None = None
        self._challenge: bytes | None = None  # external authentication (one-way) of 9B
        self._chain: _Chain | None = None
        self._pending = b""

    @property
    def holder_verified(self) -> bool:
        """PIN or an on-card comparison has been verified in this session."""
        return bool(self.verified)

    # -- dispatch ---------------------------------------------------------------

    def process(self, raw: bytes) -> bytes:
        """One command APDU in, one response APDU (data + SW) out."""
        try:
            apdu, extended = decode_command(raw)
        except CardProtocolError:
            return response(b"", Sw.WRONG_LENGTH)
        if extended and not self.state.extended_length:
            # A chip without extended length does not parse the 3-byte length at all.
            self._pending = b""
            return response(b"", Sw.WRONG_LENGTH)
        if apdu.ins != Ins.GET_RESPONSE:
            self._pending = b""
        elif self.t0 and self._pending and (apdu.le or 0) > len(self._pending):
            # T=0: Le must name what is there; 6CXX tells the exact count (ISO/IEC 7816-3 10.3.4).
            return response(b"", Sw.WRONG_LE_00 | len(self._pending))
        try:
            if apdu.cla & ~CLA_CHAINING & 0xFF != 0:
                raise _Refusal(Sw.CLA_NOT_SUPPORTED)
            if apdu.cla & CLA_CHAINING:
                return self._collect_chain(apdu)
            if self._chain is not None:
                chain, self._chain = self._chain, None
                if (chain.ins, chain.p1, chain.p2) != (apdu.ins, apdu.p1, apdu.p2):
                    raise _Refusal(Sw.LAST_COMMAND_OF_CHAIN_EXPECTED)
                apdu = Apdu(
                    apdu.cla, apdu.ins, apdu.p1, apdu.p2, bytes(chain.data) + apdu.data, apdu.le
                )
            data = self._dispatch(apdu)
        except _Refusal as refusal:
            return response(b"", refusal.sw)
        except (TlvError, CardProtocolError):
            return response(b"", Sw.INCORRECT_DATA)
        if self.t0:
            return self._answer_t0(apdu, data)
        return self._answer(data, apdu.le, extended)

    @property
    def t0(self) -> bool:
        """The chip speaks T=0 (its variant; docs/card-variants.md)."""
        return self.state.transmission == "T=0"

    def _answer_t0(self, apdu: Apdu, data: bytes) -> bytes:
        """T=0 answers: case 4 data only through GET RESPONSE (61XX); a wrong Le gets 6CXX."""
        if not data:
            return response(b"", Sw.OK)
        if apdu.data and apdu.ins != Ins.GET_RESPONSE:
            # T=0 carries no Le with command data: the answer waits for GET RESPONSE.
            self._pending = data
            return response(b"", Sw.BYTES_REMAINING_00 | (min(len(data), SHORT_MAX_LE) % 256))
        le = apdu.le or SHORT_MAX_LE
        if le > len(data) and len(data) < SHORT_MAX_LE:
            if apdu.ins == Ins.GET_RESPONSE:
                self._pending = data
            return response(b"", Sw.WRONG_LE_00 | len(data))
        return self._answer(data, le, False)

    def _answer(self, data: bytes, le: int | None, extended: bool) -> bytes:
        limit = (le or EXTENDED_MAX_LE) if extended else min(le or SHORT_MAX_LE, SHORT_MAX_LE)
        if len(data) <= limit:
            return response(data, Sw.OK)
        self._pending = data[limit:]
        remaining = min(len(self._pending), SHORT_MAX_LE) % 256
        return response(data[:limit], Sw.BYTES_REMAINING_00 | remaining)

    def _collect_chain(self, apdu: Apdu) -> bytes:
        if self._chain is None or (self._chain.ins, self._chain.p1, self._chain.p2) != (
            apdu.ins,
            apdu.p1,
            apdu.p2,
        ):
            self._chain = _Chain(apdu.ins, apdu.p1, apdu.p2, bytearray())
        self._chain.data += apdu.data
        if len(self._chain.data) > EXTENDED_MAX_LE:
            self._chain = None
            raise _Refusal(Sw.WRONG_LENGTH)
        return response(b"", Sw.OK)

    def _dispatch(self, apdu: Apdu) -> bytes:
        if apdu.ins == Ins.SELECT:
            return self._select(apdu)
        if apdu.ins == Ins.GET_RESPONSE:
            return self._get_response(apdu)
        if not self.selected:
            raise _Refusal(Sw.CONDITIONS_NOT_SATISFIED)
        handlers: dict[int, Callable[[Apdu], bytes]] = {
            Ins.GET_DATA: self._get_data,
            Ins.PUT_DATA: self._put_data,
            Ins.VERIFY: self._verify,
            Ins.CHANGE_REFERENCE: self._change_reference,
            Ins.RESET_RETRY: self._reset_retry,
            Ins.GENERAL_AUTHENTICATE: self._general_authenticate,
            Ins.GENERATE_ASYMMETRIC: self._generate,
        }
        handler = handlers.get(apdu.ins)
        if handler is None:
            raise _Refusal(Sw.INS_NOT_SUPPORTED)
        return handler(apdu)

    # -- SELECT / GET RESPONSE ------------------------------------------------

    def _select(self, apdu: Apdu) -> bytes:
        if apdu.p1 != 0x04:
            raise _Refusal(Sw.FILE_NOT_FOUND)
        # Partial selection by a prefix of the AID, as PIV allows (A0 00 00 03 08).
        if len(apdu.data) < 5 or not PIV_AID.startswith(apdu.data):
            raise _Refusal(Sw.FILE_NOT_FOUND)
        self.selected = True
        return tlv.tlv(
            TAG_APT,
            tlv.tlv(0x4F, PIV_PIX)
            + tlv.tlv(TAG_ALLOCATION_AUTHORITY, tlv.tlv(0x4F, PIV_AID[:5]))
            + tlv.tlv(TAG_APP_LABEL, self.state.label.encode()),
        )

    def _get_response(self, apdu: Apdu) -> bytes:
        if not self._pending:
            raise _Refusal(Sw.CONDITIONS_NOT_SATISFIED)
        data, self._pending = self._pending, b""
        return data  # _answer splits it again by Le

    # -- data objects -----------------------------------------------------------

    @staticmethod
    def _object_tag(data: bytes) -> int:
        fields = tlv.parse_dict(data)
        name = fields.get(TAG_OBJECT_ID)
        if name is None or not 1 <= len(name) <= 3:
            raise _Refusal(Sw.INCORRECT_DATA)
        return int.from_bytes(name, "big")

    def _get_data(self, apdu: Apdu) -> bytes:
        if (apdu.p1, apdu.p2) != (0x3F, 0xFF):
            raise _Refusal(Sw.INCORRECT_P1P2)
        tag = self._object_tag(apdu.data)
        if tag in FINGER_REFERENCE_OBJECT.values():
            raise _Refusal(Sw.SECURITY_STATUS_NOT_SATISFIED)  # references never leave the card
        value = self.state.objects.get(tag)
        if value is None:
            raise _Refusal(Sw.FILE_NOT_FOUND)
        return value if tag in _UNWRAPPED else tlv.tlv(TAG_DATA_OBJECT, value)

    def _put_data(self, apdu: Apdu) -> bytes:
        if (apdu.p1, apdu.p2) != (0x3F, 0xFF):
            raise _Refusal(Sw.INCORRECT_P1P2)
        if not self.management_ok:
            raise _Refusal(Sw.SECURITY_STATUS_NOT_SATISFIED)
        items = tlv.parse_list(apdu.data)
        if len(items) != 2 or items[0].tag != TAG_OBJECT_ID or items[1].tag != TAG_DATA_OBJECT:
            raise _Refusal(Sw.INCORRECT_DATA)
        tag = self._object_tag(items[0].encode())
        value = items[1].value
        for finger, obj in FINGER_REFERENCE_OBJECT.items():
            if tag == obj:
                self._enrol(finger, value)
                return b""
        if value:
            self.state.objects[tag] = value
        else:
            self.state.objects.pop(tag, None)
        self.state.save()
        return b""

    def _enrol(self, finger: int, template: bytes) -> None:
        """New reference data for a finger: resets (and unblocks) its counter."""
        self._check_template(finger, template)
        counter = self.state.fingers.get(finger)
        max_tries = counter.max_tries if counter else 5
        self.state.fingers[finger] = Counter(template, max_tries, max_tries)
        self.verified.discard(finger)
        self.state.save()

    # -- verification -------------------------------------------------------------

    def _verify(self, apdu: Apdu) -> bytes:
        ref = apdu.p2
        if apdu.p1 == P1_RESET_VERIFICATION:
            if apdu.data:
                raise _Refusal(Sw.WRONG_LENGTH)
            self.verified.discard(ref)
            return b""
        if apdu.p1 != 0x00:
            raise _Refusal(Sw.INCORRECT_P1P2)
        if ref == KeyRef.PIN:
            return self._verify_pin(apdu.data)
        if ref in FINGERS:
            return self._verify_finger(ref, apdu.data)
        raise _Refusal(Sw.REFERENCE_NOT_FOUND)

    def _counter_status(self, ref: int, counter: Counter) -> bytes:
        if ref in self.verified:
            return b""
        if counter.tries == 0:
            raise _Refusal(Sw.AUTH_METHOD_BLOCKED)
        raise _Refusal(Sw.VERIFY_FAIL_00 | counter.tries)

    def _spend(self, ref: int, counter: Counter, ok: bool) -> bytes:
        if ok:
            counter.tries = counter.max_tries
            self.verified.add(ref)
            self.state.save()
            return b""
        counter.tries -= 1
        self.verified.discard(ref)
        self.state.save()
        raise _Refusal(Sw.VERIFY_FAIL_00 | counter.tries)

    def _verify_pin(self, data: bytes) -> bytes:
        counter = self.state.pin
        if not data:
            return self._counter_status(KeyRef.PIN, counter)
        if len(data) != PIN_LENGTH:
            raise _Refusal(Sw.INCORRECT_DATA)
        if counter.tries == 0:
            raise _Refusal(Sw.AUTH_METHOD_BLOCKED)
        return self._spend(KeyRef.PIN, counter, hmac.compare_digest(data, counter.reference or b""))

    def _bit_limits(self, finger: int) -> tuple[int, int]:
        raw = self.state.objects.get(ObjectTag.BIT_GROUP)
        if raw:
            for bit in parse_bit_group(raw):
                if bit.reference == finger:
                    return bit.min_minutiae, bit.max_minutiae
        return _DEFAULT_MIN_MINUTIAE, _DEFAULT_MAX_MINUTIAE

    def _check_template(self, finger: int, template: bytes) -> None:
        low, high = self._bit_limits(finger)
        count, rest = divmod(len(template), MINUTIA_BYTES)
        if rest or not low <= count <= high:
            raise _Refusal(Sw.INCORRECT_DATA)  # malformed: the counter is not touched

    def _verify_finger(self, finger: int, probe: bytes) -> bytes:
        counter = self.state.fingers.get(finger)
        if counter is None or counter.reference is None:
            raise _Refusal(Sw.REFERENCE_NOT_FOUND)
        if not probe:
            return self._counter_status(finger, counter)
        self._check_template(finger, probe)
        if counter.tries == 0:
            raise _Refusal(Sw.AUTH_METHOD_BLOCKED)
        return self._spend(finger, counter, self.matcher(probe, counter.reference))

    def _change_reference(self, apdu: Apdu) -> bytes:
        if apdu.p1 != 0x00 or apdu.p2 not in (KeyRef.PIN, KeyRef.PUK):
            raise _Refusal(Sw.INCORRECT_P1P2)  # fingers are re-enrolled, not changed here
        counter = self.state.pin if apdu.p2 == KeyRef.PIN else self.state.puk
        if len(apdu.data) != 2 * PIN_LENGTH:
            raise _Refusal(Sw.INCORRECT_DATA)
        if counter.tries == 0:
            raise _Refusal(Sw.AUTH_METHOD_BLOCKED)
        old, new = apdu.data[:PIN_LENGTH], apdu.data[PIN_LENGTH:]
        self._spend(apdu.p2, counter, hmac.compare_digest(old, counter.reference or b""))
        counter.reference = new
        self.state.save()
        return b""

    def _reset_retry(self, apdu: Apdu) -> bytes:
        if apdu.p1 != 0x00 or apdu.p2 != KeyRef.PIN:
            # RESET RETRY COUNTER unblocks the PIN only: a blocked finger is re-enrolled.
            raise _Refusal(Sw.INCORRECT_P1P2)
        if len(apdu.data) != 2 * PIN_LENGTH:
            raise _Refusal(Sw.INCORRECT_DATA)
        puk = self.state.puk
        if puk.tries == 0:
            raise _Refusal(Sw.AUTH_METHOD_BLOCKED)
        self._spend(
            KeyRef.PUK, puk, hmac.compare_digest(apdu.data[:PIN_LENGTH], puk.reference or b"")
        )
        self.verified.discard(KeyRef.PUK)
        self.state.pin.reference = apdu.data[PIN_LENGTH:]
        self.state.pin.tries = self.state.pin.max_tries
        self.state.save()
        return b""

    # -- GENERAL AUTHENTICATE -------------------------------------------------------

    def _general_authenticate(self, apdu: Apdu) -> bytes:
        outer = tlv.parse_one(apdu.data, TAG_DYNAMIC_AUTH)
        fields = tlv.parse_dict(outer.value)
        if apdu.p2 == Slot.CARD_MANAGEMENT:
            return self._management(apdu.p1, fields)
        key = self.state.keys.get(apdu.p2)
        if key is None:
            raise _Refusal(Sw.REFERENCE_NOT_FOUND)
        if apdu.p2 in _HOLDER_SLOTS and not self.holder_verified:
            raise _Refusal(Sw.SECURITY_STATUS_NOT_SATISFIED)
        if TAG_AUTH_RESPONSE not in fields or fields[TAG_AUTH_RESPONSE]:
            raise _Refusal(Sw.INCORRECT_DATA)
        if TAG_AUTH_EXPONENTIATION in fields:
            result = self._ecdh(apdu.p1, key, fields[TAG_AUTH_EXPONENTIATION])
        elif TAG_AUTH_CHALLENGE in fields:
            result = self._sign(apdu.p1, key, fields[TAG_AUTH_CHALLENGE])
        else:
            raise _Refusal(Sw.INCORRECT_DATA)
        return tlv.tlv(TAG_DYNAMIC_AUTH, tlv.tlv(TAG_AUTH_RESPONSE, result))

    @staticmethod
    def _check_algorithm(p1: int, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
        if isinstance(key, rsa.RSAPrivateKey):
            ok = p1 == Algorithm.RSA2048 and key.key_size == 2048
        else:
            curve = _EC_ALGORITHMS.get(p1)
            ok = curve is not None and curve.name == key.curve.name
        if not ok:
            raise _Refusal(Sw.INCORRECT_P1P2)

    def _sign(
        self, p1: int, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, payload: bytes
    ) -> bytes:
        self._check_algorithm(p1, key)
        if isinstance(key, rsa.RSAPrivateKey):
            numbers = key.private_numbers()
            size = key.key_size // 8
            if len(payload) != size:
                raise _Refusal(Sw.INCORRECT_DATA)
            value = int.from_bytes(payload, "big")
            if value >= numbers.public_numbers.n:
                raise _Refusal(Sw.INCORRECT_DATA)
            return pow(value, numbers.d, numbers.public_numbers.n).to_bytes(size, "big")
        size = (key.curve.key_size + 7) // 8
        if len(payload) > size or not payload:
            raise _Refusal(Sw.INCORRECT_DATA)
        digest = payload.rjust(size, b"\x00")
        algorithm: hashes.HashAlgorithm = hashes.SHA256() if size == 32 else hashes.SHA384()
        return key.sign(digest, ec.ECDSA(utils.Prehashed(algorithm)))

    def _ecdh(
        self, p1: int, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, point: bytes
    ) -> bytes:
        self._check_algorithm(p1, key)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise _Refusal(Sw.INCORRECT_P1P2)
        try:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(key.curve, point)
        except ValueError as exc:
            raise _Refusal(Sw.INCORRECT_DATA) from exc
        return key.exchange(ec.ECDH(), peer)

    def _management(self, p1: int, fields: dict[int, bytes]) -> bytes:
        asks_challenge = TAG_AUTH_CHALLENGE in fields and not fields[TAG_AUTH_CHALLENGE]
        if p1 == 0x00 and asks_challenge and len(fields) == 1:
            # OpenSC's GET CHALLENGE names the legacy default algorithm (00): it only
            # wants random bytes. That challenge can never authenticate anybody.
            self._challenge = None
            random = secrets.token_bytes(MANAGEMENT_CHALLENGE_LENGTH)
            return tlv.tlv(TAG_DYNAMIC_AUTH, tlv.tlv(TAG_AUTH_CHALLENGE, random))
        if p1 != self.state.management_algorithm:
            raise _Refusal(Sw.INCORRECT_P1P2)
        cipher = Cipher(algorithms.AES(self.state.management_key), modes.ECB())  # noqa: S305
        if TAG_AUTH_WITNESS in fields and not fields[TAG_AUTH_WITNESS]:
            self._witness = secrets.token_bytes(MANAGEMENT_CHALLENGE_LENGTH)
            enc = cipher.encryptor()
            return tlv.tlv(
                TAG_DYNAMIC_AUTH,
                tlv.tlv(TAG_AUTH_WITNESS, enc.update(self._witness) + enc.finalize()),
            )
        if asks_challenge:
            # SP 800-73-4 external authentication: the card's challenge, in the clear.
            # OpenSC's GET CHALLENGE (C_GenerateRandom) asks for one too.
            self._challenge = secrets.token_bytes(MANAGEMENT_CHALLENGE_LENGTH)
            return tlv.tlv(TAG_DYNAMIC_AUTH, tlv.tlv(TAG_AUTH_CHALLENGE, self._challenge))
        if TAG_AUTH_RESPONSE in fields and TAG_AUTH_WITNESS not in fields:
            issued, self._challenge = self._challenge, None  # one answer per challenge
            if issued is None:
                raise _Refusal(Sw.CONDITIONS_NOT_SATISFIED)
            enc = cipher.encryptor()
            expected_response = enc.update(issued) + enc.finalize()
            self.management_ok = hmac.compare_digest(fields[TAG_AUTH_RESPONSE], expected_response)
            if not self.management_ok:
                raise _Refusal(Sw.SECURITY_STATUS_NOT_SATISFIED)
            return b""
        witness, challenge = fields.get(TAG_AUTH_WITNESS), fields.get(TAG_AUTH_CHALLENGE)
        expected, self._witness = self._witness, None
        if witness is None or challenge is None or expected is None:
            raise _Refusal(Sw.CONDITIONS_NOT_SATISFIED)
        if len(challenge) != MANAGEMENT_CHALLENGE_LENGTH or not hmac.compare_digest(
            witness, expected
        ):
            self.management_ok = False
            raise _Refusal(Sw.SECURITY_STATUS_NOT_SATISFIED)
        self.management_ok = True
        enc = cipher.encryptor()
        return tlv.tlv(
            TAG_DYNAMIC_AUTH, tlv.tlv(TAG_AUTH_RESPONSE, enc.update(challenge) + enc.finalize())
        )

    # -- GENERATE ASYMMETRIC KEY PAIR ---------------------------------------------------

    def _generate(self, apdu: Apdu) -> bytes:
        if apdu.p1 != 0x00:
            raise _Refusal(Sw.INCORRECT_P1P2)
        if not self.management_ok:
            raise _Refusal(Sw.SECURITY_STATUS_NOT_SATISFIED)
        slot = apdu.p2
        if slot not in _HOLDER_SLOTS:
            raise _Refusal(Sw.INCORRECT_P1P2)
        template = tlv.parse_one(apdu.data, TAG_GENERATE_TEMPLATE)
        algorithm = tlv.parse_dict(template.value).get(TAG_GENERATE_ALGORITHM, b"")
        curve = _EC_ALGORITHMS.get(algorithm[0]) if len(algorithm) == 1 else None
        if curve is None:
            raise _Refusal(Sw.INCORRECT_DATA)
        state = self.state
        if state.keygen_seed is not None:
            key = deterministic_key(state.keygen_seed, state.keygen_counter, curve)
            state.keygen_counter += 1
        else:
            key = ec.generate_private_key(curve)
        state.keys[slot] = key
        state.save()
        point = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return tlv.tlv(TAG_PUBLIC_KEY, tlv.tlv(TAG_EC_POINT, point))
