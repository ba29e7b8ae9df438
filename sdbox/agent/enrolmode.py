"""The agent's remote enrolment mode (docs/remote-enrolment.md), mixed into the machine.

From the picker, the greeter asks to enrol (``StartEnrolment``). The agent
enters state ``enrolling`` and moves through :class:`sdbox.agent.bioenrol.RemoteEnrolment`
with the card on its card thread and the centre's requests in a worker
thread: the authorisation (refused: back to the picker with the reason),
the code for the operator (``Detail.ENROLMENT_CODE``), the PIN (the greeter's
``SubmitPin``, the normal counter), the captures for each finger, the write,
the confirmation on the card, then the picker again with
``Detail.ENROLMENT_DONE``. Removing the card cancels it like any flow: the
card keeps each finger's old or new reference (the write is one PUT DATA
per finger).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from sdbox.agent.api import Detail, Problem, State
from sdbox.agent.bioenrol import Pending, RemoteEnrolment
from sdbox.agent.problems import Refusal, Step, problem_for, refusal_for
from sdbox.audit import AuditEvent, audit
from sdbox.errors import SdboxError
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.errors import CardAccessError, PinBlocked, WrongPin

if TYPE_CHECKING:
    from sdbox.agent.connect import Insertion
    from sdbox.agent.events import Snapshot
    from sdbox.agent.ports import SensorPort

EnrolmentFactory = Callable[[BioSsoSession], RemoteEnrolment]
"""Builds the flow for the inserted card's session (the box's centre client, trust, policy)."""


class EnrolmentMode:
    """Remote enrolment, for :class:`sdbox.agent.machine.Agent`, which it is mixed into."""

    if TYPE_CHECKING:  # what the mode uses of the agent (set in Agent.__init__)
        sensor: SensorPort
        snapshot: Snapshot
        enrolment: EnrolmentFactory | None
        enrolment_poll_s: float
        _card: Insertion | None
        _pin: asyncio.Future[str] | None

        def _set(
            self,
            state: State,
            *,
            project: str = "",
            message: str = "",
            problem: Problem | None = None,
            tries_left: int | None = None,
            detail: Detail = Detail.NONE,
            args: Mapping[str, str] | None = None,
        ) -> None: ...
        def _refuse(self, state: State, refusal: Refusal, *, project: str = "") -> None: ...
        def _start_flow(self, coro: Coroutine[Any, Any, None]) -> None: ...

    async def start_enrolment(self) -> None:
        """Enrol the inserted card's fingers under the centre's authorisation (from the picker)."""
        card = self._card
        if self.enrolment is None:
            raise Refusal(
                Problem.ENROLMENT_REFUSED, "this box does not enrol fingers (no centre configured)",
                Detail.ENROLMENT_REFUSED, {"reason": "enrolment"},
            )  # fmt: skip
        if card is None or card.directory is None:
            raise Refusal(Problem.BUSY, "insert your card first")
        if self.snapshot.state != State.PICKER:
            raise Refusal(Problem.BUSY, f"the box is busy ({self.snapshot.state.value})")
        self._start_flow(self._enrol(card, self.enrolment))

    async def _enrol(self, card: Insertion, factory: EnrolmentFactory) -> None:
        try:
            self._set(State.ENROLLING, message="asking the centre for your enrolment",
                      detail=Detail.ENROLMENT_AUTHORISING)  # fmt: skip
            flow = await card.handle.run(factory)
            pending = await card.handle.run(lambda _session: flow.authorise())
            auth = pending.authorisation
            self._set(
                State.ENROLLING,
                message=f"read the code on the screen to {pending.operator}",  # not in the log
                detail=Detail.ENROLMENT_CODE,
                args={"code": pending.code, "operator": pending.operator},
            )
            while not await asyncio.to_thread(flow.operator_confirmed, pending):
                await asyncio.sleep(self.enrolment_poll_s)
            await self._enrolment_pin(card, flow, pending)
            references: dict[str, bytes] = {}
            for finger in auth.fingers:
                self._set(State.ENROLLING, message=f"place your {finger} finger, several times",
                          detail=Detail.ENROLMENT_CAPTURE, args={"finger": finger})  # fmt: skip
                references |= await flow.capture(pending, self.sensor, fingers=(finger,))
            self._set(State.ENROLLING, message="writing your new fingerprint on the card",
                      detail=Detail.ENROLMENT_WRITING)  # fmt: skip
            session_id = await card.handle.run(lambda _session: flow.write(pending, references))
            fingers = ", ".join(auth.fingers)
            self._set(State.ENROLLING, message=f"place your {fingers} finger once more",
                      detail=Detail.ENROLMENT_CONFIRM, args={"finger": fingers})  # fmt: skip

            async def verify(ref: int, probe: bytes) -> None:
                await card.handle.run(lambda session: session.piv.verify_finger(ref, probe))

            async def in_thread(call: Callable[[], None]) -> None:
                await asyncio.to_thread(call)

            await flow.confirm(pending, self.sensor, session_id, verify, in_thread)
            self._set(
                State.PICKER,
                message=f"your {fingers} finger is enrolled (authorised by {pending.operator})",
                detail=Detail.ENROLMENT_DONE,
                args={"fingers": fingers, "operator": pending.operator},
            )
        except Refusal as refusal:
            if self._card is card:
                self._refuse(State.PICKER, refusal)
        except CardAccessError:
            raise  # the card left or failed: the agent's flow guard reports it
        except SdboxError as exc:
            if self._card is card:
                self._refuse(State.PICKER, refusal_for(exc, Step.ENROLMENT))

    async def _enrolment_pin(self, card: Insertion, flow: RemoteEnrolment, pending: Pending) -> None:
        """The holder's PIN, typed in the greeter (the normal counter; blocked ends it)."""
        retry: Problem | None = None
        # the PIN's own counter on the screen (the picker's is the finger's)
        tries = await card.handle.run(lambda session: session.piv.pin_tries_left())
        while True:
            self._set(
                State.ENROLLING, message="the operator confirmed: enter your PIN", problem=retry,
                detail=Detail.ENROLMENT_PIN, args={"operator": pending.operator}, tries_left=tries,
            )  # fmt: skip
            self._pin = asyncio.get_running_loop().create_future()
            try:
                typed = await self._pin
            finally:
                self._pin = None
            guid = pending.authorisation.card_guid.hex()
            try:
                await card.handle.run(_verify_pin(flow, typed))
            except WrongPin as exc:
                audit(AuditEvent.HOLDER_FAILED, "holder verification failed (enrolment)",
                      method="pin", tries_left=exc.tries_left, card=guid)  # fmt: skip
                tries, retry = exc.tries_left, problem_for(exc, Step.HOLDER)
                continue
            except PinBlocked as exc:
                raise refusal_for(exc, Step.HOLDER) from exc
            audit(AuditEvent.HOLDER_VERIFIED, "holder verified (enrolment)", method="pin", card=guid)
            return


def _verify_pin(flow: RemoteEnrolment, pin: str) -> Callable[[BioSsoSession], None]:
    def verify(_session: BioSsoSession) -> None:
        flow.verify_holder(pin)

    return verify
