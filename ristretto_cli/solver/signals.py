"""SIGINT/SIGHUP during training, as Caffe's SignalHandler: the handlers only set flags; the
solver polls them (after every update and before every test batch) and acts."""

from __future__ import annotations

import signal
import threading

from ristretto_cli.errors import RistrettoError

NONE = "none"
STOP = "stop"
SNAPSHOT = "snapshot"
EFFECTS = (STOP, SNAPSHOT, NONE)


def check_effect(effect: str, flag: str = "signal effect") -> str:
    if effect not in EFFECTS:
        raise RistrettoError(f'Invalid signal effect "{effect}" was specified for {flag} '
                             f"(choose {', '.join(EFFECTS)})")
    return effect


class SignalHandler:
    """Context manager: while active, SIGINT and SIGHUP set flags instead of interrupting.

    Calling the handler returns the pending action and consumes its flag: a pending SIGHUP
    is reported first, then SIGINT (Caffe's order). Outside the main thread (where Python
    cannot install handlers) it installs nothing and always reports ``none``.
    """

    def __init__(self, sigint_effect: str = STOP, sighup_effect: str = SNAPSHOT):
        self.sigint_effect = check_effect(sigint_effect, "--sigint_effect")
        self.sighup_effect = check_effect(sighup_effect, "--sighup_effect")
        self._got_int = False
        self._got_hup = False
        self._previous: dict[int, object] = {}

    def _on_int(self, signum, frame) -> None:
        self._got_int = True

    def _on_hup(self, signum, frame) -> None:
        self._got_hup = True

    def __enter__(self) -> SignalHandler:
        if threading.current_thread() is threading.main_thread():
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_int)
            if hasattr(signal, "SIGHUP"):
                self._previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hup)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __call__(self) -> str:
        if self._got_hup:
            self._got_hup = False
            return self.sighup_effect
        if self._got_int:
            self._got_int = False
            return self.sigint_effect
        return NONE
